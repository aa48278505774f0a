"""The serving path's batched support-table writes (workers.app.TableAccess, batched=True):
each held write lands in its own partition's RocksDB, its changelog record is sent to that
partition in write order, and the persisted offsets follow the delivered records."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import rocksdict
from faust.streams import _current_event

from workers.app import TableAccess

TOPIC = "app-supports-changelog"


class FakeStore:
    """What TableAccess uses of faust's RocksDB store, over real rocksdict databases."""

    use_rocksdict = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._key_index: dict[bytes, int] = {}
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.persisted: dict[int, int] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = rocksdict.Rdict(str(self.root / str(partition)),
                                                  options=rocksdict.Options(raw_mode=True))
        return self.dbs[partition]

    def get(self, key: str | bytes) -> bytes | None:
        key = key.encode() if isinstance(key, str) else key
        partition = self._key_index.get(key)
        return None if partition is None else self.dbs[partition].get(key)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        assert tp.topic == TOPIC
        self.persisted[tp.partition] = offset


def table(store: FakeStore) -> Any:
    return SimpleNamespace(
        data=store, app=SimpleNamespace(in_transaction=False),
        changelog_topic=SimpleNamespace(get_topic_name=lambda: TOPIC))


class Event:  # weak-referenceable, as Faust's events are
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition, topic="interactions")


def in_partition(partition: int) -> Event:
    """Point the current event at ``partition`` (what the worker's bind does); keep the event."""
    event = Event(partition)
    _current_event.set(weakref.ref(event))
    return event


def test_batched_writes_go_to_their_partitions_and_changelog(tmp_path: Path,
                                                             fake_aio_producer: Any) -> None:
    store, producer = FakeStore(tmp_path), fake_aio_producer(partitions=2)
    access = TableAccess(table(store), batched=True)

    async def run() -> None:
        held = [in_partition(1)]
        access["alice"] = b"a1"
        held.append(in_partition(0))
        access["bob"] = b"b1"
        held.append(in_partition(1))
        access["carol"] = b"c1"
        access["alice"] = b"a2"  # a second write of a key: the last one wins, sent last
        assert access.get("alice") == b"a2"  # reads see held writes before the flush
        assert store.get("alice") is None  # nothing written yet
        for awaitable in await access.flush(producer):
            await awaitable
        assert await access.flush(producer) == []  # nothing held any more

    asyncio.run(run())
    # one producer batch per changelog partition, records in write order within it
    assert sorted(producer.sent) == [(TOPIC, 0, [(b"bob", b"b1")]),
                                     (TOPIC, 1, [(b"carol", b"c1"), (b"alice", b"a2")])]
    assert store.dbs[1].get(b"alice") == b"a2" and store.dbs[1].get(b"carol") == b"c1"
    assert store.dbs[0].get(b"bob") == b"b1" and store.dbs[0].get(b"alice") is None
    assert store._key_index == {b"alice": 1, b"bob": 0, b"carol": 1}
    assert store.persisted == {0: 0, 1: 1}  # each partition's newest delivered offset
    assert access.get(b"carol") == b"c1"  # read back from the store after the flush


def test_batched_write_needs_an_event() -> None:
    access = TableAccess(table(SimpleNamespace()), batched=True)
    _current_event.set(None)
    with pytest.raises(RuntimeError, match="outside of an event"):
        access["alice"] = b"a1"
