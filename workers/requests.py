"""``kindling request USER --domain D``: ask the running workers for a ranking and print it.

A request adds no event: the worker holding the user's support set ranks it as it is in the
requested domain (``Recommender.request``), which is how a user with only source-domain history
is served a target-domain list. The answer is the Recommendation whose ``source_event_id`` is the
request id; this helper subscribes to the recommendations topic *before* sending, so the answer
cannot slip past it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from engine.settings import Settings
from schemas import RecommendationRequest, encode
from streams.topics import client_config


def send_request(producer: Any, settings: Settings, request: RecommendationRequest) -> None:
    """Produce ``request`` to the requests topic keyed by user id (co-partitioned with the
    user's support set); ``producer`` is a :class:`streams.kafka.EventProducer`."""
    producer.send_raw(settings.topic("requests"), request.user_id.encode(), encode(request))


def request_once(settings: Settings, user_id: str, domain: str, timeout_s: float = 30.0
                 ) -> dict[str, Any]:
    """Send one request and wait for its answer (raises ``TimeoutError``)."""
    from kafka import KafkaConsumer

    from streams.kafka import EventProducer

    request = RecommendationRequest(f"req-{uuid.uuid4().hex}", user_id, domain)
    consumer = KafkaConsumer(settings.topic("recommendations"), **client_config(settings),
                             group_id=None, auto_offset_reset="latest", enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)  # join the partitions before anything is sent
        for tp in consumer.assignment():
            consumer.position(tp)  # pin "latest" now, not at the first fetch after the send
        with EventProducer(settings) as producer:
            send_request(producer, settings, request)
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    doc = json.loads(record.value)
                    if doc.get("source_event_id") == request.request_id:
                        doc["latency_ms"] = 1000.0 * (time.time() - request.requested_at)
                        return doc
    finally:
        consumer.close()
    raise TimeoutError(f"no answer to {request.request_id} within {timeout_s:.0f} s "
                       "(is a worker running? a bad request goes to the dead-letter topic)")


def run(settings: Settings, user_id: str, domain: str, timeout_s: float, as_json: bool) -> int:
    try:
        answer = request_once(settings, user_id, domain, timeout_s)
    except TimeoutError as exc:
        print(exc)
        return 1
    if as_json:
        print(json.dumps(answer))
        return 0
    print(f"user {answer['user_id']} · domain {answer.get('domain', '?')} · model "
          f"{answer['model_version']} · {answer['latency_ms']:.0f} ms")
    for rank, item in enumerate(answer["items"], 1):
        print(f"{rank:>3}. {item['item_id']:<30} {item['score']:>10.4f}  {item['why']}")
    return 0
