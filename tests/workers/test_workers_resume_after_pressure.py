"""A partition paused for stream-buffer pressure is fetched again soon after it is put back
(workers/faust_compat.py: ``fetch_timeout``, ``resume_promptly``).

faust-streaming 0.15.3 pauses a partition whose agent's buffer is full and puts it back once the
buffer has drained, but its fetch loop asks with a one-second timeout and, with every partition
paused, sleeps one second: under a backlog the agent starved most of each second. These tests run
Faust's own pause/resume bookkeeping on a stand-in consumer."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from workers import faust_compat

INTERACTIONS = TP("kindling.interactions", 0)
ITEMS = TP("kindling.items", 0)


class _Consumer:
    """The attributes Faust's flow control and ``_wait_next_records`` use."""

    def __init__(self, assigned: set[TP]) -> None:
        self._active_partitions: set[TP] | None = set(assigned)
        self._paused_partitions: set[TP] = set()
        self._buffered_partitions: set[TP] = set()
        self.flow_active = True
        self.app = SimpleNamespace(in_recovery=False, client_only=False)
        self.not_waiting_next_records = asyncio.Event()

    def assignment(self) -> set[TP]:
        return set()

    _get_active_partitions = Consumer._get_active_partitions
    _set_active_tps = Consumer._set_active_tps
    on_buffer_full = Consumer.on_buffer_full
    on_buffer_drop = Consumer.on_buffer_drop

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _getmany(self, active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        # The interactions partition has a backlog: a fetch of it returns at once. A broker
        # holds a fetch of idle partitions for the whole timeout.
        if INTERACTIONS in active_partitions:
            return {INTERACTIONS: [object()]}
        await asyncio.sleep(timeout)
        return {}


def test_the_fetch_timeout_is_short_only_while_a_partition_is_paused_for_pressure() -> None:
    consumer = _Consumer({INTERACTIONS, ITEMS})
    assert faust_compat.fetch_timeout(consumer) == 1.0  # Faust's own, nothing paused
    consumer.on_buffer_full(INTERACTIONS)
    assert consumer._get_active_partitions() == {ITEMS}
    assert faust_compat.fetch_timeout(consumer) == faust_compat.RESUME_POLL_S
    consumer.on_buffer_drop(INTERACTIONS)
    assert consumer._get_active_partitions() == {ITEMS, INTERACTIONS}
    assert faust_compat.fetch_timeout(consumer) == 1.0


async def _resumed_after(wait_next_records: Any, consumer: _Consumer, drop_after: float) -> float:
    """Run a fetch loop (``fetch_timeout`` as the patched loop does) until a fetch asks for the
    interactions partition; put it back ``drop_after`` s in. Seconds from the drop to that fetch."""
    dropped_at: list[float] = []

    async def drop() -> None:
        await asyncio.sleep(drop_after)
        consumer.on_buffer_drop(INTERACTIONS)
        dropped_at.append(time.monotonic())

    task = asyncio.create_task(drop())
    while True:
        _, active = await wait_next_records(consumer, faust_compat.fetch_timeout(consumer))
        if dropped_at and INTERACTIONS in active:
            await task
            return time.monotonic() - dropped_at[0]


@pytest.mark.parametrize("assigned", [{INTERACTIONS, ITEMS}, {INTERACTIONS}],
                         ids=["an idle partition still active", "every partition paused"])
def test_a_partition_put_back_is_fetched_within_the_short_poll(assigned: set[TP]) -> None:
    consumer = _Consumer(assigned)
    consumer.on_buffer_full(INTERACTIONS)
    waited = asyncio.run(_resumed_after(faust_compat._wait_next_records, consumer, 0.1))
    assert waited < 0.25, f"{waited:.3f} s from the drop to the next fetch of the partition"


@pytest.mark.parametrize("assigned", [{INTERACTIONS, ITEMS}, {INTERACTIONS}],
                         ids=["an idle partition still active", "every partition paused"])
def test_fausts_own_wait_holds_a_partition_put_back_for_up_to_a_second(
        assigned: set[TP], monkeypatch: pytest.MonkeyPatch) -> None:
    # What the patch is for: Faust's loop (a one-second getmany, a one-second sleep).
    monkeypatch.setattr(faust_compat, "fetch_timeout", lambda consumer: 1.0)
    consumer = _Consumer(assigned)
    consumer.on_buffer_full(INTERACTIONS)
    waited = asyncio.run(_resumed_after(Consumer._wait_next_records, consumer, 0.1))
    assert waited > 0.6, f"{waited:.3f} s"


def test_resume_promptly_installs_the_short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Consumer, "_wait_next_records", Consumer._wait_next_records)
    faust_compat.resume_promptly()
    assert Consumer._wait_next_records is faust_compat._wait_next_records
