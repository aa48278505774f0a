"""``kindling bench retrain``: event latency while the worker's periodic retrain round runs.

One worker on the embedded broker (trained model, adaptation on, a synthetic log with planted
structure), events produced at a steady ``rate`` from start to end. The worker's own retrain
timer (``retrain_interval_s``, set here so that the first tick comes after the baseline) runs one
round: table snapshot on the worker, then ``kindling retrain`` in a niced child process, then the
promotion check and, if promoted, a hot swap. Per event, latency is the recommendation's
``produced_at`` minus the send time (same host clock, as ``bench kafka``); the time it was read
back by this process is reported too (``received``). Phases, by send time:

* **baseline**: after a warm-up, until ``GUARD_S`` before the round's snapshot was taken;
* **during**: from then until the retrain child exited (its lifetime is watched in ``/proc``; the
  snapshot directory's name holds the time it was written, ``engine/retrain.py``);
* **after**: ``after_s`` seconds after the child exited (model load + hot swap).

The outcome (promoted or rejected, training seconds, ``finished_at``) comes from
``data_dir/retrain.jsonl``. The machine's load average is reported: on a shared host the figures
move with other work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.settings import Settings
from schemas import Interaction

GUARD_S = 1.0  # the snapshot's table reads run on the event loop just before its directory name
WARMUP_S = 5.0
STARTUP_S = 5.0  # worker "Ready" -> first paced event (items loaded, consumer joined)


@dataclasses.dataclass
class RoundWatch:
    """What a watcher thread saw of the worker's retrain rounds (wall-clock times)."""

    # snapshot directory -> when it was written; retrain child pid -> [first seen, last seen]
    snapshots: dict[str, float] = dataclasses.field(default_factory=dict)
    children: dict[int, list[float]] = dataclasses.field(default_factory=dict)


def _children(parent: int) -> list[int]:
    """Pids of ``parent``'s ``kindling retrain`` children (a scan of /proc: no psutil here)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"retrain" in Path(entry.path, "cmdline").read_bytes():
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
    return out


def _watch(parent: int, data_dir: Path, watch: RoundWatch, stop: threading.Event) -> None:
    pattern = re.compile(r"snapshot-(\d+)$")
    while not stop.is_set():
        now = time.time()
        for pid in _children(parent):
            watch.children.setdefault(pid, [now, now])[1] = now
        for path in (data_dir / "retrain").glob("snapshot-*"):
            match = pattern.search(path.name)
            if match and path.name not in watch.snapshots:
                watch.snapshots[path.name] = int(match.group(1)) / 1e9
        stop.wait(0.05)


def _stream(events: Sequence[Interaction]) -> Iterator[Interaction]:
    """The events, then again with fresh ids (later timestamps) for as long as needed."""
    span = events[-1].ts - events[0].ts + 1.0
    for lap in range(1_000_000):
        for e in events:
            yield e if lap == 0 else dataclasses.replace(
                e, event_id=f"{e.event_id}~{lap}", ts=e.ts + lap * span)


def _pace(producer: Any, events: Iterator[Interaction], rate: float, sent_at: dict[str, float],
          stop: threading.Event) -> None:
    t0 = time.time()
    for i, e in enumerate(events):
        if stop.is_set():
            break
        pause = t0 + i / rate - time.time()
        if pause > 0:
            time.sleep(pause)
        sent_at[e.event_id] = time.time()
        producer.interaction(e)
    producer.flush()


def _summary(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {"events": 0, "p50_ms": float("nan"), "p99_ms": float("nan"),
                "max_ms": float("nan")}
    arr = np.asarray(latencies)
    return {"events": len(arr), "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99)), "max_ms": float(arr.max())}


def bench_retrain(settings: Settings, rate: float = 1000.0, baseline_s: float = 20.0,
                  after_s: float = 5.0, max_round_s: float = 300.0) -> dict[str, Any]:
    from kafka import KafkaConsumer

    from engine.retrain import read_outcomes
    from engine.trainer import save_bundle, train_bundle
    from ops.bench_kafka import bench_workload
    from ops.process import WorkerProcess
    from streams.broker import EmbeddedBroker, embedded_worker_settings
    from streams.kafka import EventProducer
    from streams.topics import client_config, ensure_topics

    data, catalog, events, cut = bench_workload(settings)
    workdir = Path(tempfile.mkdtemp(prefix="kindling-bench-retrain-"))
    run = uuid.uuid4().hex[:6]
    load_before = os.getloadavg()
    with EmbeddedBroker() as broker:
        s = embedded_worker_settings(
            broker.url, settings, data_dir=str(workdir / "data"), app_id=f"bench-rt-{run}",
            topic_prefix=f"bench-rt-{run}.", model_dir="",
            retrain_interval_s=STARTUP_S + WARMUP_S + baseline_s + GUARD_S,
        )
        save_bundle(train_bundle(s, events[:cut], catalog, steps=100).bundle, s.data_dir)
        ensure_topics(s)
        worker = WorkerProcess(s, workdir / "worker.log").start()
        ready_at = time.time()
        consumer = KafkaConsumer(s.topic("recommendations"), **client_config(s), group_id=None,
                                 auto_offset_reset="latest", enable_auto_commit=False)
        watch, stop_watch, stop_pace = RoundWatch(), threading.Event(), threading.Event()
        watcher = threading.Thread(target=_watch, args=(worker.proc.pid, Path(s.data_dir), watch,
                                                        stop_watch), daemon=True)
        sent_at: dict[str, float] = {}
        got: dict[str, tuple[float, float]] = {}  # event id -> (produced_at, received_at)
        try:
            consumer.poll(timeout_ms=1000)  # join the partitions before anything is produced
            watcher.start()
            with EventProducer(s, linger_ms=2) as producer:
                for item in data.items:
                    producer.item(item)
                producer.flush()
                time.sleep(max(0.0, ready_at + STARTUP_S - time.time()))
                pacer = threading.Thread(target=_pace, args=(
                    producer, _stream(events[cut:]), rate, sent_at, stop_pace), daemon=True)
                started_at = time.time()
                pacer.start()
                outcome, stop_at = None, None
                deadline = started_at + STARTUP_S + WARMUP_S + baseline_s + max_round_s
                while time.time() < deadline and (stop_at is None or time.time() < stop_at):
                    _read(consumer, got)
                    if outcome is None:
                        outcomes = read_outcomes(s.data_dir)
                        if outcomes and all(now_gone(watch)):
                            outcome = outcomes[0]
                            stop_at = time.time() + after_s + 1.0
                stop_pace.set()
                pacer.join(30)
            drain_until = time.time() + 30.0
            while time.time() < drain_until and len(got) < len(sent_at):
                _read(consumer, got)
        finally:
            stop_watch.set()
            stop_pace.set()
            consumer.close()
            worker.stop()
    if outcome is None:
        raise RuntimeError(f"no retrain round finished within {max_round_s:.0f} s; worker log: "
                           f"{workdir / 'worker.log'}")
    return _report(settings, s, rate, baseline_s, after_s, started_at, sent_at, got, watch,
                   outcome, load_before, workdir)


def now_gone(watch: RoundWatch) -> list[bool]:
    """One flag per retrain child seen: has it exited (not seen for 0.5 s)?"""
    now = time.time()
    return [now - last > 0.5 for _, last in watch.children.values()] or [False]


def _read(consumer: Any, got: dict[str, tuple[float, float]]) -> None:
    for records in consumer.poll(timeout_ms=200).values():
        received = time.time()
        for record in records:
            doc = json.loads(record.value)
            got.setdefault(doc["source_event_id"], (doc["produced_at"], received))


def _report(settings: Settings, s: Settings, rate: float, baseline_s: float, after_s: float,
            started_at: float, sent_at: dict[str, float], got: dict[str, tuple[float, float]],
            watch: RoundWatch, outcome: dict[str, Any], load_before: tuple[float, ...],
            workdir: Path) -> dict[str, Any]:
    rounds = sorted(watch.children.values())
    child_start, child_end = rounds[0]
    snapshot_at = min(watch.snapshots.values(), default=child_start)
    window_start = min(snapshot_at, child_start) - GUARD_S
    after_end = child_end + after_s
    if len(rounds) > 1:  # a second round must not count as "after"
        after_end = min(after_end, rounds[1][0] - GUARD_S)
    phases: dict[str, tuple[float, float]] = {
        "baseline": (started_at + WARMUP_S, window_start),
        "during": (window_start, child_end),
        "after": (child_end, after_end),
    }
    result: dict[str, Any] = {}
    for name, (lo, hi) in phases.items():
        ids = [i for i, t in sent_at.items() if lo <= t < hi]
        produced = [1000.0 * (got[i][0] - sent_at[i]) for i in ids if i in got]
        received = [1000.0 * (got[i][1] - sent_at[i]) for i in ids if i in got]
        result[name] = {**_summary(produced), "seconds": hi - lo,
                        "missing": len(ids) - len(produced),
                        "received_p50_ms": _summary(received)["p50_ms"],
                        "received_p99_ms": _summary(received)["p99_ms"]}
    base, during = result["baseline"], result["during"]
    timeline = []
    per_second: dict[int, list[float]] = {}
    for i, t in sent_at.items():
        if i in got:
            per_second.setdefault(int(t - started_at), []).append(1000.0 * (got[i][0] - t))
    for second in sorted(per_second):
        lat = per_second[second]
        timeline.append([second, round(float(np.percentile(lat, 50)), 1),
                         round(float(np.percentile(lat, 99)), 1)])
    return {
        "rate": rate,
        "achieved_rate": len(sent_at) / max(max(sent_at.values()) - started_at, 1e-9),
        "baseline_p50_ms": base["p50_ms"], "baseline_p99_ms": base["p99_ms"],
        "during_p50_ms": during["p50_ms"], "during_p99_ms": during["p99_ms"],
        "after_p50_ms": result["after"]["p50_ms"], "after_p99_ms": result["after"]["p99_ms"],
        "p50_ratio": during["p50_ms"] / base["p50_ms"] if base["events"] else float("nan"),
        "p99_ratio": during["p99_ms"] / base["p99_ms"] if base["events"] else float("nan"),
        "retrain_outcome": "promoted" if outcome["promoted"] else "rejected",
        "retrain_reason": outcome["reason"],
        "retrain_train_s": outcome["seconds"],
        "retrain_child_s": child_end - child_start,
        "retrain_window_s": child_end - window_start,
        "retrain_users": outcome["users"], "retrain_events": outcome["events"],
        "retrain_steps": s.retrain_steps,
        "rounds_seen": len(rounds),
        "events": len(sent_at), "missing": len(sent_at) - len(got.keys() & sent_at.keys()),
        "learner": settings.learner, "torch_threads": settings.torch_threads,
        "batch_max": settings.batch_max,
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "phases": result,
        "timeline_s_p50_p99": timeline,
        "worker_log": str(workdir / "worker.log"),
    }
