"""Faust knobs that its settings do not expose.

faust-streaming 0.15.3 builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded.
A broker may hold a fetch for that long whenever one of the requested partitions is empty; with
Tansu this happens on every fetch once a worker consumes more than one topic (interactions + items
+ users): measured here, 1,000 events took 19.9 s with 1500 ms and 0.26 s with 50 ms. Kindling
makes it a setting (``KINDLING_FETCH_MAX_WAIT_MS``).
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

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
