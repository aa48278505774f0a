"""The bare aiokafka echo: the Python Kafka ceiling that ``kindling bench kafka`` sets beside Faust.

A consumer-group member of the interactions topic with no Faust, no table and no model: per fetch
(``getmany``, up to 2,000 records) it decodes and validates each event with the worker's wire
decoder, sends one empty recommendation per event (what the echo pipeline answers) or a dead
letter, waits for the fetch's sends, then commits its offsets. Same event loop, codec, producer
acks, linger and batch size as the worker. Run as a child process with the worker's
``KINDLING_*`` environment: ``python -m ops.bare_echo``.
"""

from __future__ import annotations

import asyncio
import signal
import time

from engine.settings import Settings
from schemas import (
    DeadLetter,
    Recommendation,
    SchemaError,
    decode_interaction,
    encode,
)
from schemas.wire import RatingScale
from streams.topics import TopicNames, bootstrap_servers

READY = "bare echo: ready"
MAX_RECORDS = 2000


async def serve(settings: Settings, stop: asyncio.Event) -> int:
    """Echo until ``stop`` is set; returns the number of events answered."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topics = TopicNames.from_settings(settings)
    scale = RatingScale(settings.rating_low, settings.rating_high)
    servers = bootstrap_servers(settings)
    consumer = AIOKafkaConsumer(
        topics.interactions, bootstrap_servers=servers, group_id=settings.app_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        max_poll_interval_ms=int(settings.max_poll_interval_s * 1000),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, acks="all", linger_ms=settings.producer_linger_ms,
        max_batch_size=settings.producer_max_batch_size,
    )
    await producer.start()
    await consumer.start()
    answered = 0
    announced = False
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
            if not announced and consumer.assignment():
                print(READY, flush=True)
                announced = True
            sends = []
            for records in fetched.values():
                for record in records:
                    try:
                        event = decode_interaction(record.value, scale)
                    except SchemaError as exc:
                        letter = DeadLetter(exc.describe(), record.topic, record.partition,
                                            record.offset, record.value or b"", record.key)
                        sends.append(await producer.send(topics.dlq, encode(letter),
                                                         key=record.key))
                        continue
                    rec = Recommendation(event.user_id, (), "echo", event.event_id, time.time())
                    sends.append(await producer.send(topics.recommendations, encode(rec),
                                                     key=record.key))
            if sends:
                await asyncio.gather(*sends)  # delivered before the offsets are committed
                await consumer.commit()
                answered += len(sends)
    finally:
        await consumer.stop()
        await producer.stop()
    return answered


def main() -> int:
    from workers.cli import use_event_loop

    settings = Settings.from_env()
    use_event_loop(settings.event_loop)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    answered = loop.run_until_complete(serve(settings, stop))
    print(f"bare echo: stopped after {answered} events", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
