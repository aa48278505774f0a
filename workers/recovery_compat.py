"""Table recovery that reads a changelog to its real end, whatever the broker says the end is.

Faust restores a table partition by reading its changelog up to the partition's end offset as
ListOffsets reports it. The embedded broker (Tansu) reports the end as the *last record batch's
base offset + 1*: with 13 records sent in batches of 10 and 3 it says 11. A worker that takes
over a partition (scale-out, or any rebalance) then restores the table without the records of
that last batch but one: a user's profile or newest support-set record is silently missing, and
the user's later recommendations differ (seen with two workers in
``tests/integration/test_integration_scaleout.py``: ~1 run in 4 gave one user no profile).

After Faust has asked for the end offsets, :func:`true_end_offsets` fetches each changelog
partition from that offset on and moves the end past any record found there. On a broker that
reports ends correctly the fetch returns nothing and nothing changes (cost: one short fetch per
changelog partition per rebalance).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from faust.tables import recovery as faust_recovery

log = logging.getLogger("kindling.recovery")

_original = faust_recovery.Recovery._build_highwaters
_client: dict[str, Any] = {}
_fetch_max_wait_ms = 500


def true_end_offsets(client: Mapping[str, Any], reported: Mapping[tuple[str, int], int],
                     quiet_s: float = 0.3, deadline_s: float = 10.0,
                     fetch_max_wait_ms: int = 500) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> end offset``: ``reported`` moved past any record found at or
    beyond it (kafka-python, no consumer group). The search ends ``quiet_s`` after the last
    record found, and not before every partition has had a fetch answered: on a broker whose
    fetches are slow (Tansu on S3 lists a partition's objects per fetch), a quiet period alone
    ended before the first answer and recovered nothing past the reported end."""
    from kafka import KafkaConsumer, TopicPartition

    ends = dict(reported)
    if not reported:
        return ends
    consumer = KafkaConsumer(**client, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=fetch_max_wait_ms)
    try:
        tps = [TopicPartition(t, p) for t, p in reported]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(0, reported[(tp.topic, tp.partition)]))
        started = last = time.monotonic()
        while time.monotonic() - started < deadline_s:
            answered = all(consumer.highwater(tp) is not None for tp in tps)
            if answered and time.monotonic() - last >= quiet_s:
                break
            batch = consumer.poll(timeout_ms=100)
            for tp, records in batch.items():
                if records:
                    key = (tp.topic, tp.partition)
                    ends[key] = max(ends[key], records[-1].offset + 1)
                    last = time.monotonic()
    finally:
        consumer.close()
    return ends


async def _build_highwaters(self: Any, consumer: Any, tps: Any, destination: Any,
                            title: str) -> None:
    await _original(self, consumer, tps, destination, title)
    if not tps or not _client:
        return
    # Faust keeps "end offset - 1" (the last offset) per partition.
    reported = {(tp.topic, tp.partition): destination[tp] + 1 for tp in tps}
    try:
        ends = await asyncio.get_running_loop().run_in_executor(
            None, lambda: true_end_offsets(dict(_client), reported,
                                           deadline_s=max(10.0, 10 * _fetch_max_wait_ms / 1000),
                                           fetch_max_wait_ms=_fetch_max_wait_ms))
    except Exception:  # noqa: BLE001 - keep Faust's figures rather than fail recovery
        log.exception("could not check the %s changelog end offsets", title)
        return
    for tp in tps:
        end = ends[(tp.topic, tp.partition)]
        if end - 1 > destination[tp]:
            log.warning("%s changelog %s[%d]: the broker reported end offset %d but records "
                        "exist up to offset %d; recovering them too", title, tp.topic,
                        tp.partition, destination[tp] + 1, end - 1,
                        extra={"topic": tp.topic, "partition": tp.partition})
            destination[tp] = end - 1


def install(client: Mapping[str, Any], fetch_max_wait_ms: int = 500) -> None:
    """Make every Faust table recovery in this process read changelogs to their real end;
    ``client`` is the kafka-python connection config (``streams.topics.client_config``),
    ``fetch_max_wait_ms`` the worker's (``Settings.fetch_max_wait_ms``; at least 500)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = max(500, int(fetch_max_wait_ms))
    _client.clear()
    _client.update(client)
    faust_recovery.Recovery._build_highwaters = _build_highwaters
