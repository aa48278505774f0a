"""Online hit@K bookkeeping (engine/online.py) against the plain one-event-at-a-time reference
(tests/conftest.py::_online_reference), whatever the micro-batching, with Bloom-filtered seen
items, several domains, evictions from the remembered users and answers to requests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.online import BUCKETS, HitCounts, OnlineHits, bucket_of
from engine.recommender import Recommender
from engine.settings import Settings
from engine.trainer import train_bundle
from evaluation.synthetic import SyntheticLog, generate


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    return generate(n_users=120, n_items=150, events_per_user=(2, 30), seed=3)


@pytest.fixture(scope="module")
def bundle(log: SyntheticLog) -> ModelBundle:
    catalog = Catalog(HashingFeaturizer(64, 32))
    catalog.upsert(log.items)
    warm = [e for e in log.events if int(e.user_id[1:]) % 3]
    return train_bundle(Settings(), warm, catalog, steps=15, profiles=log.profiles,
                        pretrain_epochs=0, recipe={"calibrate_recency": 0}).bundle


def _recommender(log: SyntheticLog, bundle: ModelBundle, items=None, **changes) -> Recommender:
    catalog = Catalog(HashingFeaturizer(64, 32))
    catalog.upsert(items or log.items)
    return Recommender(Settings(**changes), bundle, catalog)


def _stream(log: SyntheticLog) -> list:
    new = [e for e in log.events if int(e.user_id[1:]) % 3 == 0]
    return sorted(new, key=lambda e: (e.ts, e.event_id))


def _batched(rec: Recommender, events, profile_of, size: int, hits: OnlineHits) -> HitCounts:
    supports: dict[str, bytes] = {}
    total = HitCounts()
    for i in range(0, len(events), size):
        snaps = [rec.apply(e, supports) for e in events[i : i + size]]
        total += hits.observe(rec, snaps, rec.rank(snaps, profile_of), profile_of)
    return total


def _as_reference(counts: HitCounts) -> dict[str, tuple[int, int, int]]:
    return {b: (int(counts.events[i]), int(counts.hits[0, i]), int(counts.hits[1, i]))
            for i, b in enumerate(BUCKETS)}


def test_buckets() -> None:
    sizes = [0, 1, 2, 3, 5, 6, 10, 11, 20]
    assert [BUCKETS[b] for b in bucket_of(sizes)] == [
        "0", "1-2", "1-2", "3-5", "3-5", "6-10", "6-10", ">10", ">10"]


@pytest.mark.parametrize("batch", [1, 7, 64, 10_000])
def test_matches_the_reference_whatever_the_batching(log, bundle, online_reference,
                                                     batch: int) -> None:
    profile_of = log.profiles.get
    events = _stream(log)
    want = online_reference(_recommender(log, bundle, support_capacity=12), events, profile_of)
    rec = _recommender(log, bundle, support_capacity=12)  # evictions: Bloom-filtered seen items
    got = _batched(rec, events, profile_of, batch, OnlineHits(10, 10_000))
    assert _as_reference(got) == want
    assert got.unscored == 0
    first_events = len({e.user_id for e in events})
    assert want["0"][0] == first_events and sum(v[0] for v in want.values()) == len(events)
    assert all(want[b][0] > 0 for b in BUCKETS)
    # a trained model on planted clusters: more hits than popularity once it has seen events
    assert sum(want[b][1] for b in BUCKETS[1:]) > sum(want[b][2] for b in BUCKETS[1:])


def test_several_domains(log, bundle, online_reference) -> None:
    domain = {item.item_id: "books" if n % 2 else "music" for n, item in enumerate(log.items)}
    items = [dataclasses.replace(i, domain=domain[i.item_id]) for i in log.items]
    events = [dataclasses.replace(e, domain=domain[e.item_id]) for e in _stream(log)]
    want = online_reference(_recommender(log, bundle, items), events, log.profiles.get)
    rec = _recommender(log, bundle, items)
    got = _batched(rec, events, log.profiles.get, 50, OnlineHits(10, 10_000))
    assert _as_reference(got) == want
    assert sum(w[2] for w in want.values()) > 0


def test_forgotten_users_are_counted_unscored(log, bundle) -> None:
    events = _stream(log)
    rec = _recommender(log, bundle)
    full = _batched(rec, events, log.profiles.get, 32, OnlineHits(10, 10_000))
    small = OnlineHits(10, 5)
    rec = _recommender(log, bundle)
    forgetful = _batched(rec, events, log.profiles.get, 32, small)
    assert len(small) == 5
    assert forgetful.unscored > 0
    assert forgetful.events.sum() + forgetful.unscored == full.events.sum() == len(events)
    assert forgetful.events[0] == full.events[0]  # first events are scored against the prior


def test_off_counts_nothing(log, bundle) -> None:
    rec = _recommender(log, bundle)
    off = OnlineHits(10, 0)
    assert not off.enabled
    assert _batched(rec, _stream(log), None, 32, off).events.sum() == 0 and len(off) == 0


def test_duplicates_are_not_scored(log, bundle) -> None:
    rec = _recommender(log, bundle)
    events = _stream(log)[:40]
    hits = OnlineHits(10, 100)
    supports: dict[str, bytes] = {}
    snaps = [rec.apply(e, supports) for e in events]
    first = hits.observe(rec, snaps, rec.rank(snaps))
    again = [rec.apply(e, supports) for e in events]  # redelivered: all duplicates
    assert all(s.duplicate for s in again)
    assert hits.observe(rec, again, rec.rank(again)).events.sum() == 0
    assert first.events.sum() == len(events)


def test_a_requested_list_is_what_the_next_event_is_scored_against(log, bundle) -> None:
    rec = _recommender(log, bundle)
    hits = OnlineHits(10, 100)
    user = "fresh-user"
    probe = rec.request(user, "default", {})
    answer = rec.rank([probe])[0]
    hits.remember(rec, [probe], [answer])
    target = answer.item_ids()[3]
    event = dataclasses.replace(_stream(log)[0], event_id="e1", user_id=user, item_id=target)
    snap = rec.apply(event, {})
    counts = hits.observe(rec, [snap], rec.rank([snap]))
    assert counts.events[0] == 1 and counts.hits[0, 0] == 1


def test_table_reports_rates_and_lift() -> None:
    counts = HitCounts()
    counts.events[:] = [10, 20, 0, 0, 0]
    counts.hits[0, :2] = [5, 10]
    counts.hits[1, :2] = [2, 5]
    table = counts.table()
    assert table["0"] == {"events": 10, "model": 0.5, "popularity": 0.2, "lift": 2.5}
    assert table["1-2"]["lift"] == 2.0 and np.isnan(table["3-5"]["model"])
