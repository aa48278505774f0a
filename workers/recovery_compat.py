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

:func:`seek_before_resume` fixes the order of the last step of a recovery. faust-streaming 0.15.3's
``Recovery.on_recovery_completed`` resumes the source partitions (interactions, ...) and only
then awaits the seek to the group's committed offsets. When the changelogs had records to restore,
the fetcher is already running by then, so during that await it hands the agents records read
from wherever the client's position happened to be, not from the committed offset (seen: a
restarted worker processed interactions 108-111 of a partition whose committed offset was 43).
Those are users' *later* events: they move the user's offset watermark up, and after the seek
the events from the committed offset on arrive and look redelivered, so they are published but
never applied (``kindling chaos``: one event missing in the middle of users' support sets).
Faust's gap bookkeeping may also mark such skipped offsets committable (one pre-fix chaos run
committed an event that was never processed; not traced to this cause). The seek now completes
before the partitions resume.
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
_original_completed = faust_recovery.Recovery.on_recovery_completed
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


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """Faust's ``Recovery.on_recovery_completed`` (faust-streaming 0.15.3) with one change: the
    stream partitions are seeked to the committed offsets *before* they are resumed."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table]))
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id "
                         f"{self.app.consumer_generation_id} param {generation_id}")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    # Only now may the fetcher hand their records to the agents (Faust resumed them first).
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.log.dev("Resume stream partitions")
    self.app.flow_control.resume()
    consumer.resume_flow()
    # finally make sure the fetcher is running.
    await self.app._fetcher.maybe_start()  # noqa: SLF001 - as Faust does
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


def seek_before_resume() -> None:
    """Make every Faust recovery in this process seek the stream partitions to their committed
    offsets before it resumes them (idempotent)."""
    faust_recovery.Recovery.on_recovery_completed = _on_recovery_completed


def install(client: Mapping[str, Any], fetch_max_wait_ms: int = 500) -> None:
    """Make every Faust table recovery in this process read changelogs to their real end, and
    seek the stream partitions to their committed offsets before resuming them;
    ``client`` is the kafka-python connection config (``streams.topics.client_config``),
    ``fetch_max_wait_ms`` the worker's (``Settings.fetch_max_wait_ms``; at least 500)."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = max(500, int(fetch_max_wait_ms))
    _client.clear()
    _client.update(client)
    faust_recovery.Recovery._build_highwaters = _build_highwaters
    seek_before_resume()
