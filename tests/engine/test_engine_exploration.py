"""Explore slots on the serving path: tagging, propensities, decay, statistics, batching."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.exploration import (
    RewardError,
    UserStats,
    decode_item_stats,
    encode_item_stats,
    item_key,
    stats_partition,
)
from engine.features import HashingFeaturizer
from engine.recommender import Recommender
from engine.settings import Settings
from evaluation.synthetic import SyntheticLog, generate
from models.base import LearnerConfig
from schemas import Interaction

POLICIES = ["epsilon", "ucb", "thompson", "thompson-gaussian", "linucb", "lints"]


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    return generate(n_users=100, n_items=200, n_clusters=4, seed=3)


def make(log: SyntheticLog, **changes: object) -> Recommender:
    settings = Settings(feature_dim=64, attribute_dim=32, top_k=8, explore_slots=3,
                        explore_epsilon=1.0, partitions=2).replace(**changes)
    catalog = Catalog(HashingFeaturizer(64, 32))
    catalog.upsert(log.items)
    bundle = ModelBundle.untrained("fomaml", LearnerConfig(feature_dim=64, attribute_dim=32))
    return Recommender(settings, bundle, catalog)


def interleaved(log: SyntheticLog, users: int = 5, per_user: int = 4) -> list[Interaction]:
    """Users rating overlapping items, interleaved as a partition would deliver them."""
    items = sorted(i.item_id for i in log.items)[:12]
    out = []
    for k in range(per_user):
        for u in range(users):
            item = items[(u + 2 * k) % len(items)]
            out.append(Interaction(f"u{u}-{k}", f"u{u}", item, "rate", float(1 + (u + k) % 5),
                                   100.0 + k))
    return out


def _lists(recs: list) -> list[list[tuple[str, str, float]]]:
    return [[(i.item_id, i.why, round(i.propensity, 9)) for i in r.items] for r in recs]


@pytest.mark.parametrize("policy", POLICIES)
def test_independent_of_micro_batch_grouping(log: SyntheticLog, policy: str) -> None:
    events = interleaved(log)
    one, whole, chunked = (make(log, policy=policy) for _ in range(3))
    s1: dict[str, bytes] = {}
    singles = [rec for e in events for rec in one.process([e], s1)]
    batched = whole.process(events, {})
    s3: dict[str, bytes] = {}
    chunks = [r for i in range(0, len(events), 3) for r in chunked.process(events[i:i + 3], s3)]
    assert _lists(singles) == _lists(batched) == _lists(chunks)
    assert one.explorer.items == whole.explorer.items == chunked.explorer.items
    if policy != "ucb":  # UCB's optimistic pick equals the greedy one when nothing is known
        assert any(i.why == "explore" for r in singles for i in r.items)


@pytest.mark.parametrize("policy", POLICIES)
def test_explore_slots_are_tagged_with_propensity(log: SyntheticLog, policy: str) -> None:
    rec = make(log, policy=policy)
    recs = rec.process(interleaved(log), {})
    for r in recs:
        ids = r.item_ids()
        assert len(ids) == 8 and len(set(ids)) == 8
        head, tail = r.items[:5], r.items[5:]
        assert all(i.propensity == 1.0 and i.why != "explore" for i in head)
        assert all(0.0 < i.propensity <= 1.0 for i in tail)
        assert all(i.propensity < 1.0 for i in tail if i.why == "explore")
    explored = [i for r in recs for i in r.items if i.why == "explore"]
    assert explored or policy == "ucb", "explore_epsilon=1 must explore"


def test_policy_none_leaves_lists_untouched(log: SyntheticLog) -> None:
    plain = make(log, policy="none", explore_slots=3)
    assert plain.explorer is None
    recs = plain.process(interleaved(log), {})
    assert all(i.propensity == 1.0 and i.why != "explore" for r in recs for i in r.items)


def test_same_seed_same_lists_other_seed_differs(log: SyntheticLog) -> None:
    events = interleaved(log)
    a = _lists(make(log, policy="epsilon").process(events, {}))
    b = _lists(make(log, policy="epsilon").process(events, {}))
    c = _lists(make(log, policy="epsilon", seed=9).process(events, {}))
    assert a == b and a != c


def test_exploration_decays_with_support(log: SyntheticLog) -> None:
    rec = make(log, policy="epsilon", explore_epsilon=0.5, explore_decay=5.0)
    rates = [rec.explorer.exploration_rate(n) for n in (1, 5, 20, 100)]
    assert rates == sorted(rates, reverse=True) and rates[1] == pytest.approx(0.25)
    # Measured on lists: a user's first events explore far more often than its 40th-60th.
    items = sorted(i.item_id for i in log.items)
    events = [Interaction(f"a-{k}", "a", items[k], "click", 1.0, float(k)) for k in range(60)]
    recs = rec.process(events, {})
    early = sum(i.why == "explore" for r in recs[:20] for i in r.items)
    late = sum(i.why == "explore" for r in recs[40:] for i in r.items)
    assert early > 2 * late


def test_item_and_user_stats_update_per_partition(log: SyntheticLog) -> None:
    rec = make(log, policy="ucb", partitions=3)
    item = log.items[0].item_id
    events = [Interaction("e1", "alice", item, "click", 1.0, 1.0),
              Interaction("e2", "bob", item, "skip", 1.0, 2.0),
              Interaction("e1", "alice", item, "click", 1.0, 1.0)]  # duplicate: no effect
    supports: dict[str, bytes] = {}
    rec.process(events, supports)
    stores = rec.explorer.items
    pa, pb = stats_partition("alice", 3), stats_partition("bob", 3)
    if pa == pb:
        assert decode_item_stats(stores[item_key(pa, item)]) == (2, 1.0, 1.0)
    else:
        assert decode_item_stats(stores[item_key(pa, item)]) == (1, 1.0, 1.0)
        assert decode_item_stats(stores[item_key(pb, item)]) == (1, 0.0, 0.0)
    alice = UserStats.from_bytes(rec.explorer.users[b"alice"])
    assert (alice.n, alice.reward) == (1, 1.0)


def test_out_of_range_reward_is_rejected_before_any_state(log: SyntheticLog) -> None:
    rec = make(log, policy="thompson")
    bad = Interaction("x", "carol", log.items[0].item_id, "rate", 7.5, 1.0)
    with pytest.raises(RewardError):
        rec.explorer.observe(bad, fresh=True)
    assert rec.explorer.items == {} and rec.explorer.users == {}
    supports: dict[str, bytes] = {}
    with pytest.raises(RewardError):
        rec.apply(bad, supports)
    assert supports == {} and rec.explorer.items == {}


def test_explore_hits_are_counted(log: SyntheticLog) -> None:
    rec = make(log, policy="epsilon")
    rec.explorer.shown("dave", ["i-x", "i-y"])
    rec.explorer.observe(Interaction("d1", "dave", "i-y", "click", 1.0, 1.0), fresh=True)
    dave = UserStats.from_bytes(rec.explorer.users[b"dave"])
    assert (dave.explored, dave.hits, dave.recent) == (2, 1, ["i-x"])


def test_codecs_round_trip_and_reject_corruption() -> None:
    assert decode_item_stats(encode_item_stats(3, 1.5, 0.75)) == (3, 1.5, 0.75)
    assert decode_item_stats(None) == (0, 0.0, 0.0)
    with pytest.raises(ValueError):
        decode_item_stats(b"\x00" * 5)
    u = UserStats(4, 2.5, 3, 1, ["a", "b"])
    assert UserStats.from_bytes(u.to_bytes()) == u


def test_ucb_and_thompson_follow_observed_rewards(log: SyntheticLog) -> None:
    """Pool of 5 equally-scored items, each seen 10 times in the partition; only one was
    clicked. UCB picks it for sure; Thompson picks it with a reported propensity > 0.9."""
    pool = [i.item_id for i in log.items[:6]]
    target = pool[4]
    for policy in ("ucb", "thompson"):
        rec = make(log, policy=policy, partitions=1, top_k=2, explore_slots=1, explore_pool=5)
        ex = rec.explorer
        for item in pool[1:]:
            for u in range(10):
                kind = "click" if item == target else "skip"
                ex.observe(Interaction(f"{item}-{u}", f"v{u}", item, kind, 1.0, 0.0), fresh=True)
        probe = Interaction("p", "newbie", pool[0], "view", 0.5, 1.0)
        snap = rec.apply(probe, {})
        rows = np.array([[rec.catalog.row(i) for i in pool]])
        slate = ex.slates([snap], np.zeros((1, 6)), rows, 2, rec._support_batch([snap]),
                          np.zeros((1, 0)), rec._why)[0]
        row, _, why, propensity = slate[-1]
        assert rec.catalog.ids[row] == target and why == "explore"
        assert propensity > (0.9 if policy == "ucb" else 0.8) * ex.exploration_rate(1)
