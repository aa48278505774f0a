"""/metrics and /health without a broker: lag arithmetic, 200 vs 503, JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from faust.types import TP

from workers.logs import JsonFormatter, logging_config
from workers.metrics import Metrics
from workers.web import HealthState, WebServer, consumer_lag, event_age


class FakeConsumer:
    def __init__(self, assigned: set[TP], high: dict[TP, int | None], committed: dict[TP, int]):
        self._assigned, self._high, self._committed_offset = assigned, high, committed

    def assignment(self) -> set[TP]:
        return self._assigned

    def highwater(self, tp: TP) -> int | None:
        return self._high[tp]


def test_lag_is_highwater_minus_committed_for_assigned_partitions_of_the_topic() -> None:
    tps = [TP("k.interactions", p) for p in range(3)] + [TP("k.items", 0)]
    consumer = FakeConsumer(
        set(tps), {tps[0]: 120, tps[1]: 50, tps[2]: None, tps[3]: 9},
        {tps[0]: 100, tps[1]: 50},
    )
    partitions, lag = consumer_lag(SimpleNamespace(_consumer=consumer), "k.interactions")
    assert partitions == [0, 1, 2]
    assert lag == {0: 20, 1: 0}  # partition 2: no highwater yet, so no figure
    consumer._committed_offset = {}
    assert consumer_lag(SimpleNamespace(_consumer=consumer), "k.interactions")[1][0] == 120
    assert consumer_lag(SimpleNamespace(_consumer=None), "k.interactions") == ([], {})


def test_metrics_drop_revoked_partitions() -> None:
    m = Metrics()
    m.observe_health([0, 1], {0: 5, 1: 7}, 1.5)
    m.observe_health([1], {1: 2}, None)
    text = _metrics_text(m)
    assert 'kindling_consumer_lag{partition="1"} 2.0' in text
    assert 'partition="0"' not in text
    assert "kindling_assigned_partitions 1.0" in text
    assert "kindling_last_event_age_seconds -1.0" in text


def _metrics_text(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def _serve(state: HealthState, metrics: Metrics):
    server = WebServer(metrics, lambda: state, "127.0.0.1", 0)

    async def go():
        async with TestClient(TestServer(server.application())) as client:
            health = await client.get("/health")
            body = await health.json()
            scraped = await client.get("/metrics")
            return health.status, body, await scraped.text()

    return asyncio.run(go())


def test_health_is_503_until_ready_then_200() -> None:
    metrics = Metrics()
    metrics.events.inc(7)
    state = HealthState(False, ["table recovery in progress"], "v3", [], None, {})
    status, body, _ = _serve(state, metrics)
    assert status == 503 and body["ready"] is False
    assert body["not_ready_because"] == ["table recovery in progress"]
    state = HealthState(True, [], "v3", [0, 2], 0.25, {0: 4, 2: 0})
    status, body, text = _serve(state, metrics)
    assert status == 200 and body["model_version"] == "v3"
    assert body["assigned_partitions"] == [0, 2] and body["last_event_age_s"] == 0.25
    assert body["consumer_lag"] == {"0": 4, "2": 0}
    assert "kindling_events_total 7.0" in text
    assert 'kindling_consumer_lag{partition="0"} 4.0' in text


def test_event_age() -> None:
    assert event_age(None) is None
    assert 0 <= event_age(__import__("time").time() - 2) < 5


def test_json_log_lines_carry_context() -> None:
    record = logging.LogRecord("kindling.worker", logging.WARNING, __file__, 1,
                               "dead letter: %s", ("bad",), None)
    record.partition, record.offset, record.user = 3, 41, "u\u202e1"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "dead letter: bad" and doc["level"] == "warning"
    assert doc["partition"] == 3 and doc["offset"] == 41 and doc["user"] == "u\u202e1"
    assert "event_id" not in doc


def test_log_format_setting() -> None:
    assert logging_config("text", "info") is None
    assert logging_config("json", "debug")["root"]["level"] == "DEBUG"
    with pytest.raises(ValueError, match="log format"):
        logging_config("xml", "info")


def test_online_hit_counters_add_up_per_bucket_and_list() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from engine.online import BUCKETS, HitCounts

    metrics = Metrics()

    def samples() -> dict[tuple[str, tuple], float]:
        text = generate_latest(metrics.registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name.startswith("kindling_online") and s.name.endswith("_total")}

    before = samples()  # every series exists, at 0, before the first event
    assert len(before) == len(BUCKETS) * 3 + 1 and not any(before.values())
    counts = HitCounts()
    counts.events[:] = [4, 3, 0, 0, 1]
    counts.hits[0] = [2, 1, 0, 0, 1]
    counts.hits[1] = [1, 0, 0, 0, 0]
    counts.unscored = 2
    metrics.online(counts)
    metrics.online(counts)
    after = samples()
    assert after[("kindling_online_events_total", (("bucket", "0"),))] == 8
    assert after[("kindling_online_events_total", (("bucket", ">10"),))] == 2
    assert after[("kindling_online_hits_total", (("bucket", "0"), ("list", "model")))] == 4
    assert after[("kindling_online_hits_total", (("bucket", "0"), ("list", "popularity")))] == 2
    assert after[("kindling_online_hits_total", (("bucket", "1-2"), ("list", "model")))] == 2
    assert after[("kindling_online_unscored_events_total", ())] == 4
    # what the demo reads back from /metrics
    from workers.metrics import read_online

    read, lines = read_online(generate_latest(metrics.registry).decode())
    assert read.events.tolist() == (2 * counts.events).tolist()
    assert read.hits.tolist() == (2 * counts.hits).tolist() and read.unscored == 4
    assert len(lines) == len(before) and all("_created" not in line for line in lines)
