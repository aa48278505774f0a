"""Shared fixtures: the embedded broker is started once per test session."""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


def _wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` every 0.5 s until it returns something truthy (returned), or fail."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class FakeAioProducer:
    """What ``streams.batches.ProducerBatches`` uses of ``aiokafka.AIOKafkaProducer``: keyless
    records of a topic go to ``crc32(key) % partitions``; a batch holds ``batch_records``
    records at most (its first one always); ``sent`` logs every batch handed over."""

    def __init__(self, partitions: int = 4, batch_records: int = 1000) -> None:
        self.partitions, self.batch_records = partitions, batch_records
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.offsets: dict[tuple[str, int], int] = {}

        async def wait_on_metadata(topic: str) -> None:
            await asyncio.sleep(0)

        self.client = SimpleNamespace(_wait_on_metadata=wait_on_metadata)

    def _partition(self, topic, partition, key, value, serialized_key, serialized_value) -> int:
        if partition is not None:
            return partition
        return zlib.crc32(serialized_key or b"") % self.partitions

    def create_batch(self):
        fake = self

        class Builder:
            def __init__(self) -> None:
                self.records: list[tuple[bytes | None, bytes]] = []

            def append(self, *, key, value, timestamp):
                if self.records and len(self.records) >= fake.batch_records:
                    return None
                self.records.append((key, value))
                return object()

            def close(self) -> None:
                self.closed = True

            def record_count(self) -> int:
                return len(self.records)

        return Builder()

    async def send_batch(self, builder, topic: str, *, partition: int):
        assert getattr(builder, "closed", False), "a batch handed over still open lingers"
        first = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = first + len(builder.records)
        self.sent.append((topic, partition, list(builder.records)))
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(topic=topic, partition=partition, offset=first))
        return future


@pytest.fixture
def fake_aio_producer():
    """``fake_aio_producer(partitions=4, batch_records=1000)``: see :class:`FakeAioProducer`."""
    return FakeAioProducer


@pytest.fixture
def wait_for():
    """``wait_for(predicate, timeout_s, what)`` for integration tests."""
    return _wait_for


def _read_until(settings, topic: str, done, timeout_s: float, linger_s: float = 2.0):
    """``[(key, value)]`` of ``topic`` from the beginning (all partitions, no group): read until
    ``done(records)`` holds, then on until ``linger_s`` passes without a new record, so a stray
    extra (a duplicate, a second letter) arriving just after still shows up in the caller's
    checks. Gives up after ``timeout_s`` and returns what it has: the caller's assertions then
    say what is missing. Replaces fixed long idle timeouts (``consume(idle_timeout_s=40)``) that
    waited the whole timeout after the last record."""
    import time

    from kafka import KafkaConsumer

    from streams.topics import client_config

    consumer = KafkaConsumer(
        topic, **client_config(settings), group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=max(500, settings.fetch_max_wait_ms))
    records: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    finished_at = None
    try:
        while True:
            got = False
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend((m.key, m.value) for m in batch)
                got = got or bool(batch)
            now = time.monotonic()
            if finished_at is None:
                if done(records):
                    finished_at = now
                elif now > deadline:
                    return records
            elif now > deadline + linger_s:
                return records  # a stream that never goes quiet: the deadline still holds
            elif got:
                finished_at = now
            elif now - finished_at >= linger_s:
                return records
    finally:
        consumer.close()


@pytest.fixture
def fed_worker(tmp_path):
    """``fed_worker(settings, items, events)``: a context that starts a worker process, loads
    ``items`` into its catalog, sends ``events``, yields the worker and stops it on the way out
    (its log: ``tmp_path / "worker.log"``)."""
    from contextlib import contextmanager

    from ops.process import WorkerProcess
    from streams.kafka import EventProducer
    from streams.topics import ensure_topics

    @contextmanager
    def start(settings, items, events):
        ensure_topics(settings)
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            with EventProducer(settings) as producer:
                worker.load_catalog(producer, items)
                producer.interactions(events)
            yield worker
        finally:
            worker.stop()

    return start


@pytest.fixture
def read_until():
    """``read_until(settings, topic, done, timeout_s, linger_s=2.0)``: see ``_read_until``."""
    return _read_until


def _online_reference(rec, events, profile_of=None, supports=None):
    """Online hit@K computed the plain way, one event at a time through ``Recommender.apply`` and
    ``rank``: for each fresh event, is its item in the list published after the user's previous
    event (for a first event: the prior the user would have been served, ranked as a request), and
    in popularity's list for the same state (bundle popularity order, in the
    list's domain when the catalog has several, ties by item id, minus support items and
    Bloom-filtered ones)?
    Returns ``{bucket: (events, model hits, popularity hits)}``."""
    import numpy as np

    from engine.online import BUCKETS
    from engine.support import UserSupport

    edges = [(0, 0), (1, 2), (3, 5), (6, 10), (11, 10**9)]

    def bucket(size: int) -> str:
        return next(name for name, (lo, hi) in zip(BUCKETS, edges, strict=True) if lo <= size <= hi)

    def popularity_list(snap) -> list[str]:
        catalog, bundle = rec.catalog, rec.bundle
        pop = [float(bundle.popularity[bundle.vocab_index[i]]) if i in bundle.vocab_index
               and bundle.popularity.size else 0.0 for i in catalog.ids]
        rows = sorted(range(len(catalog)), key=lambda r: (-pop[r], catalog.ids[r]))
        if len(set(catalog.domains)) > 1:
            rows = [r for r in rows if catalog.domains[r] == snap.event.domain]
        seen = set(snap.exclude)
        bloom = snap.support.seen_mask(catalog.bloom)
        if bloom is not None:
            seen |= {int(r) for r in np.nonzero(bloom)[0]}
        return [catalog.ids[r] for r in rows if r not in seen][: rec.settings.top_k]

    supports = {} if supports is None else supports
    last: dict[str, tuple[list[str], list[str]]] = {}
    out = {b: [0, 0, 0] for b in BUCKETS}
    for e in events:
        size = len(UserSupport.from_bytes(supports.get(e.user_id)).events)
        snap = rec.apply(e, supports)
        if not snap.duplicate:
            previous = last.get(e.user_id)
            if previous is None and size == 0:
                probe = rec.request(e.user_id, e.domain, {})
                previous = (rec.rank([probe], profile_of)[0].item_ids(), popularity_list(probe))
            if previous is not None:
                row = out[bucket(size)]
                row[0] += 1
                row[1] += e.item_id in previous[0]
                row[2] += e.item_id in previous[1]
        published = rec.rank([snap], profile_of)[0]
        last[e.user_id] = (published.item_ids(), popularity_list(snap))
    return {b: tuple(v) for b, v in out.items()}


@pytest.fixture
def online_reference():
    """``online_reference(recommender, events, profile_of=None)``: see ``_online_reference``."""
    return _online_reference
