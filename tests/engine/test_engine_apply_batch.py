"""Recommender.apply_batch: one support-table read and at most one write per user per micro-batch,
and snapshots identical to applying the events one at a time."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.recommender import Recommender, Snapshot
from engine.settings import Settings
from evaluation.synthetic import SyntheticLog, generate
from models.base import LearnerConfig
from schemas import Interaction


class CountingTable(dict):
    """A dict that counts reads and writes per key, as a stand-in for the Faust table."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()

    def get(self, key, default=None):
        self.reads[key] += 1
        return super().get(key, default)

    def __setitem__(self, key, value) -> None:
        self.writes[key] += 1
        super().__setitem__(key, value)


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    return generate(n_users=40, n_items=120, seed=3)


def make(log: SyntheticLog, **changes) -> Recommender:
    settings = Settings(feature_dim=64, attribute_dim=32, support_capacity=4,
                        dedup_window=2).replace(**changes)
    catalog = Catalog(HashingFeaturizer(64, 32))
    catalog.upsert(log.items)
    bundle = ModelBundle.untrained("fomaml", LearnerConfig(feature_dim=64, attribute_dim=32))
    return Recommender(settings, bundle, catalog)


def stream(log: SyntheticLog, seed: int) -> tuple[list[Interaction], list[int | None]]:
    """Few users, many events each (evictions, Bloom), with redeliveries: the same event again at
    its old offset, and the same event id again at a new offset."""
    rng = random.Random(seed)
    items = [i.item_id for i in log.items]
    events, offsets = [], []
    for n in range(300):
        if events and rng.random() < 0.15:
            k = rng.randrange(len(events))
            events.append(events[k])
            offsets.append(offsets[k] if rng.random() < 0.5 else n)
            continue
        user = f"u{rng.randrange(6)}"
        events.append(Interaction(f"e{n}", user, rng.choice(items), "rate",
                                  rng.choice([1.0, 3.5, 5.0]), 100.0 + n))
        offsets.append(n)
    return events, offsets


def same(a: Snapshot, b: Snapshot) -> bool:
    return (a.event == b.event and a.duplicate == b.duplicate and a.rows == b.rows
            and a.targets == b.targets and a.exclude == b.exclude and a.watermark == b.watermark
            and a.support.to_bytes() == b.support.to_bytes())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batches_give_the_snapshots_of_one_event_at_a_time(log: SyntheticLog, seed: int,
                                                          batch: int) -> None:
    events, offsets = stream(log, seed)
    one = make(log)
    one_table: dict[str, bytes] = {}
    expected = [one.apply(e, one_table, offset=o) for e, o in zip(events, offsets, strict=True)]
    rec = make(log)
    table = CountingTable()
    got: list[Snapshot] = []
    for i in range(0, len(events), batch):
        got.extend(rec.apply_batch(events[i : i + batch], table, offsets[i : i + batch]))
    assert len(got) == len(expected)
    assert all(same(a, b) for a, b in zip(got, expected, strict=True))
    assert dict(table) == one_table
    assert any(s.duplicate for s in got) and any(s.support.bloom for s in got)  # covered


def test_one_read_and_one_write_per_user_per_batch(log: SyntheticLog) -> None:
    events, offsets = stream(log, 0)
    batch = events[:64]
    users = {e.user_id for e in batch}
    assert len(users) < len(batch) / 4  # many events per user in this batch
    table = CountingTable()
    make(log).apply_batch(batch, table, offsets[:64])
    assert table.reads == Counter({u: 1 for u in users})
    assert table.writes == Counter({u: 1 for u in users})


def test_bind_is_called_with_the_users_own_events(log: SyntheticLog) -> None:
    """The worker points table access at the partition of ``events[i]``: reads at a user's first
    event, the write at their last."""
    events, offsets = stream(log, 1)
    batch, offs = events[:50], offsets[:50]
    bound: list[int] = []
    table = CountingTable()

    class Spy(CountingTable):
        def get(self, key, default=None):
            assert batch[bound[-1]].user_id == key
            return table.get(key, default)

        def __setitem__(self, key, value) -> None:
            assert batch[bound[-1]].user_id == key
            table[key] = value

    make(log).apply_batch(batch, Spy(), offs, bind=bound.append)
    first = {e.user_id: i for i, e in reversed(list(enumerate(batch)))}
    last = {e.user_id: i for i, e in enumerate(batch)}
    assert sorted(bound) == sorted(list(first.values()) + list(last.values()))


def test_a_redelivered_batch_rewrites_the_stored_bytes_once(log: SyntheticLog) -> None:
    """A batch of pure redeliveries changes nothing but still writes each user's record once (the
    changelog's last chance to get an effect that died in the producer's buffer)."""
    events, offsets = stream(log, 2)
    rec = make(log)
    table = CountingTable()
    rec.apply_batch(events[:40], table, offsets[:40])
    before = dict(table)
    table.writes.clear()
    snaps = rec.apply_batch(events[:40], table, offsets[:40])
    assert all(s.duplicate for s in snaps)
    assert dict(table) == before
    assert table.writes == Counter({e.user_id: 1 for e in events[:40]})


def reference_mask(rec: Recommender, snapshots: list[Snapshot], n_items: int) -> np.ndarray:
    """The exclusions one user and one rule at a time (what ``_exclude`` did per row)."""
    mask = np.zeros((len(snapshots), n_items), dtype=bool)
    codes, names = rec.catalog.domain_codes()
    for i, snap in enumerate(snapshots):
        mask[i, snap.exclude] = True
        seen = snap.support.seen_mask(rec.catalog.bloom)
        if seen is not None:
            mask[i] |= seen
        code = names.get(snap.event.domain)
        if len(names) > 1 and code is not None:
            mask[i] |= codes != code
    return mask


def test_one_exclusion_mask_equals_the_per_user_rules(log: SyntheticLog) -> None:
    rec = make(log)
    rng = random.Random(5)
    # Three domains, one of which no catalog item has (masks nothing), and evictions (Bloom).
    for k, item in enumerate(log.items):
        rec.catalog.domains[rec.catalog.index[item.item_id]] = ("books", "movies")[k % 2]
    items = [i.item_id for i in log.items]
    events = [Interaction(f"e{n}", f"u{rng.randrange(8)}", rng.choice(items), "click", 1.0,
                          float(n), rng.choice(["books", "movies", "music"]))
              for n in range(200)]
    snaps = rec.apply_batch(events, {})
    rec.prepared()
    got = rec._exclusion_mask(snaps, len(rec.catalog))
    assert any(s.support.bloom for s in snaps)
    assert np.array_equal(got, reference_mask(rec, snaps, len(rec.catalog)))
    assert 0 < got.mean() < 1


def test_bandit_statistics_are_written_with_each_events_own_binding(log: SyntheticLog) -> None:
    """The explorer writes its per-partition tables for every fresh event: the worker must have
    pointed table access at that event's partition, not at another user's."""
    events, offsets = stream(log, 4)
    rec = make(log, policy="epsilon", explore_slots=2)
    bound: list[int] = []
    seen: list[tuple[str, str]] = []
    observe = rec.explorer.observe

    def spy(event, fresh):
        seen.append((event.event_id, events[bound[-1]].event_id))
        return observe(event, fresh)

    rec.explorer.observe = spy
    rec.apply_batch(events[:60], CountingTable(), offsets[:60], bind=bound.append)
    assert seen and all(own == bound_to for own, bound_to in seen)
