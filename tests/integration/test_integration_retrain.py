"""The periodic retrain agent under a running stream: a worse candidate is rejected, a better one
is promoted and hot-swapped, and the model version changes on the output topic."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from engine.bundle import latest_version
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.retrain import read_outcomes
from engine.trainer import save_bundle, train_bundle
from evaluation.synthetic import generate
from ops.process import WorkerProcess
from streams.broker import embedded_worker_settings
from streams.kafka import EventProducer
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration




def test_retrain_rejects_worse_promotes_better_and_hot_swaps(
    broker, tmp_path: Path, wait_for, read_until
):
    settings = embedded_worker_settings(
        broker.url, data_dir=str(tmp_path / "data"), partitions=4, app_id="it-retrain",
        topic_prefix=f"it-retrain-{uuid.uuid4().hex[:6]}.",
        retrain_interval_s=3.0, retrain_min_users=30, retrain_steps=0,
    )
    data = generate(n_users=220, n_items=250, events_per_user=(20, 30), seed=5)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    # A deliberately weak first version (few warm users, few steps): room for a better one.
    warm = set(sorted({e.user_id for e in data.events})[:20])
    v1 = save_bundle(train_bundle(settings, [e for e in data.events if e.user_id in warm],
                                  catalog, steps=20).bundle, settings.data_dir).name
    per_user = defaultdict(list)
    for e in data.events:
        if e.user_id not in warm:
            per_user[e.user_id].append(e)
    users = sorted(per_user)[:160]
    first = [e for u in users for e in per_user[u][:12]]
    second = [e for u in users for e in per_user[u][12:20]]
    ensure_topics(settings)
    log = tmp_path / "worker.log"

    # Phase 1: an untrained candidate (retrain_steps=0) must be rejected; v1 keeps serving.
    worker = WorkerProcess(settings, log).start()
    try:
        with EventProducer(settings) as producer:
            for item in data.items:
                producer.item(item)
            producer.flush()
            producer.interactions(first)
        rejected = wait_for(
            lambda: [o for o in read_outcomes(settings.data_dir) if o["candidate_loss"]], 90,
            "a retrain outcome")[0]
    finally:
        worker.stop()
    assert rejected["promoted"] is False, rejected
    assert rejected["candidate_loss"] > rejected["incumbent_loss"]
    assert latest_version(settings.data_dir).name == v1

    # Phase 2: a trained candidate under a running stream is promoted and hot-swapped.
    trained = settings.replace(retrain_steps=200)
    worker = WorkerProcess(trained, log).start()
    try:
        with EventProducer(trained) as producer:
            for i, event in enumerate(second):  # paced: the stream runs while training happens
                producer.interaction(event)
                if i % 40 == 39:
                    producer.flush()
                    time.sleep(0.1)
            promoted = wait_for(
                lambda: [o for o in read_outcomes(settings.data_dir) if o["promoted"]], 120,
                "a promoted retrain")[0]
            # the model watcher (polls every 2 s) hot-swaps before the redelivered events
            wait_for(lambda: f"-> {promoted['version']}" in worker.tail(10**8), 30,
                     "the hot swap")
            producer.interactions(second[-50:])  # redelivered: re-ranked by the new model
        # every event of phase 2 answered, the 50 redelivered ones a second time
        wanted = {e.event_id for e in second}
        recs = [json.loads(v) for _, v in read_until(
            trained, trained.topic("recommendations"),
            lambda got: len(got) >= len(second) + 50
            and wanted <= {json.loads(v)["source_event_id"] for _, v in got}, 120)]
    finally:
        worker.stop()
    assert "Traceback" not in worker.tail(400000), worker.tail()
    v2 = promoted["version"]
    assert v2.startswith("v2-") and latest_version(settings.data_dir).name == v2
    versions = [r["model_version"] for r in recs]
    assert versions[0] == v1 and v2 in versions, sorted(set(versions))
    # Per user (one partition, in order) the version never goes back once swapped.
    by_user = defaultdict(list)
    for r in recs:
        by_user[r["user_id"]].append(r["model_version"])
    for seq in by_user.values():
        if v2 in seq:
            assert v1 not in seq[seq.index(v2):]
    assert all(r["source_event_id"] for r in recs)
