"""End to end against the real embedded broker over TCP and RocksDB on disk."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.settings import Settings
from engine.support import UserSupport
from engine.trainer import save_bundle, train_bundle
from evaluation.synthetic import generate
from ops.process import WorkerProcess
from schemas import Interaction
from streams.broker import embedded_worker_settings
from streams.kafka import EventProducer, consume
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration

MALFORMED = [
    (b"not json at all", "not JSON"),
    (b'{"event_id": "m1", "user_id": "", "item_id": "i1", "kind": "click"}', "user_id"),
    (b'{"event_id": "m2", "user_id": "u1", "item_id": "i1", "kind": "like"}', "unknown kind"),
    (b'{"event_id": "m3", "user_id": "u1", "item_id": "i1", "kind": "rate", "value": NaN}',
     "non-finite"),
    (b'{"event_id": "m4", "user_id": "u1", "item_id": "i1", "kind": "rate", "value": 7}',
     "outside"),
    (b'{"event_id": "m5", "user_id": 5.5, "item_id": "i1", "kind": "click"}', "must be a string"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"event_id": "m6", "user_id": "u1", "item_id": "i1", "kind": "click", "x": "'
     + b"a" * 70000 + b'"}', "over the"),
]


def _settings(broker, tmp_path: Path, name: str) -> Settings:
    return embedded_worker_settings(
        broker.url, data_dir=str(tmp_path / "data"), partitions=4, app_id=f"it-{name}",
        topic_prefix=f"it-{name}-{uuid.uuid4().hex[:6]}.",
    )


@pytest.fixture(scope="module")
def warm_model(broker, tmp_path_factory):
    """The synthetic log, its 40 warm users and a model trained on them: trained once for the
    module (~8 s); the tests only save it into their own data dirs."""
    settings = _settings(broker, tmp_path_factory.mktemp("warm"), "warm")
    data = generate(n_users=240, n_items=300, events_per_user=(25, 40), seed=3)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    warm_users = sorted({e.user_id for e in data.events})[:40]
    warm = [e for e in data.events if e.user_id in set(warm_users)]
    return data, set(warm_users), train_bundle(settings, warm, catalog, steps=40).bundle


def _trained(settings: Settings, warm_model):
    data, warm_users, bundle = warm_model
    save_bundle(bundle, settings.data_dir)
    return data, warm_users


def _stream(
    data, skip_users: set[str], n_users: int = 200, per_user: int = 25
) -> list[Interaction]:
    per: dict[str, list[Interaction]] = defaultdict(list)
    for e in data.events:
        if e.user_id not in skip_users and len(per[e.user_id]) < per_user:
            per[e.user_id].append(e)
    users = sorted(u for u, evs in per.items() if len(evs) == per_user)[:n_users]
    assert len(users) == n_users
    return sorted((e for u in users for e in per[u]), key=lambda e: e.ts)


def test_every_event_gets_a_recommendation_and_bad_input_goes_to_dlq(
    broker, tmp_path, read_until, warm_model
):
    settings = _settings(broker, tmp_path, "spine")
    data, warm = _trained(settings, warm_model)
    events = _stream(data, warm)
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with EventProducer(settings) as producer:
            worker.load_catalog(producer, data.items)
            for i, event in enumerate(events):
                producer.interaction(event)
                if i % 625 == 0:  # malformed events mixed into the stream
                    raw, _ = MALFORMED[(i // 625) % len(MALFORMED)]
                    producer.send_raw(settings.topic("interactions"), event.user_id.encode(), raw)
            for raw, _ in MALFORMED:
                producer.send_raw(settings.topic("interactions"), b"u-bad", raw)
        wanted = {e.event_id for e in events}
        n_bad = len(MALFORMED) + len(range(0, len(events), 625))
        recs = [json.loads(v) for _, v in read_until(
            settings, settings.topic("recommendations"),
            lambda got: len(got) >= len(wanted)
            and wanted <= {json.loads(v)["source_event_id"] for _, v in got}, 240)]
        dead = [json.loads(v) for _, v in read_until(
            settings, settings.topic("dlq"), lambda got: len(got) >= n_bad, 60)]
    finally:
        worker.stop()
    assert "Traceback" not in worker.tail(200000), worker.tail()
    by_source = {r["source_event_id"]: r for r in recs}
    assert set(by_source) == {e.event_id for e in events}, "an event got no recommendation"
    per_user = Counter(r["user_id"] for r in by_source.values())
    assert len(per_user) == 200 and set(per_user.values()) == {25}
    # Output is at-least-once: a redelivered event is published again, never lost.
    assert len(recs) - len(by_source) < len(events) // 100
    seen: dict[str, set[str]] = defaultdict(set)
    for e in events:
        seen[e.user_id].add(e.item_id)
        rec = by_source[e.event_id]
        items = [i["item_id"] for i in rec["items"]]
        assert len(items) == 10 and not (set(items) & seen[e.user_id]), "seen items recommended"
        assert rec["model_version"].startswith("v1-")
    scores = {tuple(round(i["score"], 4) for i in r["items"]) for r in recs}
    assert len(scores) > len(recs) // 2, "scores look constant across users"
    assert len(dead) == n_bad
    for letter in dead:
        assert letter["reason"] and letter["topic"] == settings.topic("interactions")
        assert letter["offset"] >= 0 and "original_latin1" in letter
    reasons = " | ".join(d["reason"] for d in dead)
    for _, expected in MALFORMED:
        assert expected in reasons, f"no dead letter says {expected!r}: {reasons}"


def test_restart_recovers_support_sets_and_never_applies_an_event_twice(
    broker, tmp_path, read_until, warm_model
):
    settings = _settings(broker, tmp_path, "restart")
    data, warm = _trained(settings, warm_model)
    events = _stream(data, warm, n_users=40, per_user=25)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    ensure_topics(settings)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    with EventProducer(settings) as producer:
        for item in data.items:
            producer.item(item)
        producer.interactions(first)
    got = list(consume(settings, settings.topic("recommendations"), idle_timeout_s=10,
                       max_messages=len(first), deadline_s=60))
    assert len(got) == len(first)
    worker.kill()  # SIGKILL: no graceful shutdown
    worker = WorkerProcess(settings, log).start()
    try:
        with EventProducer(settings) as producer:
            producer.interactions(first[-50:])  # redelivered duplicates
            producer.interactions(second)
        wanted = {e.event_id for e in events}
        recs = [json.loads(v) for _, v in read_until(
            settings, settings.topic("recommendations"),
            lambda got: len(got) >= len(wanted)
            and wanted <= {json.loads(v)["source_event_id"] for _, v in got}, 90)]
    finally:
        worker.stop()
    assert {r["source_event_id"] for r in recs} == wanted
    # State: read the changelog (what a recovering worker restores) and check every user's
    # lifetime count equals the number of distinct events sent for them.
    sent = Counter(e.user_id for e in events)
    latest: dict[str, bytes] = {}
    for key, value in read_until(settings, f"{settings.app_id}-supports-changelog",
                                 lambda got: {k.decode() for k, _ in got} >= set(sent), 30):
        latest[key.decode()] = value
    assert set(latest) == set(sent)
    for user, raw in latest.items():
        support = UserSupport.from_bytes(raw)
        assert support.n_total == sent[user], (
            f"{user}: {support.n_total} applied, {sent[user]} sent")
        assert len(support) == min(sent[user], settings.support_capacity)
    assert (Path(settings.data_dir) / "faust").is_dir()


def test_echo_pipeline_answers_each_event_with_an_empty_list_and_dead_letters_bad_ones(
    broker, tmp_path, read_until
):
    """The transport baseline of `kindling bench kafka`: same topics, decoding and DLQ as
    serving, an empty recommendation per event, no model and no state."""
    settings = _settings(broker, tmp_path, "echo").replace(pipeline="echo")
    data = generate(n_users=30, n_items=50, events_per_user=(5, 8), seed=5)
    events = data.events[:150]
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with EventProducer(settings) as producer:
            producer.interactions(events)
            for raw, _ in MALFORMED[:3]:
                producer.send_raw(settings.topic("interactions"), b"u-bad", raw)
        recs = [json.loads(v) for _, v in consume(
            settings, settings.topic("recommendations"), idle_timeout_s=10, deadline_s=120,
            max_messages=len(events))]
        dead = [json.loads(v) for _, v in read_until(
            settings, settings.topic("dlq"), lambda got: len(got) >= 3, 60)]
    finally:
        worker.stop()
    assert "Traceback" not in worker.tail(200000), worker.tail()
    assert sorted(r["source_event_id"] for r in recs) == sorted(e.event_id for e in events)
    assert all(r["items"] == [] and r["model_version"] == "echo" for r in recs)
    assert {r["user_id"] for r in recs} == {e.user_id for e in events}
    assert len(dead) == 3 and all(d["reason"] for d in dead)


def test_state_pipeline_keeps_support_sets_and_answers_without_the_model(
    broker, tmp_path, read_until, warm_model, fed_worker
):
    """``pipeline="state"`` (`kindling bench kafka --columns state`): serving's support sets,
    changelog and ten-item answers, with the catalog's first items instead of the model's."""
    settings = _settings(broker, tmp_path, "state").replace(pipeline="state")
    data, warm = _trained(settings, warm_model)
    events = _stream(data, warm, n_users=20, per_user=5)
    sent = Counter(e.user_id for e in events)
    with fed_worker(settings, data.items, events) as worker:
        recs = [json.loads(v) for _, v in read_until(
            settings, settings.topic("recommendations"),
            lambda got: len(got) >= len(events), 120)]
        latest = {k.decode(): v for k, v in read_until(
            settings, f"{settings.app_id}-supports-changelog",
            lambda got: {k.decode() for k, _ in got} >= set(sent), 60)}
    assert "Traceback" not in worker.tail(200000), worker.tail()
    assert sorted(r["source_event_id"] for r in recs) == sorted(e.event_id for e in events)
    # the worker's first catalog rows (their order is the items' arrival over 4 partitions)
    lists = {tuple(i["item_id"] for i in r["items"]) for r in recs}
    assert len(lists) == 1
    (first,) = lists
    assert len(first) == settings.top_k and set(first) <= {i.item_id for i in data.items}
    assert {u: UserSupport.from_bytes(raw).n_total for u, raw in latest.items()} == dict(sent)


def test_unknown_pipeline_is_refused(tmp_path) -> None:
    from workers.app import Kindling

    with pytest.raises(ValueError, match="pipeline"):
        Kindling(Settings(data_dir=str(tmp_path), pipeline="fast"))
