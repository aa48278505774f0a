"""A record past a source partition's next expected offset is rewound to, never committed past
(workers/gap_guard.py).

faust-streaming 0.15.3's fetch loop marks the offsets between its read offset and a later record
as a *gap* that its commit path counts as acked: on a topic that is neither compacted nor
transactional those are records the worker never processed (``kindling chaos``: 218 interactions
committed past after a restart). The guard's decisions are tested as a pure object, and the
patched loop against a fake consumer whose fetch position was moved past the committed offset,
next to Faust's own loop, which loses the records."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from workers import gap_guard
from workers.gap_guard import Admit, GapGuard

TP0 = TP("kindling.interactions", 0)
OTHER = TP("app-supports-changelog", 0)


def _guard() -> GapGuard:
    return GapGuard({TP0.topic})


def _feed(guard: GapGuard, tp: TP, offsets: list[int]) -> list[Admit]:
    """Admit ``offsets`` as one fetch, marking those processed that the loop would hand on."""
    guard.next_fetch()
    out = []
    for offset in offsets:
        admit = guard.admit(tp, offset)
        out.append(admit)
        if admit in (Admit.PROCESS, Admit.ACCEPT_GAP):
            guard.processed(tp, offset)
    return out


def test_contiguous_records_are_processed() -> None:
    guard = _guard()
    guard.seeked(TP0, 10)
    assert _feed(guard, TP0, [10, 11, 12]) == [Admit.PROCESS] * 3
    assert _feed(guard, TP0, [13, 14]) == [Admit.PROCESS] * 2
    assert guard.expected(TP0) == 15


def test_a_gap_rewinds_and_drops_the_rest_of_the_fetch() -> None:
    guard = _guard()
    guard.seeked(TP0, 10)
    assert _feed(guard, TP0, [10, 11]) == [Admit.PROCESS] * 2
    assert _feed(guard, TP0, [15, 16, 17]) == [Admit.REWIND, Admit.DROP, Admit.DROP]
    assert guard.expected(TP0) == 12
    guard.seeked(TP0, 12)  # the rewind's own seek
    assert _feed(guard, TP0, [12, 13, 14, 15]) == [Admit.PROCESS] * 4
    assert guard.expected(TP0) == 16


def test_the_first_record_one_past_the_seek_offset_is_a_gap() -> None:
    # Faust's read offset after a seek to C is C, and C+1 looks contiguous to it: C would be
    # committed unprocessed. The guard expects C.
    guard = _guard()
    guard.seeked(TP0, 335)
    assert _feed(guard, TP0, [336, 337]) == [Admit.REWIND, Admit.DROP]
    guard.seeked(TP0, 335)
    assert _feed(guard, TP0, [335, 336, 337]) == [Admit.PROCESS] * 3


def test_the_same_gap_right_after_a_rewind_is_a_hole_in_the_log_and_accepted() -> None:
    guard = _guard()
    guard.seeked(TP0, 20)
    assert _feed(guard, TP0, [25, 26]) == [Admit.REWIND, Admit.DROP]
    guard.seeked(TP0, 20)
    assert _feed(guard, TP0, [25, 26]) == [Admit.ACCEPT_GAP, Admit.PROCESS]
    # a later gap is rewound again
    assert _feed(guard, TP0, [30]) == [Admit.REWIND]


def test_an_empty_fetch_after_a_rewind_does_not_end_it() -> None:
    guard = _guard()
    guard.seeked(TP0, 20)
    assert _feed(guard, TP0, [25]) == [Admit.REWIND]
    guard.next_fetch()  # nothing fetched for the partition this time
    assert _feed(guard, TP0, [20, 21]) == [Admit.PROCESS] * 2


def test_a_seek_elsewhere_after_a_rewind_starts_over() -> None:
    guard = _guard()
    guard.seeked(TP0, 20)
    assert _feed(guard, TP0, [25]) == [Admit.REWIND]
    guard.seeked(TP0, 18)  # Faust seeks to the committed offset (a rebalance)
    assert _feed(guard, TP0, [25]) == [Admit.REWIND]  # not taken for a hole at 20


def test_redeliveries_keep_fausts_handling() -> None:
    guard = _guard()
    guard.seeked(TP0, 10)
    _feed(guard, TP0, [10, 11, 12])
    guard.next_fetch()
    # Faust's read offset (12) decides: 5 is dropped there, 12 handed on again.
    assert guard.admit(TP0, 5) == Admit.PROCESS
    assert guard.admit(TP0, 12) == Admit.PROCESS
    assert guard.expected(TP0) == 13


def test_other_topics_and_unknown_positions_pass_through() -> None:
    guard = _guard()
    guard.seeked(OTHER, 10)
    assert _feed(guard, OTHER, [50, 90]) == [Admit.PROCESS] * 2
    assert _feed(guard, TP0, [7]) == [Admit.PROCESS]  # no seek yet: nothing expected
    assert _feed(guard, TP0, [9]) == [Admit.REWIND]  # ... until a record was handed on
    guard.seeked(TP0, None)  # no committed offset: the reset policy decides
    assert _feed(guard, TP0, [40]) == [Admit.PROCESS]
    guard.seeked(TP0, 50)
    guard.forget(TP0)  # revoked
    assert _feed(guard, TP0, [60]) == [Admit.PROCESS]


# ----------------------------------------------------------------------------- the fetch loop
class _FakeConsumer:
    """What ``Consumer._drain_messages`` uses of a consumer, over an in-memory log: ``getmany``
    returns up to ``fetch`` records from the fetch ``position``; ``seek_wait`` moves it (and the
    read offset, as Faust's does). Stops once a fetch returns nothing."""

    consumer_stopped_errors: tuple[type[BaseException], ...] = ()
    _commit_every = None
    should_stop = False

    def __init__(self, log: dict[TP, list[int]], position: dict[TP, int],
                 read_offset: dict[TP, int], fetch: int = 4) -> None:
        self.records = log
        self.position = dict(position)
        self.fetch = fetch
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None, read_offset)
        self._stopped = asyncio.Event()
        self.suspend_flow = asyncio.Event()
        self._buffered_partitions: set[TP] = set()  # none paused for buffer pressure
        self.delivered: list[tuple[TP, int]] = []
        self.gaps: list[tuple[TP, int, int]] = []
        self.seeks: list[tuple[TP, int]] = []
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.log = SimpleNamespace(dev=lambda *a, **k: None, info=lambda *a, **k: None,
                                   exception=lambda *a, **k: None)

    async def callback(self, message: Any) -> None:
        self.delivered.append((message.tp, message.offset))

    async def getmany(self, timeout: float) -> Any:
        batch = []
        for tp, offsets in self.records.items():
            batch += [(tp, o) for o in offsets if o >= self.position[tp]][: self.fetch]
        if not batch:
            self._stopped.set()
        for tp, offset in batch:
            self.position[tp] = offset + 1
        for tp, offset in batch:
            yield tp, SimpleNamespace(tp=tp, topic=tp.topic, offset=offset, key=b"", value=b"")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_first(self, *coros: Any) -> None:
        await coros[0]
        coros[1].close()

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        for tp, offset in partitions.items():
            self.seeks.append((tp, offset))
            self.position[tp] = offset
            self._read_offset[tp] = offset
            gap_guard.guard_of(self).seeked(tp, offset)


def _drain(consumer: _FakeConsumer, drain: Any) -> None:
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    asyncio.run(asyncio.wait_for(drain(consumer, fetcher), 10))


def _moved_past(committed: int, skip: int, end: int = 30, holes: range = range(0)
                ) -> _FakeConsumer:
    """Faust sought to ``committed`` (read offset and guard), but the client fetches from
    ``committed + skip``."""
    consumer = _FakeConsumer({TP0: [o for o in range(end) if o not in holes]},
                             position={TP0: committed + skip}, read_offset={TP0: committed})
    consumer._kindling_gap_guard = GapGuard({TP0.topic})
    consumer._kindling_gap_guard.seeked(TP0, committed)
    return consumer


@pytest.mark.parametrize("skip", [1, 5])
def test_fausts_loop_skips_the_records_and_marks_them_committable(skip: int) -> None:
    # The defect worked around: nothing from 10 to 10+skip-1 is handed on; with skip > 1 the
    # offsets are a gap, counted as acked (with skip 1, 10 is committed by the off-by-one).
    consumer = _moved_past(10, skip)
    _drain(consumer, Consumer._drain_messages)
    assert [o for _, o in consumer.delivered] == list(range(10 + skip, 30))
    assert consumer.gaps == ([(TP0, 11, 10 + skip)] if skip > 1 else [])


@pytest.mark.parametrize("skip", [1, 5])
def test_the_guarded_loop_rewinds_and_hands_on_every_record(
        skip: int, caplog: pytest.LogCaptureFixture) -> None:
    consumer = _moved_past(10, skip)
    _drain(consumer, gap_guard._drain_messages)
    assert [o for _, o in consumer.delivered] == list(range(10, 30))
    assert consumer.gaps == [] and consumer.seeks == [(TP0, 10)]
    warning = next(r for r in caplog.records if r.levelname == "WARNING")
    assert (warning.topic, warning.partition, warning.expected, warning.offset,
            warning.skipped) == (TP0.topic, 0, 10, 10 + skip, skip)
    # what sought the partition last, and that nothing was handed on since
    assert warning.last_seek["offset"] == 10 and warning.last_seek["handed_on"] == 0


def test_the_guarded_loop_accepts_a_real_hole_after_one_rewind(
        caplog: pytest.LogCaptureFixture) -> None:
    consumer = _moved_past(10, 0, holes=range(14, 18))
    _drain(consumer, gap_guard._drain_messages)
    assert [o for _, o in consumer.delivered] == [*range(10, 14), *range(18, 30)]
    assert consumer.seeks == [(TP0, 14)]  # one rewind, then the gap is Faust's (from its
    assert consumer.gaps == [(TP0, 15, 18)]  # read offset + 1, as after any seek)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "rewinding the partition to 14" in warnings[0]
    assert "accepting the gap" in warnings[1]


def test_install_counts_what_the_guard_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_drain_messages", "seek", "on_partitions_revoked"):
        monkeypatch.setattr(Consumer, name, getattr(Consumer, name))
    delegate = gap_guard._delegate_cls
    for name in ("seek_to_committed", "seek_wait"):
        monkeypatch.setattr(delegate, name, getattr(delegate, name))
    monkeypatch.setattr(gap_guard, "_strict_topics", set())
    counted: list[str] = []
    gap_guard.install([TP0.topic], on_gap=counted.append)
    assert Consumer._drain_messages is gap_guard._drain_messages
    consumer = _moved_past(10, 3, holes=range(20, 22))
    del consumer._kindling_gap_guard  # made from the installed topics on first use
    gap_guard.guard_of(consumer).seeked(TP0, 10)
    _drain(consumer, Consumer._drain_messages)
    assert counted == ["rewind", "rewind", "accept"]


def test_the_last_seek_says_what_sought_the_partition_and_what_was_handed_on_since() -> None:
    guard = GapGuard({"interactions"})
    assert guard.last_seek(TP0)["by"] is None
    guard.seeked(TP0, 423, "seek_to_committed")
    seek = guard.last_seek(TP0)
    assert seek["offset"] == 423 and seek["by"] == "seek_to_committed"
    assert seek["handed_on"] == 0 and 0 <= seek["seconds_ago"] < 5
    for offset in (423, 424, 425):
        assert guard.admit(TP0, offset) is Admit.PROCESS
        guard.processed(TP0, offset)
    assert guard.last_seek(TP0)["handed_on"] == 3
    guard.forget(TP0)
    assert guard.last_seek(TP0)["offset"] is None
