"""Serving a cross-domain model through the one code path (train_bundle -> checkpoint ->
Recommender): a user with only source-domain events gets a mapped target-domain state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.recommender import Recommender
from engine.settings import Settings
from engine.support import UserSupport
from engine.trainer import save_bundle, train_bundle
from evaluation.synthetic import PLANTED_PER_GROUP as PER_GROUP
from evaluation.synthetic import PLANTED_SOURCE as SOURCE
from evaluation.synthetic import PLANTED_TARGET as TARGET
from evaluation.synthetic import planted_cross_domain as planted_log
from evaluation.synthetic import planted_item as item
from schemas import Interaction


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Recommender, ModelBundle]:
    torch.set_num_threads(1)
    settings = Settings(feature_dim=64, attribute_dim=32)
    catalog = Catalog(HashingFeaturizer(64, 32))
    result = train_bundle(settings, planted_log(), catalog, learner="emcdr", steps=150,
                          pretrain_epochs=0)
    assert result.report["learner"] == "emcdr" and result.report["cross_users"] > 100
    # through a real checkpoint, as a worker would load it
    loaded = ModelBundle.load(save_bundle(result.bundle, tmp_path_factory.mktemp("data")))
    assert loaded.learner.name == "emcdr"
    assert loaded.learner.config.extra["domains"] == [SOURCE, TARGET]
    return Recommender(settings, loaded, catalog), loaded


def test_source_only_user_gets_mapped_target_recommendations(served) -> None:
    rec, bundle = served
    group = 2
    supports: dict[str, bytes] = {}
    books = [item(SOURCE, group, j) for j in range(5)]
    for k, it in enumerate(books):
        rec.apply(Interaction(f"new-{k}", "newcomer", it, "rate", 5.0, 1e6 + k, SOURCE), supports)
    # A target-domain request that adds no event (snapshot of the unchanged support set, as for a
    # redelivered event): the user still has zero target events.
    request = Interaction("req", "newcomer", item(TARGET, 0, 0), "view", 1.0, 2e6, TARGET)
    support = UserSupport.from_bytes(supports["newcomer"])
    assert {e.item_id for e in support.events} == set(books)
    snap = rec.snapshot(request, support, duplicate=True)
    (out,) = rec.rank([snap])
    ids = out.item_ids()
    assert all(i.startswith(TARGET) for i in ids)  # only target items are ranked
    matching = sum(i.startswith(f"{TARGET}-{group}-") for i in ids)
    assert matching >= 8, ids
    # popularity would recommend group 0's movies first: the mapped state differs from it
    movie_rows = [r for r, i in enumerate(bundle.vocab) if i.startswith(TARGET)]
    pop_top = {bundle.vocab[movie_rows[r]]
               for r in np.argsort(-bundle.popularity[movie_rows], kind="stable")[:PER_GROUP]}
    assert sum(i.startswith(f"{TARGET}-0-") for i in pop_top) >= 8
    assert len(set(ids) & pop_top) <= 2


def test_target_only_user_history_is_served_in_target_space(served) -> None:
    rec, _ = served
    supports: dict[str, bytes] = {}
    movies = [item(TARGET, 3, j) for j in range(3)]
    outs = rec.process([Interaction(f"m{k}", "viewer", it, "rate", 5.0, 3e6 + k, TARGET)
                        for k, it in enumerate(movies)], supports)
    ids = outs[-1].item_ids()
    assert not set(ids) & set(movies)
    assert sum(i.startswith(f"{TARGET}-3-") for i in ids) >= 5


def test_bank_domain_codes_follow_the_learner_not_the_catalog_order() -> None:
    from models.base import LearnerConfig, create

    catalog = Catalog(HashingFeaturizer(64, 32))
    for item_id, domain in [("m1", TARGET), ("b1", SOURCE), ("x1", "music"), ("m2", TARGET)]:
        catalog.ensure(item_id, domain)
    config = LearnerConfig(feature_dim=64, attribute_dim=32, extra={"domains": [SOURCE, TARGET]})
    bank = ModelBundle(create("emcdr", config), [], "v").bank(catalog)
    assert bank.domains.tolist() == [1, 0, -1, 1]
    plain = ModelBundle(create("proto", LearnerConfig(feature_dim=64, attribute_dim=32)), [], "v")
    assert plain.bank(catalog).domains.tolist() == [0, 1, 2, 0]  # the catalog's own codes
