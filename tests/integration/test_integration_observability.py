"""A real worker serves /metrics and /health, and the figures move with the traffic."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from evaluation.synthetic import generate
from ops.process import WorkerProcess
from streams.broker import embedded_worker_settings
from streams.kafka import EventProducer, consume
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(port: int) -> dict[str, float]:
    """``{"name{label=value}": value}`` for every sample."""
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _wait_healthy(port: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = _get(f"http://127.0.0.1:{port}/health")
        doc = json.loads(body)
        if status == 200:
            return doc
        assert status == 503 and doc["ready"] is False and doc["not_ready_because"]
        assert time.monotonic() < deadline, f"not healthy: {doc}"
        time.sleep(0.5)


def test_metrics_and_health_move_with_traffic(broker, tmp_path: Path) -> None:
    port = _free_port()
    settings = embedded_worker_settings(
        broker.url, data_dir=str(tmp_path / "data"), partitions=4, app_id="it-obs",
        topic_prefix=f"it-obs-{uuid.uuid4().hex[:6]}.",
        metrics_port=port, metrics_host="127.0.0.1", log_format="json", torch_threads=1,
    )
    data = generate(n_users=40, n_items=80, events_per_user=(5, 8), seed=5)
    events = data.events[:200]
    ensure_topics(settings)
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log_path).start()
    try:
        health = _wait_healthy(port)
        assert health["assigned_partitions"] == [0, 1, 2, 3]
        assert health["model_version"] == "v0-untrained"
        assert health["last_event_age_s"] is None  # nothing consumed yet
        before = _scrape(port)
        assert before["kindling_events_total"] == 0
        assert before["kindling_model_info{version=v0-untrained}"] == 1
        assert before["kindling_assigned_partitions"] == 4

        with EventProducer(settings) as producer:
            for item in data.items:
                producer.item(item)
            producer.flush()
            producer.interactions(events)
            for i in range(3):
                producer.send_raw(settings.topic("interactions"), f"bad-{i}".encode(), b"{oops")
        recs = list(consume(settings, settings.topic("recommendations"), idle_timeout_s=10,
                            max_messages=len(events), deadline_s=90))
        assert len(recs) == len(events)
        deadline = time.monotonic() + 30
        while True:  # counters are bumped after the batch's sends are delivered
            after = _scrape(port)
            lag = {k: v for k, v in after.items() if k.startswith("kindling_consumer_lag")}
            if (after["kindling_events_total"] == len(events) + 3 and len(lag) == 4
                    and sum(lag.values()) == 0) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        health = _wait_healthy(port)
    finally:
        worker.stop()

    assert after["kindling_events_total"] == len(events) + 3
    assert after["kindling_dead_letters_total"] == 3
    assert after["kindling_recommendations_total"] == len(events)
    assert after["kindling_support_size_count"] == len(events)
    assert after["kindling_batch_seconds_count"] >= 1
    assert after["kindling_rank_seconds_count"] >= 1
    assert after["kindling_batch_seconds_sum"] > 0
    assert after["kindling_batch_events_sum"] == len(events) + 3
    # every partition is listed and the worker has caught up (offsets committed)
    assert sorted(lag) == [f"kindling_consumer_lag{{partition={p}}}" for p in range(4)], lag
    assert sum(lag.values()) == 0, lag
    assert 0 <= after["kindling_last_event_age_seconds"] < 60
    assert health["last_event_age_s"] is not None and health["last_event_age_s"] < 60
    assert health["consumer_lag"] == {str(p): 0 for p in range(4)}

    # JSON log lines carry the dead letter's context as fields
    lines = [json.loads(line) for line in log_path.read_text().splitlines()
             if line.startswith("{")]
    letters = [rec for rec in lines if rec["msg"].startswith("dead letter")]
    assert len(letters) == 3
    for rec in letters:
        assert rec["level"] == "warning" and rec["user"].startswith("bad-")
        assert rec["topic"] == settings.topic("interactions")
        assert isinstance(rec["partition"], int) and isinstance(rec["offset"], int)
        assert "not JSON" in rec["reason"]
