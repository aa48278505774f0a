"""``Recommender.request``: rank a user's support set as it is, in a requested domain.

A user with only source-domain events and zero target events asks for a target-domain list and
gets the mapped state (planted structure), not popularity; nothing is written to the tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.recommender import Recommender
from engine.settings import Settings
from engine.support import UserSupport
from engine.trainer import train_bundle
from evaluation.synthetic import PLANTED_PER_GROUP as PER_GROUP
from evaluation.synthetic import PLANTED_SOURCE as SOURCE
from evaluation.synthetic import PLANTED_TARGET as TARGET
from evaluation.synthetic import planted_cross_domain as planted_log
from evaluation.synthetic import planted_item as item
from schemas import Interaction


@pytest.fixture(scope="module")
def rec() -> Recommender:
    torch.set_num_threads(1)
    settings = Settings(feature_dim=64, attribute_dim=32)
    catalog = Catalog(HashingFeaturizer(64, 32))
    bundle = train_bundle(settings, planted_log(), catalog, learner="emcdr", steps=150,
                          pretrain_epochs=0).bundle
    return Recommender(settings, bundle, catalog)


def reader(rec: Recommender, user: str, group: int) -> tuple[dict[str, bytes], list[str]]:
    """A newcomer who read five group-``group`` books and watched nothing."""
    supports: dict[str, bytes] = {}
    books = [item(SOURCE, group, j) for j in range(5)]
    rec.process([Interaction(f"{user}-{k}", user, it, "rate", 5.0, 1e6 + k, SOURCE)
                 for k, it in enumerate(books)], supports)
    return supports, books


def popularity_top(rec: Recommender) -> set[str]:
    bundle = rec.bundle
    movie_rows = [r for r, i in enumerate(bundle.vocab) if i.startswith(TARGET)]
    order = np.argsort(-bundle.popularity[movie_rows], kind="stable")[:PER_GROUP]
    return {bundle.vocab[movie_rows[r]] for r in order}


@pytest.mark.parametrize("group", [1, 2, 3])
def test_source_only_user_requesting_the_target_gets_the_mapped_state(rec, group) -> None:
    supports, books = reader(rec, f"reader{group}", group)
    before = dict(supports)
    snap = rec.request(f"reader{group}", TARGET, supports, request_id=f"req-{group}")
    (out,) = rec.rank([snap])
    assert supports == before  # a request adds no event and writes nothing
    assert out.source_event_id == f"req-{group}" and out.user_id == f"reader{group}"
    ids = out.item_ids()
    assert len(ids) == rec.settings.top_k
    assert all(i.startswith(TARGET) for i in ids), ids
    assert sum(i.startswith(f"{TARGET}-{group}-") for i in ids) >= 8, ids
    pop = popularity_top(rec)
    assert sum(i.startswith(f"{TARGET}-0-") for i in pop) >= 8  # popularity: group 0
    assert len(set(ids) & pop) <= 2, ids
    assert {i.why for i in out.items} == {"exploit"}  # personal, not the popular fallback


def test_request_is_the_snapshot_path(rec) -> None:
    """Same ranking as a hand-built snapshot of the unchanged support set."""
    supports, _ = reader(rec, "same", 2)
    by_request = rec.rank([rec.request("same", TARGET, supports, "r")])[0]
    probe = Interaction("r", "same", "", "view", 1.0, 0.0, TARGET)
    by_hand = rec.rank([rec.snapshot(probe, UserSupport.from_bytes(supports["same"]), True)])[0]
    assert by_request.items == by_hand.items


def test_request_in_the_source_domain_excludes_what_was_read(rec) -> None:
    supports, books = reader(rec, "again", 3)
    (out,) = rec.rank([rec.request("again", SOURCE, supports, "r")])
    ids = out.item_ids()
    assert all(i.startswith(SOURCE) for i in ids) and not set(ids) & set(books)
    assert sum(i.startswith(f"{SOURCE}-3-") for i in ids) >= 4, ids


def test_user_with_no_record_gets_the_prior(rec) -> None:
    supports: dict[str, bytes] = {}
    a, b = rec.rank([rec.request("nobody", TARGET, supports, "r1"),
                     rec.request("no-one-else", TARGET, supports, "r2")])
    assert supports == {}
    assert a.item_ids() == b.item_ids() and all(i.startswith(TARGET) for i in a.item_ids())
    assert {i.why for i in a.items} == {"popular"}
    informed = rec.rank([rec.request("reader2", TARGET, reader(rec, "reader2", 2)[0], "r3")])[0]
    assert informed.item_ids() != a.item_ids()


def test_unknown_domain_is_refused(rec) -> None:
    with pytest.raises(ValueError, match="unknown domain 'music'"):
        rec.request("u1", "music", {}, "r")


def test_crossdomain_evaluation_zero_shot_ranks_like_a_request(rec) -> None:
    """``evaluation/crossdomain.py`` drives the learner on padded episodes (k=0: only source
    support); its top-10 for a user is what the worker answers to that user's request."""
    from evaluation import crossdomain
    from models.transfer.learners import TARGET as TARGET_CODE

    users = {f"held{g}": g for g in (1, 2, 3)}
    held = {u: [Interaction(f"{u}-b{j}", u, item(SOURCE, g, j), "rate", 4.0 + j % 2, 5e6 + j,
                            SOURCE) for j in range(6)]
            + [Interaction(f"{u}-m{j}", u, item(TARGET, g, j), "rate", 5.0, 6e6 + j, TARGET)
               for j in range(3)]
            for u, g in users.items()}
    split = crossdomain.CrossDomainSplit(SOURCE, TARGET, [], held)
    episodes = crossdomain.test_episodes(split, rec.catalog, rec.settings, 0)
    learner, bank = rec.bundle.learner, rec.bundle.bank(rec.catalog)
    with torch.inference_mode():
        prepared = learner.prepare(bank)
        state = learner.init_state(torch.zeros(len(episodes.users), learner.config.attribute_dim))
        scores = learner.score(learner.adapt(state, episodes.support, prepared), prepared)
    scores = scores.masked_fill((bank.domains != TARGET_CODE)[None, :], -float("inf"))
    for i, user in enumerate(episodes.users):
        supports: dict[str, bytes] = {}
        rec.process([e for e in held[user] if e.domain == SOURCE], supports)
        (out,) = rec.rank([rec.request(user, TARGET, supports, "r")])
        top = torch.topk(scores[i], rec.settings.top_k).indices.tolist()
        assert out.item_ids() == [rec.catalog.ids[r] for r in top], user
