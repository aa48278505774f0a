"""Explore slots through a real worker: tagged on the recommendations topic, statistics in the
RocksDB tables' changelogs, identical to what the in-process path computes."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from engine.exploration import UserStats, decode_item_stats, item_key, stats_partition
from evaluation.synthetic import generate
from schemas import Interaction
from streams.broker import embedded_worker_settings
from streams.kafka import EventProducer

pytestmark = pytest.mark.integration


def test_explore_slots_and_their_statistics_flow_through_the_worker(
    broker, tmp_path: Path, read_until, fed_worker
):
    settings = embedded_worker_settings(
        broker.url, data_dir=str(tmp_path / "data"), partitions=4, app_id="it-bandits",
        topic_prefix=f"it-bandits-{uuid.uuid4().hex[:6]}.",
        policy="thompson", explore_slots=3, explore_epsilon=1.0, explore_decay=20.0,
    )
    data = generate(n_users=60, n_items=120, events_per_user=(10, 12), seed=5)
    per: dict[str, list[Interaction]] = defaultdict(list)
    for e in data.events:
        if len(per[e.user_id]) < 8:
            per[e.user_id].append(e)
    users = sorted(per)[:30]
    events = sorted((e for u in users for e in per[u]), key=lambda e: e.ts)
    with fed_worker(settings, data.items, events) as worker:
        with EventProducer(settings) as producer:
            # An out-of-range rating sent raw: it must reach the DLQ, not the statistics.
            bad = {"v": 1, "event_id": "bad-1", "user_id": users[0], "item_id": events[0].item_id,
                   "kind": "rate", "value": 9.0}
            producer.send_raw(settings.topic("interactions"), users[0].encode(),
                              json.dumps(bad).encode())
        wanted = {e.event_id for e in events}
        recs = [json.loads(v) for _, v in read_until(
            settings, settings.topic("recommendations"),
            lambda got: len(got) >= len(wanted)
            and wanted <= {json.loads(v)["source_event_id"] for _, v in got}, 120)]
        dead = [json.loads(v) for _, v in read_until(
            settings, settings.topic("dlq"), lambda got: len(got) >= 1, 60)]
    assert "Traceback" not in worker.tail(200000), worker.tail()
    assert {r["source_event_id"] for r in recs} == {e.event_id for e in events}
    slots = [i for r in recs for i in r["items"][-3:]]
    explored = [i for i in slots if i["why"] == "explore"]
    assert len(explored) > len(slots) // 4, "explore_epsilon=1: most tail slots should explore"
    assert all(0.0 < i["propensity"] < 1.0 for i in explored)
    assert all(i["propensity"] == 1.0 for r in recs for i in r["items"][:-3])
    assert len(dead) == 1 and "outside" in dead[0]["reason"]

    # The tables' changelogs (what RocksDB restores from) hold exactly the statistics the
    # events imply, keyed per partition; the bad rating left no trace.
    expected: dict[bytes, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        key = item_key(stats_partition(e.user_id, settings.partitions), e.item_id)
        expected[key][0] += 1
        expected[key][1] += e.reward()
    items: dict[bytes, bytes] = {}
    for key, value in read_until(settings, f"{settings.app_id}-bandit_items-changelog",
                                 lambda got: {k for k, _ in got} >= set(expected), 30):
        items[key] = value
    assert set(items) == set(expected)
    for key, (n, total) in expected.items():
        got_n, got_total, _ = decode_item_stats(items[key])
        assert got_n == n and got_total == pytest.approx(total), key
    user_stats: dict[bytes, bytes] = {}
    for key, value in read_until(settings, f"{settings.app_id}-bandit_users-changelog",
                                 lambda got: {k for k, _ in got} >= {u.encode() for u in users},
                                 30):
        user_stats[key] = value
    shown = defaultdict(int)
    for r in recs:
        shown[r["user_id"]] += sum(i["why"] == "explore" for i in r["items"])
    for user in users:
        stats = UserStats.from_bytes(user_stats[user.encode()])
        assert stats.n == len(per[user])
        assert stats.explored == shown[user]
