"""A real worker whose consumer fetches from past the group's committed offset still processes
every event from the committed offset on, and commits past none it did not process
(workers/gap_guard.py).

The group's offsets are committed at ``COMMITTED`` for every partition before the worker starts;
``skipping_worker.py`` then moves the client's fetch position of partition 0 five records and of
partition 1 one record past it, right after Faust's seek to the committed offsets (where a
restarted worker's position was found in ``kindling chaos``: 218 events committed unprocessed).
Faust alone hands the agents the records from the moved position on, and counts the skipped
offsets committable (partition 0: a gap; partition 1: its off-by-one after a seek)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.chaos import _committed, _end_offsets, _positions, chaos_settings, stream_of
from ops.process import WorkerProcess
from streams.kafka import EventProducer
from streams.topics import client_config, ensure_topics

pytestmark = pytest.mark.integration

COMMITTED = 12
SKIPS = {0: 5, 1: 1}  # partition -> records the fetch position is moved past COMMITTED


class _SkippingWorker(WorkerProcess):
    def __init__(self, settings: Settings, log_path: Path, skips: str) -> None:
        super().__init__(settings, log_path, module=("skipping_worker",))
        self.skips = skips

    def env(self) -> dict[str, str]:
        env = super().env()
        here = str(Path(__file__).parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        env["SKIPPING_WORKER"] = self.skips
        return env


def _commit(settings: Settings, topic: str, offset: int) -> None:
    """Commit ``offset`` on every partition of ``topic`` for the worker's group."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(**client_config(settings), group_id=settings.app_id,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp in tps})
    finally:
        consumer.close()


def test_a_consumer_fetching_past_its_committed_offset_loses_nothing(
        broker, tmp_path: Path, read_until, wait_for) -> None:
    settings = chaos_settings(broker.url, tmp_path)  # fresh topics and group, untrained model
    topic = settings.topic("interactions")
    items, events = stream_of(400, 40, seed=2)
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        for item in items:
            producer.item(item)
        for event in events:
            producer.interaction(event)
        producer.flush()
    stored, copies = _positions(settings, topic)
    assert len(stored) == len(events) and copies == 0
    ends = _end_offsets(stored)
    assert set(ends) == set(range(settings.partitions)), ends
    assert min(ends.values()) > COMMITTED + max(SKIPS.values()), ends
    _commit(settings, topic, COMMITTED)
    assert _committed(settings, topic) == {p: COMMITTED for p in ends}

    spec = ",".join(f"{topic}:{p}:{COMMITTED}:{skip}" for p, skip in SKIPS.items())
    worker = _SkippingWorker(settings, tmp_path / "w.log", spec).start()
    wanted = {e for e, (_, offset) in stored.items() if offset >= COMMITTED}
    try:
        recs = read_until(
            settings, settings.topic("recommendations"),
            lambda got: wanted <= {json.loads(v)["source_event_id"] for _, v in got}, 90)
        wait_for(lambda: _committed(settings, topic) == ends, 30, f"commits up to {ends}")
    finally:
        worker.stop()
    log = worker.tail(10_000_000)
    for p, skip in SKIPS.items():  # the scenario happened
        assert (f"skipping_worker: {topic}[{p}] committed {COMMITTED}, now fetched from "
                f"{COMMITTED + skip}") in log, log[-3000:]
    answered = {json.loads(v)["source_event_id"] for _, v in recs}
    missing = sorted(stored[e] for e in wanted - answered)  # (partition, offset)
    committed = _committed(settings, topic)
    past = [(p, o) for p, o in missing if o < committed.get(p, 0)]
    assert (missing, past) == ([], []), f"never processed: {missing}; committed past: {past}"
    # the guard saw each skip and rewound (text log: Faust's handler)
    for p, skip in SKIPS.items():
        assert (f"{topic}[{p}]: expected offset {COMMITTED} next, the fetch returned "
                f"{COMMITTED + skip} ({skip} records skipped") in log, log[-3000:]
    assert "accepting the gap" not in log
    assert "Traceback" not in log, log[-3000:]
