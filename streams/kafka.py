"""kafka-python sinks and sources: produce events, read recommendations and dead letters."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from engine.settings import Settings
from schemas import Interaction, Item, User, encode
from streams.errors import DeliveryError
from streams.topics import TopicNames, client_config

log = logging.getLogger(__name__)


class EventProducer:
    """Produces Kindling records keyed for co-partitioning (interactions/users by user id).

    :meth:`flush` raises :class:`~streams.errors.DeliveryError` if a record sent since the last
    flush was not acknowledged (kafka-python only reports that on the record's future, so a
    producer that only flushed dropped it silently). Idempotent unless
    ``settings.producer_idempotence`` is off; then one request in flight per connection keeps
    a retried batch in order (a retry may store a record twice: consumers de-duplicate)."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        from kafka import KafkaProducer

        self.topics = TopicNames.from_settings(settings)
        conf: dict[str, Any] = {"linger_ms": 5, "acks": "all", "retries": 5}
        if not settings.producer_idempotence:
            conf.update(enable_idempotence=False, max_in_flight_requests_per_connection=1)
        conf.update(overrides)
        self._producer = KafkaProducer(**client_config(settings), **conf)
        self.sent = 0
        self._failed: list[BaseException] = []

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        future = self._producer.send(topic, key=key, value=value)
        future.add_errback(self._failed.append)
        self.sent += 1

    def interaction(self, event: Interaction) -> None:
        self.send_raw(self.topics.interactions, event.user_id.encode(), encode(event))

    def item(self, item: Item) -> None:
        self.send_raw(self.topics.items, item.item_id.encode(), encode(item))

    def user(self, user: User) -> None:
        self.send_raw(self.topics.users, user.user_id.encode(), encode(user))

    def interactions(self, events: Iterable[Interaction]) -> int:
        n = 0
        for event in events:
            self.interaction(event)
            n += 1
        return n

    def flush(self) -> None:
        self._producer.flush()
        self._raise_failures()

    def _raise_failures(self) -> None:
        failed, self._failed = self._failed, []
        if failed:
            raise DeliveryError(f"{len(failed)} records were not delivered: {failed[0]!r}")

    def close(self) -> None:
        try:
            self._producer.flush()
        finally:
            self._producer.close()
        self._raise_failures()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def consume(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = True,
    idle_timeout_s: float = 5.0,
    max_messages: int | None = None,
    deadline_s: float | None = None,
) -> Iterator[tuple[bytes | None, bytes]]:
    """Yield ``(key, value)`` from ``topic`` (all partitions, no consumer group) until
    ``idle_timeout_s`` passes without a message, ``max_messages`` arrived or ``deadline_s``."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        **client_config(settings),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(idle_timeout_s * 1000),
        # a broker that answers fetches slowly (the embedded one on S3) needs the worker's wait
        fetch_max_wait_ms=max(500, settings.fetch_max_wait_ms),
    )
    start = time.monotonic()
    n = 0
    try:
        while True:
            got = False
            for message in consumer:
                got = True
                yield message.key, message.value
                n += 1
                if max_messages is not None and n >= max_messages:
                    return
                if deadline_s is not None and time.monotonic() - start > deadline_s:
                    return
            if not got or deadline_s is None or time.monotonic() - start > deadline_s:
                return
    finally:
        consumer.close()


def consume_json(settings: Settings, topic: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    for _, value in consume(settings, topic, **kwargs):
        yield json.loads(value)
