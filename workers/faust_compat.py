"""Faust knobs that its settings do not expose, and a fix to its commit path.

faust-streaming 0.15.3 builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded.
A broker may hold a fetch for that long whenever one of the requested partitions is empty; with
Tansu this happens on every fetch once a worker consumes more than one topic (interactions + items
+ users): measured here, 1,000 events took 19.9 s with 1500 ms and 0.26 s with 50 ms. Kindling
makes it a setting (``KINDLING_FETCH_MAX_WAIT_MS``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.transport import consumer as faust_consumer_module
from faust.transport import producer as faust_producer
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("kindling.worker")

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_fetch_max_wait_ms = 1500


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    # Read by AIOKafkaConsumer.start() when it builds its Fetcher; the consumer is not started yet.
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # noqa: SLF001
    return consumer


def set_fetch_max_wait(ms: int) -> None:
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = int(ms)
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer


# ----------------------------------------------------------------------------- producer flush
#
# Before it commits offsets, Faust awaits ``app.producer.flush()``: the table changelog records
# of the processed events must be in Kafka before their input offsets are committed. But
# faust-streaming 0.15.3's ``ProducerBuffer.flush`` (where ``Table.__setitem__`` queues each
# changelog record) returns as soon as 0.1 s passes without one message leaving the buffer, and
# it does not count the message its drain task holds while aiokafka's ``send`` waits (for
# metadata, for room in the accumulator, for a broker that is restarting). Under CPU load one
# slow step of the event loop is enough; so is a broker restart. The offsets are then committed
# while changelog records still sit in the process, and a crash at that moment loses them: the
# restarted worker restores the older record and never sees the committed events again (seen
# as `effects_lost` in `kindling chaos` on a loaded machine). :func:`drain_before_commit` makes
# the flush wait until the buffer is empty and nothing is in hand.

_buffer_cls = faust_producer.ProducerBuffer
_original_send_pending = _buffer_cls._send_pending
_FLUSH_WARN_S = 10.0


async def _send_pending(self: Any, fut: Any) -> None:
    self._kindling_in_hand = getattr(self, "_kindling_in_hand", 0) + 1
    try:
        await _original_send_pending(self, fut)
    finally:
        self._kindling_in_hand -= 1


def _undrained(buffer: Any) -> int:
    return int(buffer.size) + getattr(buffer, "_kindling_in_hand", 0)


async def _flush(self: Any) -> None:
    """Return only when every queued message has been handed to the Kafka client."""
    started = last_warned = time.monotonic()
    while _undrained(self):
        if self.state != "running" and self.size:
            raise RuntimeError("Cannot flush: Producer not Running")
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
        except TimeoutError:
            now = time.monotonic()
            if now - last_warned >= _FLUSH_WARN_S:
                last_warned = now
                log.warning("producer flush: %d messages still waiting after %.0f s (is the "
                            "broker reachable?); offsets are not committed meanwhile",
                            _undrained(self), now - started)


def drain_before_commit() -> None:
    """Make every ``ProducerBuffer.flush`` in this process wait for the whole buffer (idempotent;
    the drain task picks up the counting ``_send_pending`` when the producer starts)."""
    _buffer_cls._send_pending = _send_pending
    _buffer_cls.flush = _flush


# ------------------------------------------------------------------------ resume after pressure
#
# When an agent's stream buffer fills (``stream_buffer_maxsize`` / 1.25), Faust takes the
# partition out of the fetcher's active set (``Consumer.on_buffer_full``) and puts it back once
# the buffer has drained to 40% (``on_buffer_drop``). But faust-streaming 0.15.3's fetch loop
# asks for records with a one-second timeout (``getmany(timeout=1.0)``), and with every partition
# paused it sleeps one second (``_wait_next_records``): a partition put back is not fetched again
# until that second is over. Under a backlog (a worker catching up after a restart, a benchmark's
# capacity run) the buffer empties long before: measured with the Faust echo on the embedded
# broker, 17 fetches of ~512 records took ~0.2 s, then one empty fetch waited 1.0 s while the
# agent starved, every ~1.2 s (events/s halved). While a partition is paused for pressure, the
# fetch loop below asks with a short timeout instead, so a partition put back is fetched within
# ``RESUME_POLL_S``; with nothing paused it keeps Faust's one second (an idle worker does not
# spin).

#: The longest a partition put back after buffer pressure waits to be fetched again.
RESUME_POLL_S = 0.02
_IDLE_POLL_S = 1.0  # faust-streaming's own getmany timeout and no-active-partition sleep

_consumer_cls = faust_consumer_module.Consumer
_original_wait_next_records = _consumer_cls._wait_next_records


def fetch_timeout(consumer: Any) -> float:
    """The fetch loop's ``getmany`` timeout: short while a partition is paused for buffer
    pressure (so it is fetched soon after it is put back), Faust's one second otherwise."""
    return RESUME_POLL_S if consumer._buffered_partitions else _IDLE_POLL_S  # noqa: SLF001


async def _wait_next_records(self: Any, timeout: float) -> Any:
    # Faust sleeps one second when no partition is active. When that is because every partition
    # is paused for pressure, sleep only until the next check instead.
    if (self.flow_active and not self.app.client_only and self._buffered_partitions
            and not self._get_active_partitions()):
        await self.sleep(RESUME_POLL_S)
        return {}, set()
    return await _original_wait_next_records(self, timeout)


def resume_promptly() -> None:
    """Install the short wait of :func:`_wait_next_records` (idempotent); the fetch loop
    (``workers/gap_guard.py``) takes its timeout from :func:`fetch_timeout`."""
    _consumer_cls._wait_next_records = _wait_next_records
