"""``--via-kafka``: the same log through the broker and a real worker gives the recommendations the
in-process replay computes, for the same seed."""

from __future__ import annotations

import pytest

from engine.settings import Settings
from evaluation.replay import replay, time_cut
from evaluation.runners import KindlingRunner
from evaluation.synthetic import generate
from ops.replay_kafka import KafkaRunner, via_kafka

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def log():
    return generate(n_users=150, n_items=200, events_per_user=(8, 20), seed=4)


def test_worker_and_in_process_replay_recommend_identically(broker, log, tmp_path):
    events = sorted(log.events, key=lambda e: (e.ts, e.event_id))
    cut = time_cut(events, 0.25)
    warm = [e for e in events if e.ts < cut]
    stream = [e for e in events if e.ts >= cut][:700]
    # the default serving learner (the hybrid), as the worker serves it
    inner = KindlingRunner(Settings().learner, log.items, log.profiles, steps=120, seed=3)
    inner.fit(warm)
    inner.with_top_k(10, 20)
    in_process = list(inner.stream(warm, stream, 10))
    runner = KafkaRunner(inner, log.items, broker_url=broker.url, workdir=tmp_path)
    served = list(runner.stream(warm, stream, 10))
    assert runner.info["topic_lists"] > len(stream) // 2  # mostly lists the worker published
    assert len(served) == len(in_process) == len(stream)
    differing = [i for i, (a, b) in enumerate(zip(in_process, served, strict=True)) if a != b]
    assert not differing, (len(differing), in_process[differing[0]], served[differing[0]])
    # Every event the worker saw (earlier history + stream) got exactly the in-process list.
    supports: dict[str, bytes] = {}
    active = {e.user_id for e in stream}
    history = [e for e in warm if e.user_id in active] + stream
    expected = {}
    for i in range(0, len(history), 97):  # other micro-batch boundaries than the worker's
        chunk = history[i : i + 97]
        for e, rec in zip(chunk, inner.rec.process(chunk, supports, inner.profile_of),
                          strict=True):
            expected[e.event_id] = rec.item_ids()
    assert runner.recommendations == expected
    assert runner.latencies_ms and min(runner.latencies_ms) > 0


def test_replay_cli_path_reports_via_kafka(log):
    report = replay(log, protocol="prequential", models=["popularity", "fomaml"], train_steps=60,
                    seed=1, max_stream_events=300, serve_via=via_kafka(), progress=False)
    assert report["meta"]["served_via"] == "kafka"
    assert report["meta"]["models"]["fomaml"]["kind"] == "kindling-via-kafka"
    in_process = replay(log, protocol="prequential", models=["fomaml"], train_steps=60, seed=1,
                        max_stream_events=300, progress=False)
    assert report["results"]["fomaml"] == in_process["results"]["fomaml"]
