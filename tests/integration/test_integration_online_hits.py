"""Online hit@K in a real worker's /metrics equals an in-process replay of the same events.

New users' events stream through the embedded broker and a worker serving a trained model; the
worker counts, per support-size bucket, how often the item touched was in the list it last
published for the user, and in popularity's list. The same events replayed in process through
``Recommender.apply``/``rank``, one at a time, with the plain reference of tests/conftest.py, must
give exactly the same counts (the worker micro-batches, so a user's consecutive events often
share a batch).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.online import BUCKETS
from engine.recommender import Recommender
from engine.trainer import save_bundle, train_bundle
from evaluation.synthetic import generate
from ops.process import WorkerProcess
from schemas import User
from streams.broker import embedded_worker_settings, free_port
from streams.kafka import EventProducer, consume
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


def online_lines(port: int) -> tuple[dict[str, tuple[int, int, int]], int, list[str], int]:
    """``{bucket: (events, model hits, popularity hits)}``, unscored events, the raw lines and
    the number of micro-batches."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts = {b: [0, 0, 0] for b in BUCKETS}
    unscored = batches = 0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kindling_online_events_total":
                counts[s.labels["bucket"]][0] = int(s.value)
            elif s.name == "kindling_online_hits_total":
                counts[s.labels["bucket"]][1 if s.labels["list"] == "model" else 2] = int(s.value)
            elif s.name == "kindling_online_unscored_events_total":
                unscored = int(s.value)
            elif s.name == "kindling_batch_events_count":
                batches = int(s.value)
    lines = [ln for ln in text.splitlines() if ln.startswith("kindling_online")]
    return {b: tuple(v) for b, v in counts.items()}, unscored, lines, batches


def test_worker_online_hits_equal_the_replay(broker, tmp_path: Path, online_reference) -> None:
    data = generate(n_users=120, n_items=150, events_per_user=(3, 25), seed=11)
    new_users = {u.user_id for u in data.users if int(u.user_id[1:]) % 3 == 0}
    warm = [e for e in data.events if e.user_id not in new_users]
    stream = sorted((e for e in data.events if e.user_id in new_users),
                    key=lambda e: (e.ts, e.event_id))
    port = free_port()
    run = uuid.uuid4().hex[:6]
    settings = embedded_worker_settings(
        broker.url, data_dir=str(tmp_path / "data"), partitions=2, app_id=f"it-online-{run}",
        topic_prefix=f"it-online-{run}.", metrics_port=port, metrics_host="127.0.0.1",
        support_capacity=12)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    trained = train_bundle(settings, warm, catalog, steps=30, profiles=data.profiles,
                           pretrain_epochs=0, recipe={"calibrate_recency": 0})
    path = save_bundle(trained.bundle, settings.data_dir)
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with EventProducer(settings) as producer:
            for user in data.users:
                if user.user_id in new_users:
                    producer.user(User(user.user_id, user.attributes))
            worker.load_catalog(producer, data.items)
            producer.interactions(stream)
        recs = list(consume(settings, settings.topic("recommendations"), idle_timeout_s=20,
                            max_messages=len(stream), deadline_s=60))
        assert len(recs) == len(stream)
        deadline = time.monotonic() + 20
        while True:  # the counters move once a batch's recommendations are delivered
            served, unscored, lines, batches = online_lines(port)
            if sum(v[0] for v in served.values()) + unscored >= len(stream):
                break
            assert time.monotonic() < deadline, (served, unscored)
            time.sleep(0.5)
    finally:
        worker.stop()
    assert "Traceback" not in worker.tail(200_000), worker.tail()

    replay = Recommender(settings, ModelBundle.load(path),
                         Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim)))
    replay.catalog.upsert(data.items)
    expected = online_reference(replay, stream, data.profiles.get)
    print("\n".join(lines))
    assert unscored == 0
    assert batches < len(stream) / 3, batches  # micro-batches: users' events share batches
    assert served == expected
    assert served["0"][0] == len(new_users)  # every new user's first event: against the prior
    assert all(served[b][0] > 0 for b in BUCKETS)
    assert sum(v[1] for v in served.values()) > 0 and sum(v[2] for v in served.values()) > 0
