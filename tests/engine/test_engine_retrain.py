"""Retraining from a worker snapshot: round trip, promotion rule, outcomes log."""

from __future__ import annotations

from collections import defaultdict

import pytest

from engine.bundle import latest_version
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.retrain import read_outcomes, read_snapshot, retrain_from_snapshot, write_snapshot
from engine.settings import Settings
from engine.support import UserSupport
from engine.trainer import save_bundle, train_bundle
from evaluation.synthetic import generate
from schemas import encode
from schemas.wire import RatingScale


def _snapshot(tmp_path, settings, data, users):
    supports: dict[str, UserSupport] = defaultdict(UserSupport)
    for e in data.events:
        if e.user_id in users:
            supports[e.user_id].add(e, settings.support_capacity, settings.dedup_window)
    return write_snapshot(
        tmp_path / "snap",
        [(u, s.to_bytes()) for u, s in sorted(supports.items())],
        [encode(i) for i in data.items],
        [(u, data.profiles[u]) for u in users if u in data.profiles],
        {i.item_id: i.domain for i in data.items},
        max_users=10_000,
    )


@pytest.fixture(scope="module")
def data():
    return generate(n_users=160, n_items=200, events_per_user=(20, 30), seed=11)


def test_snapshot_round_trips_through_the_wire_schemas(tmp_path, data):
    settings = Settings(data_dir=str(tmp_path))
    users = sorted({e.user_id for e in data.events})[:30]
    root, n_users, n_events = _snapshot(tmp_path, settings, data, set(users))
    events, items, profiles = read_snapshot(root, RatingScale(0, 5))
    assert n_users == 30 and len(events) == n_events == 30 * settings.support_capacity
    assert {e.user_id for e in events} == set(users)
    assert len(items) == len(data.items)
    # Support sets keep the most recent events, in order, with kind/value intact and timestamps
    # as precise as the support codec keeps them (float32 offsets from the newest event).
    last = {}
    for e in data.events:
        if e.user_id == users[0]:
            last.setdefault(e.user_id, []).append(e)
    want = sorted(last[users[0]], key=lambda e: (e.ts, e.event_id))[-settings.support_capacity:]
    got = [e for e in events if e.user_id == users[0]]
    assert [(e.item_id, e.kind, e.value) for e in got] == [
        (e.item_id, e.kind, e.value) for e in want
    ]
    newest = want[-1].ts
    assert got[-1].ts == newest
    assert [e.ts for e in got] == [
        pytest.approx(e.ts, abs=(newest - e.ts) * 2**-23 + 1e-9) for e in want
    ]
    assert set(profiles) <= set(users)


def test_first_retrain_promotes_then_a_worse_candidate_is_rejected(tmp_path, data):
    settings = Settings(data_dir=str(tmp_path / "data"), retrain_steps=150, retrain_min_users=20)
    users = set(sorted({e.user_id for e in data.events})[:120])
    root, _, _ = _snapshot(tmp_path, settings, data, users)
    first = retrain_from_snapshot(settings, root, seed=1)
    assert first.promoted and first.version and first.version.startswith("v1-")
    assert latest_version(settings.data_dir).name == first.version
    # An untrained candidate (0 steps) is worse on the same held-out users: not promoted.
    worse = retrain_from_snapshot(settings.replace(retrain_steps=0), root, seed=2)
    assert not worse.promoted and worse.version is None
    assert worse.candidate_loss > worse.incumbent_loss
    assert latest_version(settings.data_dir).name == first.version
    outcomes = read_outcomes(settings.data_dir)
    assert [o["promoted"] for o in outcomes] == [True, False]
    assert outcomes[1]["incumbent"] == first.version


def test_too_few_users_is_a_recorded_no_op(tmp_path, data):
    settings = Settings(data_dir=str(tmp_path / "data"), retrain_min_users=500)
    root, n_users, _ = _snapshot(tmp_path, settings, data, {e.user_id for e in data.events})
    outcome = retrain_from_snapshot(settings, root)
    assert not outcome.promoted and "too few users" in outcome.reason
    assert outcome.users == n_users and latest_version(settings.data_dir) is None
    assert read_outcomes(settings.data_dir)[0]["promoted"] is False


def test_incumbent_from_offline_training_is_the_bar(tmp_path, data):
    """A strong offline model stays when the live snapshot's candidate is worse."""
    settings = Settings(data_dir=str(tmp_path / "data"), retrain_min_users=20)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    offline = save_bundle(train_bundle(settings, data.events, catalog, steps=200).bundle,
                          settings.data_dir)
    users = set(sorted({e.user_id for e in data.events})[:60])
    root, _, _ = _snapshot(tmp_path, settings, data, users)
    outcome = retrain_from_snapshot(settings.replace(retrain_steps=0), root)
    assert not outcome.promoted and outcome.incumbent == offline.name
