"""A recommendation depends on the items in the catalog, not on the order they arrived in: two
workers (or the worker and replay) whose catalogs were filled in different orders agree."""

from __future__ import annotations

import random

import pytest

from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.recommender import Recommender
from engine.settings import Settings
from engine.trainer import train_bundle
from evaluation.synthetic import generate


@pytest.fixture(scope="module")
def data():
    return generate(n_users=80, n_items=150, events_per_user=(8, 16), seed=9)


@pytest.mark.parametrize("learner", ["fomaml", "maml", "proto", "matching", "sequence", "hybrid"])
def test_catalog_row_order_does_not_change_recommendations(data, learner):
    settings = Settings()
    cut = len(data.events) * 2 // 3
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    bundle = train_bundle(settings, data.events[:cut], catalog, learner=learner, steps=30).bundle
    stream = data.events[cut:][:300]

    def serve(items):
        cat = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
        cat.upsert(items)
        rec = Recommender(settings, bundle, cat)
        supports: dict[str, bytes] = {}
        return [r.item_ids() for r in rec.process(stream, supports)]

    shuffled = list(data.items)
    random.Random(5).shuffle(shuffled)
    assert serve(list(data.items)) == serve(shuffled)
