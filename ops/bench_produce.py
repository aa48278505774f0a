"""``kindling bench produce``: what a micro-batch's answers cost to send, per record.

Two ways to send the same records through one Faust app's producer, alternating micro-batch by
micro-batch so that a machine's drift hits both alike, each micro-batch awaited before the next
(as the serving agent awaits its deliveries before acking):

- ``per_record``: Faust's ``Producer.send`` once per record (the serving worker before
  ``streams.batches``);
- ``batched``: :class:`streams.batches.ProducerBatches`, one producer batch per partition.

Reports CPU microseconds per record (this process, all threads) and the wall time from a
micro-batch's first send to its last delivery.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from engine.settings import Settings

#: A recommendation-sized record (10 items with scores and reasons, ~330 bytes).
_VALUE = (b'{"user_id":"u123","items":[' + b'["i1234",0.123456,"exploit"],' * 9
          + b'["i1",0.1,"x"]],"model_version":"v1","event_id":"e1","produced_at":1.0}')
MODES = ("per_record", "batched")


def bench_produce(settings: Settings, *, batches: int = 150, batch_size: int = 200,
                  partitions: int = 4) -> dict[str, Any]:
    """Send ``batches`` micro-batches of ``batch_size`` keyed records each way (alternating, the
    order flipped every micro-batch) to a ``partitions``-partition topic of an embedded
    broker."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from streams.broker import EmbeddedBroker
    from streams.kafka import consume
    from streams.topics import client_config
    from workers.cli import use_event_loop

    use_event_loop(settings.event_loop)
    topic = f"kindling-bench-produce-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker:
        s = settings.replace(broker=broker.url)
        admin = KafkaAdminClient(**client_config(s))
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            admin.close()
        result = asyncio.run(_run(s, topic, batches, batch_size))
        # read back, not end offsets: Tansu's stop inside a partition's last batch (broker.md)
        result["records_in_topic"] = sum(1 for _ in consume(s, topic, idle_timeout_s=2.0))
    # both ways, every micro-batch, plus one 10-record warm-up each
    result["records_sent"] = 2 * (batches * batch_size + 10)
    return {"batches": batches, "batch_size": batch_size, "partitions": partitions,
            "record_bytes": len(_VALUE), "linger_ms": settings.producer_linger_ms,
            "event_loop": settings.event_loop, **result}


async def _run(settings: Settings, topic: str, batches: int, batch_size: int) -> dict[str, Any]:
    import faust

    from streams.batches import ProducerBatches

    app = faust.App(f"kindling-bench-produce-{uuid.uuid4().hex[:6]}", broker=settings.broker,
                    producer_acks=-1, producer_linger_ms=settings.producer_linger_ms,
                    producer_max_batch_size=settings.producer_max_batch_size)
    producer = app.producer
    await producer.start()
    try:
        keys = [f"user{i}".encode() for i in range(5000)]

        async def per_record(chunk: list[bytes]) -> None:
            sent = [await producer.send(topic, key, _VALUE, None, None, None) for key in chunk]
            await asyncio.gather(*sent)

        async def batched(chunk: list[bytes]) -> None:
            out = ProducerBatches(producer._ensure_producer())  # noqa: SLF001
            for key in chunk:
                out.add(topic, key, _VALUE)
            await asyncio.gather(*await out.send())

        ways: dict[str, Callable[[list[bytes]], Awaitable[None]]] = {
            "per_record": per_record, "batched": batched}
        for way in ways.values():  # connections, metadata
            await way(keys[:10])
        cpu = dict.fromkeys(MODES, 0.0)
        wall = dict.fromkeys(MODES, 0.0)
        for b in range(batches):
            start = (b * batch_size) % (len(keys) - batch_size)
            chunk = keys[start:start + batch_size]
            for mode in MODES if b % 2 == 0 else MODES[::-1]:
                c0, w0 = time.process_time(), time.perf_counter()
                await ways[mode](chunk)
                cpu[mode] += time.process_time() - c0
                wall[mode] += time.perf_counter() - w0
    finally:
        await producer.stop()
    records = batches * batch_size
    out: dict[str, Any] = {}
    for mode in MODES:
        out[f"{mode}_cpu_us_per_record"] = cpu[mode] * 1e6 / records
        out[f"{mode}_wall_ms_per_batch"] = wall[mode] * 1e3 / batches
    out["cpu_ratio_per_record_over_batched"] = cpu["per_record"] / cpu["batched"]
    out["wall_ratio_per_record_over_batched"] = wall["per_record"] / wall["batched"]
    return out

