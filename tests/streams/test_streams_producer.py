"""EventProducer: a record the broker never acknowledged is an error, not a silent drop."""

from __future__ import annotations

from typing import Any

import kafka
import pytest
from kafka.future import Future

from engine.settings import Settings
from streams.errors import DeliveryError
from streams.kafka import EventProducer


class _FakeProducer:
    """kafka-python's producer as far as EventProducer uses it; every 3rd send fails."""

    instances: list[_FakeProducer] = []

    def __init__(self, **conf: Any) -> None:
        self.conf = conf
        self.futures: list[Future] = []
        _FakeProducer.instances.append(self)

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Future:
        future = Future()
        self.futures.append(future)
        return future

    def flush(self) -> None:
        for i, future in enumerate(self.futures):
            if not future.is_done:
                if i % 3 == 2:
                    future.failure(kafka.errors.KafkaTimeoutError("no ack"))
                else:
                    future.success(None)

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[_FakeProducer]:
    _FakeProducer.instances.clear()
    monkeypatch.setattr(kafka, "KafkaProducer", _FakeProducer)
    return _FakeProducer


def test_flush_raises_on_undelivered_records(fake: type[_FakeProducer]) -> None:
    producer = EventProducer(Settings())
    for i in range(2):
        producer.send_raw("t", None, b"%d" % i)
    producer.flush()  # both delivered
    producer.send_raw("t", None, b"2")
    with pytest.raises(DeliveryError, match="1 records were not delivered"):
        producer.flush()
    producer.flush()  # reported once


def test_idempotence_follows_the_settings(fake: type[_FakeProducer]) -> None:
    EventProducer(Settings())
    EventProducer(Settings(producer_idempotence=False))
    default, off = (p.conf for p in fake.instances)
    assert "enable_idempotence" not in default  # kafka-python's default: idempotent
    assert off["enable_idempotence"] is False
    assert off["max_in_flight_requests_per_connection"] == 1  # retries keep their order
