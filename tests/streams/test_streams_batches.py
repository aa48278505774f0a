"""streams.batches.ProducerBatches: a micro-batch's records as one producer batch per partition,
keyed records on the partition ``send`` would pick, order kept, offsets reported per batch."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from streams.batches import Delivered, ProducerBatches


def test_one_batch_per_partition_in_order(fake_aio_producer: Any) -> None:
    producer = fake_aio_producer(partitions=3)
    keys = [f"user{i}".encode() for i in range(40)]

    async def run() -> list[Delivered]:
        out = ProducerBatches(producer)
        for i, key in enumerate(keys):
            out.add("recs", key, b"v%d" % i)
        out.add("changelog", b"alice", b"a", partition=2)  # an explicit partition is kept
        assert len(out) == 41
        sent = await out.send()
        assert len(out) == 0  # cleared: a second send sends nothing
        assert await out.send() == []
        return list(await asyncio.gather(*sent))

    delivered = asyncio.run(run())
    by_partition = {(t, p): recs for t, p, recs in producer.sent}
    assert len(producer.sent) == len(by_partition)  # one batch per topic partition
    for partition in range(3):
        expected = [(k, b"v%d" % i) for i, k in enumerate(keys)
                    if producer._partition("recs", None, None, None, k, None) == partition]
        assert by_partition.get(("recs", partition), []) == expected
    assert by_partition[("changelog", 2)] == [(b"alice", b"a")]
    assert sorted((d.topic, d.partition, d.first, d.count) for d in delivered) == sorted(
        (t, p, 0, len(recs)) for t, p, recs in producer.sent)


def test_a_full_batch_is_sent_and_the_next_one_started(fake_aio_producer: Any) -> None:
    producer = fake_aio_producer(partitions=1, batch_records=4)

    async def run() -> list[Delivered]:
        out = ProducerBatches(producer)
        for i in range(10):
            out.add("recs", b"k", b"%d" % i)
        return list(await asyncio.gather(*await out.send()))

    delivered = asyncio.run(run())
    assert [[v for _, v in recs] for _, _, recs in producer.sent] == [
        [b"0", b"1", b"2", b"3"], [b"4", b"5", b"6", b"7"], [b"8", b"9"]]
    assert [(d.first, d.count, d.last) for d in delivered] == [(0, 4, 3), (4, 4, 7), (8, 2, 9)]


@pytest.mark.integration
def test_through_a_real_broker_keys_land_where_send_puts_them(broker: Any) -> None:
    """Against the embedded broker: each key's records are on the partition that
    ``AIOKafkaProducer.send`` gives the same key, in order, at the offsets reported; a small
    ``max_batch_size`` splits a partition's records over several batches."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"batches-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    keys = [f"user{i % 25}".encode() for i in range(300)]

    async def run() -> tuple[dict[int, list[tuple[bytes, bytes, int]]], list[Delivered],
                             dict[bytes, int]]:
        probe = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=-1)
        await probe.start()
        try:
            reference = {}  # where send() puts each key
            for key in sorted(set(keys)):
                meta = await (await probe.send(topic, b"probe", key=key))
                reference[key] = meta.partition
        finally:
            await probe.stop()
        # A 2 s linger: a batch handed over complete must not wait for it.
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=-1,
                                    enable_idempotence=False, max_batch_size=2048,
                                    linger_ms=2000)
        await producer.start()
        try:
            out = ProducerBatches(producer)
            for i, key in enumerate(keys):
                out.add(topic, key, b"%04d" % i + b"x" * 60)
            started = time.monotonic()
            delivered = list(await asyncio.gather(*await out.send()))
            assert time.monotonic() - started < 1.5, "the batches lingered"
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        stored: dict[int, list[tuple[bytes, bytes, int]]] = {}
        try:
            tps = [TopicPartition(topic, p) for p in range(4)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen, want = 0, len(keys) + len(reference)  # the probes are in the topic too
            while seen < want:
                batch = await consumer.getmany(timeout_ms=2000)
                assert batch, "records missing from the broker"
                for tp, records in batch.items():
                    seen += len(records)
                    stored.setdefault(tp.partition, []).extend(
                        (r.key, r.value, r.offset) for r in records if r.value != b"probe")
        finally:
            await consumer.stop()
        return stored, delivered, reference

    stored, delivered, reference = asyncio.run(run())
    for partition, records in stored.items():
        assert all(reference[key] == partition for key, _, _ in records)
        sequence = [int(value[:4]) for _, value, _ in records]
        assert sequence == sorted(sequence)  # order kept within a partition
    assert sum(map(len, stored.values())) == len(keys)
    assert len(delivered) > 4  # 2 KiB batches: several per partition
    for d in delivered:
        offsets = [o for _, _, o in stored[d.partition] if d.first <= o <= d.last]
        assert offsets == list(range(d.first, d.last + 1))
    assert sum(d.count for d in delivered) == len(keys)
