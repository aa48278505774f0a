"""A fetch loop that rewinds a partition whose records skip offsets, instead of committing them.

faust-streaming 0.15.3's fetch loop (``Consumer._drain_messages``) compares each record's offset
with the partition's *read offset*; when a record is more than one past it, Faust records the
offsets in between as a *gap*, and its commit path (``Consumer._new_offset``) counts gap offsets
as acked. They are committed without ever reaching an agent. That is right for compacted or
transactional topics, whose offsets legitimately skip; on Kindling's source topics (plain
``cleanup.policy=delete`` topics, ``streams/topics.py``) a skip can only mean that the client's
fetch position was past where the stream had got to. That happened once in ~4 suites in
``tests/integration/test_integration_chaos.py``: after a restart the worker never processed the
~218 interactions produced while it was down, and committed past them (why the position was
there is not known). Faust's bookkeeping is also off by one: a seek sets the read offset to the
committed offset *C* (the next record to read) while processing record *X* sets it to *X* (the
last read), so a first record at *C+1* is not seen as a gap at all, and ``_new_offset`` lets the
commit move past *C* (``min(acked) - committed == 1``).

:class:`GapGuard` keeps the *next expected* offset per partition: the offset of every seek Faust
makes (``seek``, ``seek_to_committed``, ``seek_wait``), and *X+1* once record *X* is handed on.
For the partitions of the *strict* topics (given by the app), a record past the expected offset
is not processed and adds no gap: the partition is sought back to the expected offset and the
rest of its records in the same fetch are dropped. If the first record fetched after that rewind
is again past the same offset, the log really has no records there (transaction markers,
retention, compaction) and the gap is accepted as Faust would (logged once). Other topics, and
records below the expected offset (redeliveries), keep Faust's handling.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from faust.transport import consumer as faust_consumer
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TP
from faust.types import TP
from mode import Service, ServiceT

from workers.deliver import deliver
from workers.faust_compat import fetch_timeout

log = logging.getLogger("kindling.consumer")


class Admit(enum.StrEnum):
    """What the fetch loop does with a record."""

    PROCESS = "process"  # Faust's handling (redeliveries below its read offset are dropped)
    REWIND = "rewind"  # past the expected offset: seek back to it, do not process this record
    ACCEPT_GAP = "accept-gap"  # past it again right after a rewind: a real hole in the log
    DROP = "drop"  # fetched before the rewind took effect


class GapGuard:
    """The next expected offset of each partition, and the decision for each fetched record.

    >>> guard = GapGuard({"interactions"})
    >>> tp = TP("interactions", 0)
    >>> guard.seeked(tp, 10)
    >>> guard.admit(tp, 12)
    <Admit.REWIND: 'rewind'>
    """

    def __init__(self, strict_topics: Iterable[str]) -> None:
        self.strict_topics = frozenset(strict_topics)
        self._expected: dict[TP, int] = {}
        # partition -> (offset it was rewound to, fetch in which it was rewound)
        self._rewound: dict[TP, tuple[int, int]] = {}
        self._fetch = 0
        # partition -> (offset, what sought it, monotonic time): for the warnings
        self._last_seek: dict[TP, tuple[int | None, str, float]] = {}

    def is_strict(self, tp: TP) -> bool:
        return tp.topic in self.strict_topics

    def expected(self, tp: TP) -> int | None:
        """The offset the partition's next record must have (``None``: not known)."""
        return self._expected.get(ensure_TP(tp))

    def next_fetch(self) -> None:
        """The records admitted from now on come from a new fetch (``getmany`` call)."""
        self._fetch += 1

    def seeked(self, tp: TP, offset: int | None, by: str = "seek") -> None:
        """The partition's position was moved to ``offset`` (``None``: to wherever the client's
        reset policy puts it) by ``by`` (which call, for the warnings)."""
        tp = ensure_TP(tp)
        self._last_seek[tp] = (offset, by, time.monotonic())
        if offset is None or offset < 0:
            self._expected.pop(tp, None)
        else:
            self._expected[tp] = offset
        rewound = self._rewound.get(tp)
        if rewound is not None and rewound[0] != offset:
            del self._rewound[tp]  # moved elsewhere since the rewind: that one is over

    def forget(self, tp: TP) -> None:
        """The partition was revoked."""
        tp = ensure_TP(tp)
        self._expected.pop(tp, None)
        self._rewound.pop(tp, None)
        self._last_seek.pop(tp, None)

    def last_seek(self, tp: TP) -> dict[str, Any]:
        """The partition's last seek: ``offset``, ``by``, ``seconds_ago`` and how many records
        were handed on since (``handed_on``: from the expected offset; ``None`` if unknown)."""
        tp = ensure_TP(tp)
        if tp not in self._last_seek:
            return {"offset": None, "by": None, "seconds_ago": None, "handed_on": None}
        offset, by, at = self._last_seek[tp]
        expected = self._expected.get(tp)
        handed = expected - offset if offset is not None and expected is not None else None
        return {"offset": offset, "by": by, "seconds_ago": round(time.monotonic() - at, 3),
                "handed_on": handed}

    def processed(self, tp: TP, offset: int) -> None:
        """Record ``offset`` was handed to the agents."""
        self._expected[ensure_TP(tp)] = offset + 1

    def admit(self, tp: TP, offset: int) -> Admit:
        """What to do with the fetched record at ``offset`` of ``tp``."""
        if tp.topic not in self.strict_topics:
            return Admit.PROCESS
        tp = ensure_TP(tp)
        expected = self._expected.get(tp)
        if expected is None or offset <= expected:
            if offset == expected:
                self._rewound.pop(tp, None)
            return Admit.PROCESS  # below: a redelivery, Faust's read offset decides
        rewound = self._rewound.get(tp)
        if rewound is not None:
            if rewound[1] == self._fetch:
                return Admit.DROP
            del self._rewound[tp]
            return Admit.ACCEPT_GAP
        self._rewound[tp] = (expected, self._fetch)
        return Admit.REWIND


# ----------------------------------------------------------------------------- installation

_strict_topics: set[str] = set()
_on_gap: list[Callable[[str], None]] = []  # the installing app's counter (the latest one)
_consumer_cls = faust_consumer.Consumer
_delegate_cls = faust_consumer.ThreadDelegateConsumer
_original_seek = _consumer_cls.seek
_original_seek_to_committed = _delegate_cls.seek_to_committed
_original_seek_wait = _delegate_cls.seek_wait
_original_revoked = _consumer_cls.on_partitions_revoked


def guard_of(consumer: Any) -> GapGuard:
    """The consumer's guard (made on first use from the installed strict topics)."""
    guard = getattr(consumer, "_kindling_gap_guard", None)
    if guard is None:
        guard = consumer._kindling_gap_guard = GapGuard(_strict_topics)
    return cast(GapGuard, guard)


async def _seek(self: Any, partition: TP, offset: int) -> None:
    await _original_seek(self, partition, offset)
    guard_of(self).seeked(partition, offset, "seek")


async def _seek_to_committed(self: Any) -> Mapping[TP, int]:
    committed = await _original_seek_to_committed(self)
    guard = guard_of(self)
    for tp, offset in committed.items():
        guard.seeked(tp, offset, "seek_to_committed")
    return committed


async def _seek_wait(self: Any, partitions: Mapping[TP, int]) -> None:
    await _original_seek_wait(self, partitions)
    guard = guard_of(self)
    for tp, offset in partitions.items():
        guard.seeked(tp, offset, "seek_wait")


async def _on_partitions_revoked(self: Any, revoked: set[TP]) -> None:
    guard = guard_of(self)
    for tp in revoked:
        guard.forget(tp)
    await _original_revoked(self, revoked)


def _count(action: str) -> None:
    for count in _on_gap:
        count(action)


async def _rewind(consumer: Any, tp: TP, expected: int, offset: int) -> None:
    seek = guard_of(consumer).last_seek(tp)
    log.warning("%s[%d]: expected offset %d next, the fetch returned %d (%d records skipped by "
                "the consumer's position); rewinding the partition to %d instead of committing "
                "past them (last seek: to %s by %s %s s before, %s records handed on since)",
                tp.topic, tp.partition, expected, offset, offset - expected, expected,
                seek["offset"], seek["by"], seek["seconds_ago"], seek["handed_on"],
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset,
                       "expected": expected, "skipped": offset - expected,
                       "last_seek": seek})
    _count("rewind")
    # Through the consumer thread (aiokafka is not thread-safe); sets Faust's read offset too.
    await consumer.seek_wait({tp: expected})


def _accept_gap(tp: TP, expected: int, offset: int) -> None:
    log.warning("%s[%d]: after a rewind to offset %d the fetch again returned %d first: the log "
                "has no records %d-%d (transaction markers, retention, compaction); accepting "
                "the gap as Faust does", tp.topic, tp.partition, expected, offset, expected,
                offset - 1, extra={"topic": tp.topic, "partition": tp.partition,
                                   "offset": offset, "expected": expected,
                                   "skipped": offset - expected})
    _count("accept")


async def _drain_messages(self: Any, fetcher: ServiceT) -> None:  # pragma: no cover - a broker
    """faust-streaming 0.15.3's ``Consumer._drain_messages`` with the :class:`GapGuard` deciding
    first what happens to each record (``# kindling`` marks the changes)."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    guard = guard_of(self)  # kindling

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=fetch_timeout(self))  # kindling: short while paused

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                guard.next_fetch()  # kindling
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    admit = guard.admit(tp, offset)  # kindling: from here
                    if admit is Admit.DROP:
                        continue
                    if admit is Admit.REWIND:
                        await _rewind(self, tp, cast(int, guard.expected(tp)), offset)
                        continue
                    if admit is Admit.ACCEPT_GAP:
                        _accept_gap(tp, cast(int, guard.expected(tp)), offset)  # kindling: to here
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        await deliver(self, callback, message,  # kindling: no tasks
                                      self.suspend_flow)  # when on_message does not suspend
                        set_read_offset(tp, offset)
                        guard.processed(tp, offset)  # kindling
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def install(strict_topics: Iterable[str],
            on_gap: Callable[[str], None] | None = None) -> None:
    """Guard every Faust consumer in this process against skipped offsets on ``strict_topics``
    (source topics that are neither compacted nor transactional); ``on_gap`` is called with
    ``"rewind"`` or ``"accept"`` each time the guard acts (a metric). Idempotent; the strict
    topics of several calls add up (several apps in one process), ``on_gap`` is the latest."""
    _strict_topics.update(strict_topics)
    _on_gap[:] = [] if on_gap is None else [on_gap]
    _consumer_cls._drain_messages = _drain_messages
    _consumer_cls.seek = _seek
    _consumer_cls.on_partitions_revoked = _on_partitions_revoked
    _delegate_cls.seek_to_committed = _seek_to_committed
    _delegate_cls.seek_wait = _seek_wait
