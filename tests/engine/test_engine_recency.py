"""The recency prior end to end: the trainer's stream and train-end counts, the bundle's round
trip through a saved version, and the Recommender's optional online counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.bundle import ModelBundle, latest_version
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.recommender import Recommender
from engine.settings import Settings
from engine.trainer import (
    RECENCY_HALF_LIFE_EVENTS,
    TrainResult,
    _training_stream,
    histories_from_events,
    save_bundle,
    train_bundle,
)
from evaluation.synthetic import SyntheticLog, generate
from models.recency import decayed_counts, recency_feature
from schemas import Interaction

SETTINGS = Settings(feature_dim=64, attribute_dim=32)


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    return generate(n_users=120, n_items=150, n_clusters=4, events_per_user=(5, 15), seed=3)


@pytest.fixture(scope="module")
def result(log: SyntheticLog) -> tuple[TrainResult, Catalog]:
    catalog = Catalog(HashingFeaturizer(64, 32))
    catalog.upsert(log.items)
    torch.manual_seed(0)
    # the learned recency weight as it is (its calibration is tested on its own below)
    return train_bundle(SETTINGS, log.events, catalog, learner="fomaml", steps=20,
                        pretrain_epochs=0, heldout_fraction=0.2,
                        recipe={"calibrate_recency": 0}), catalog


@pytest.fixture(scope="module")
def trained(result: tuple[TrainResult, Catalog]) -> tuple[ModelBundle, Catalog]:
    return result[0].bundle, result[1]


def test_training_stream_is_time_ordered_and_leaves_out_held_out_users(log: SyntheticLog) -> None:
    catalog = Catalog(HashingFeaturizer(64, 32))
    histories = histories_from_events(log.events, catalog, SETTINGS)
    users = sorted(histories)
    train = users[: len(users) // 2]
    renumbered, rows = _training_stream(histories, train)
    assert rows.size == sum(len(histories[u]) for u in train)
    for u in train:
        pos = renumbered[u].positions
        assert torch.equal(torch.from_numpy(rows[pos.numpy()]), histories[u].items)
        assert bool((pos[1:] > pos[:-1]).all())
    ordered = sorted((e for e in log.events if e.user_id in set(train)),
                     key=lambda e: (e.ts, e.event_id))
    assert rows.tolist() == [catalog.row(e.item_id) for e in ordered]


def test_bundle_carries_train_end_counts_through_a_saved_version(
    trained: tuple[ModelBundle, Catalog], tmp_path
) -> None:
    bundle, catalog = trained
    assert bundle.recency_half_life == RECENCY_HALF_LIFE_EVENTS
    assert bundle.recency is not None and bundle.recency.shape == (len(bundle.vocab),)
    assert float(bundle.recency.sum()) > 0
    bank = bundle.bank(catalog)
    torch.testing.assert_close(bank.recency, recency_feature(bundle.recency_counts(catalog)))
    save_bundle(bundle, tmp_path)
    loaded = ModelBundle.load(latest_version(tmp_path))
    np.testing.assert_allclose(loaded.recency, bundle.recency, rtol=1e-6)
    torch.testing.assert_close(loaded.bank(catalog).recency, bank.recency)
    # the untrained bootstrap model has no recency input at all
    assert ModelBundle.untrained("fomaml", bundle.learner.config.__class__()).bank(
        catalog).recency is None


def test_train_end_counts_are_the_training_users_stream(
    result: tuple[TrainResult, Catalog], log: SyntheticLog
) -> None:
    trained, catalog = result
    held = set(trained.heldout_users)
    assert held
    ordered = sorted(log.events, key=lambda e: (e.ts, e.event_id))

    def counts_of(events: list[Interaction]) -> np.ndarray:
        rows = np.array([catalog.row(e.item_id) for e in events])
        return decayed_counts(rows, len(catalog), RECENCY_HALF_LIFE_EVENTS)

    counts = trained.bundle.recency_counts(catalog)
    # held-out users' events are not in the counts the model trained and serves with
    np.testing.assert_allclose(counts, counts_of([e for e in ordered if e.user_id not in held]),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(counts, counts_of(ordered), rtol=1e-5, atol=1e-6)


def hot_item_rank(rec: Recommender, item: str) -> int:
    probe = Interaction("probe-0", "probe-user", rec.catalog.ids[0], "click", 1.0, 1e9)
    out = rec.process([probe], {})[0]
    ids = out.item_ids()
    return ids.index(item)


@pytest.mark.parametrize("online", [False, True])
def test_online_counts_lift_an_item_that_becomes_popular(
    trained: tuple[ModelBundle, Catalog], online: bool
) -> None:
    bundle, catalog = trained
    settings = SETTINGS.replace(recency_online=online, top_k=len(catalog))  # the full ranking
    rec = Recommender(settings, bundle, catalog)
    counts = bundle.recency_counts(catalog)
    cold = catalog.ids[int(np.argmin(np.where(counts > 0, counts, np.inf)))]
    before = hot_item_rank(rec, cold)
    supports: dict[str, bytes] = {}
    burst = [Interaction(f"b{k}", f"crowd{k}", cold, "click", 1.0, 2e9 + k)
             for k in range(3 * Recommender.RECENCY_REFRESH_EVENTS)]
    for e in burst:
        rec.apply(e, supports)
    after = hot_item_rank(rec, cold)
    if online:
        assert after < before
        rec.swap(bundle)  # a (re)loaded version restarts from its own train-end counts
        assert hot_item_rank(rec, cold) == before
    else:
        assert after == before


def test_recency_calibration_rescales_the_trained_weight(log: SyntheticLog) -> None:
    """The final model is trained exactly as without calibration; only its recency weight is
    multiplied by the scale a held-out probe chose on the latest users."""
    from models.training import RECENCY_SCALES

    def train(calibrate: float) -> TrainResult:
        catalog = Catalog(HashingFeaturizer(64, 32))
        catalog.upsert(log.items)
        return train_bundle(SETTINGS, log.events, catalog, learner="fomaml", steps=20,
                            pretrain_epochs=0, heldout_fraction=0.2,
                            recipe={"calibrate_recency": calibrate})

    def weight(r: TrainResult) -> float:
        return float(r.bundle.learner.tower.recency_weight.detach())

    plain, calibrated = train(0.0), train(0.2)
    assert "recency_calibration" not in plain.report
    cal = calibrated.report["recency_calibration"]
    assert cal["scale"] in RECENCY_SCALES
    assert cal["users"] >= 20  # at least the minimum of the latest users
    assert set(cal["ndcg"]) == set(RECENCY_SCALES)
    assert all(0.0 <= v <= 1.0 for v in cal["ndcg"].values())
    top = max(cal["ndcg"].values())
    assert cal["ndcg"][cal["scale"]] >= top - 0.005 * top
    # of the scales that near the best, the one that changes the learned weight least
    near = [s for s, v in cal["ndcg"].items() if v >= top - 0.005 * top]
    assert all(abs(cal["scale"] - 1) <= abs(s - 1) for s in near)
    assert weight(calibrated) == pytest.approx(weight(plain) * cal["scale"], rel=1e-5)
    assert calibrated.report["recency_scale"] == cal["scale"]
    # everything else is the same model
    for (name, a), (_, b) in zip(plain.bundle.learner.named_parameters(),
                                 calibrated.bundle.learner.named_parameters(), strict=True):
        if not name.endswith("recency_weight"):
            torch.testing.assert_close(a, b, msg=name)


def test_no_recency_calibration_when_the_probe_would_see_fewer_users_than_it_is_judged_on() -> None:
    small = generate(n_users=30, n_items=60, n_clusters=3, events_per_user=(5, 10), seed=4)
    catalog = Catalog(HashingFeaturizer(64, 32))
    catalog.upsert(small.items)
    result = train_bundle(SETTINGS, small.events, catalog, learner="fomaml", steps=5,
                          pretrain_epochs=0, heldout_fraction=0.0)
    assert "recency_calibration" not in result.report  # 20 latest users vs 10 to train a probe
