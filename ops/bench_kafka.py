"""``kindling bench kafka``: end to end through the embedded broker and a real worker process.

Two runs on one worker (trained model, adaptation on, a synthetic log with planted structure):

* **throughput**: produce ``n`` events as fast as the producer goes; events/s is ``n`` divided by
  the time from the first send to the last recommendation read back;
* **latency at a paced rate**: produce at ``rate`` events/s; per event, latency is the
  recommendation's ``produced_at`` minus the send time (same host clock), p50/p99 reported.

CPU split: the machine's cores are shared by the worker, the broker and this load generator, so
the throughput run also reports each one's CPU seconds (``/proc/<pid>/stat``) and the worker's
events per CPU-second, which is what one worker process would do with a core to itself.

Transport baseline, side by side in the same run: the same two runs first go through a worker
started with ``pipeline="echo"`` (same broker, topics, micro-batching, decoding, dead-lettering
and producer settings, an empty recommendation per event, no table, no model). Its figures
(``echo_*``) are what Kafka + Faust alone cost on this machine, so ``events_per_s_vs_echo`` and
``events_per_worker_cpu_s_vs_echo`` show how much of the ceiling serving leaves; ratios survive a
noisy machine better than absolute rates.

Bytes per user: the mean support-set record (what a table value holds) and the RocksDB files of
the supports table on disk divided by the users in it, after the worker stopped.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.settings import Settings
from schemas import Interaction


def _drain(settings: Settings, want: set[str], sent_at: dict[str, float], deadline_s: float,
           consumer: Any) -> tuple[list[float], float]:
    latencies: list[float] = []
    got: set[str] = set()
    last = time.time()
    start = time.monotonic()
    while len(got) < len(want) and time.monotonic() - start < deadline_s:
        batch = consumer.poll(timeout_ms=500)
        for records in batch.values():
            for record in records:
                doc = json.loads(record.value)
                source = doc["source_event_id"]
                if source in want and source not in got:
                    got.add(source)
                    latencies.append(1000.0 * (doc["produced_at"] - sent_at[source]))
                    last = time.time()
    if len(got) < len(want):
        raise RuntimeError(f"only {len(got)} of {len(want)} recommendations arrived")
    return latencies, last


def bench_workload(settings: Settings) -> tuple[Any, Any, list[Interaction], int]:
    """The end-to-end benchmarks' workload: a planted synthetic log (5,000 users, 2,000 items),
    its catalog, the events in time order and the cut: the model trains on ``events[:cut]``,
    the rest is streamed."""
    from engine.catalog import Catalog
    from engine.features import HashingFeaturizer
    from evaluation.synthetic import generate

    data = generate(n_users=5000, n_items=2000, events_per_user=(5, 30), seed=settings.seed)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    events = sorted(data.events, key=lambda e: (e.ts, e.event_id))
    return data, catalog, events, len(events) // 3


def bench_kafka(
    settings: Settings, n_events: int = 20_000, rate: float = 2000.0, paced_events: int = 10_000,
    baseline: bool = True,
) -> dict[str, Any]:
    """Both runs on the full worker and, with ``baseline``, first on an ``echo`` worker (same
    broker, topics, batching and producer; no state or model) whose figures are the transport's
    ceiling on this machine: ``echo_*`` keys and ``vs_echo`` ratios."""
    from engine.trainer import save_bundle, train_bundle
    from streams.broker import EmbeddedBroker, embedded_worker_settings

    data, catalog, events, cut = bench_workload(settings)
    stream = events[cut:]
    if n_events + paced_events > len(stream):
        raise ValueError(f"the workload streams {len(stream)} events: ask for at most that many "
                         f"(--events {n_events} + {paced_events} paced)")
    fast, paced = stream[:n_events], stream[n_events : n_events + paced_events]
    workdir = Path(tempfile.mkdtemp(prefix="kindling-bench-"))
    out: dict[str, Any] = {}
    with EmbeddedBroker() as broker:
        for mode in (["echo"] if baseline else []) + ["full"]:
            run = uuid.uuid4().hex[:6]
            s = embedded_worker_settings(
                broker.url, settings, data_dir=str(workdir / mode), app_id=f"bench-{run}",
                topic_prefix=f"bench-{run}.", model_dir="", retrain_interval_s=0.0,
                pipeline=mode,
            )
            if mode == "full":
                save_bundle(train_bundle(s, events[:cut], catalog, steps=100).bundle, s.data_dir)
            result = _run_worker(s, broker.pid, data.items, fast, paced, rate)
            if mode == "full":
                result["bytes_per_user"] = _bytes_per_user(Path(s.data_dir))
                out.update(_summary(result, rate))
            else:
                out.update({f"echo_{k}": v for k, v in _summary(result, rate).items()
                            if k in ("events_per_s", "p50_ms", "p99_ms", "worker_cpu_s",
                                     "events_per_worker_cpu_s")})
    if baseline:
        for k in ("events_per_s", "events_per_worker_cpu_s"):
            out[f"{k}_vs_echo"] = out[k] / max(out[f"echo_{k}"], 1e-9)
    return {**out, "learner": settings.learner, "inner_steps": settings.inner_steps,
            "catalog_items": len(data.items), "batch_max": settings.batch_max}


def _run_worker(s: Settings, broker_pid: int | None, items: Sequence[Any],
                fast: Sequence[Interaction], paced: Sequence[Interaction],
                rate: float) -> dict[str, Any]:
    from kafka import KafkaConsumer

    from ops.process import WorkerProcess
    from streams.kafka import EventProducer
    from streams.topics import client_config, ensure_topics

    ensure_topics(s)
    worker = WorkerProcess(s, Path(s.data_dir).parent / f"{s.pipeline}-worker.log").start()
    consumer = KafkaConsumer(s.topic("recommendations"), **client_config(s), group_id=None,
                             auto_offset_reset="latest", enable_auto_commit=False)
    consumer.poll(timeout_ms=1000)  # join the partitions before anything is produced
    try:
        with EventProducer(s, linger_ms=2) as producer:
            for item in items:
                producer.item(item)
            producer.flush()
            worker.wait_for_catalog(len(items))  # events must not race the catalog
            pids = {"worker": worker.proc.pid, "broker": broker_pid}
            before = _cpu_seconds(pids)
            result = {"throughput": _throughput(s, producer, fast, consumer, _drain)}
            after = _cpu_seconds(pids)
            result["cpu"] = {f"{k}_cpu_s": after[k] - before[k] for k in after}
            result["paced"] = _paced(s, producer, paced, rate, consumer, _drain)
    finally:
        consumer.close()
        worker.stop()
    return result


def _summary(result: dict[str, Any], rate: float) -> dict[str, Any]:
    t, p = result["throughput"], result["paced"]
    return {
        "events": t["events"],
        "events_per_s": t["events_per_s"],
        "throughput_p50_ms": t["p50_ms"],
        "throughput_p99_ms": t["p99_ms"],
        "rate": rate,
        "achieved_rate": p["achieved_rate"],
        "p50_ms": p["p50_ms"],
        "p99_ms": p["p99_ms"],
        "paced_events": p["events"],
        **result["cpu"],
        "events_per_worker_cpu_s": t["events"] / max(result["cpu"]["worker_cpu_s"], 1e-9),
        **result.get("bytes_per_user", {}),
    }


def _cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """User + system CPU seconds of each process (all its threads) and of this one."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    out = {"load_generator": sum(os.times()[:2])}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            out[name] = float("nan")
    return out


def _throughput(s: Settings, producer: Any, events: Sequence[Interaction], consumer: Any,
                drain: Any) -> dict[str, float]:
    sent_at: dict[str, float] = {}
    t0 = time.time()
    for e in events:
        sent_at[e.event_id] = time.time()
        producer.interaction(e)
    producer.flush()
    latencies, last = drain(s, {e.event_id for e in events}, sent_at, 600.0, consumer)
    return {"events": len(events), "events_per_s": len(events) / (last - t0),
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def _paced(s: Settings, producer: Any, events: Sequence[Interaction], rate: float, consumer: Any,
           drain: Any) -> dict[str, float]:
    sent_at: dict[str, float] = {}
    t0 = time.time()
    for i, e in enumerate(events):
        due = t0 + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        sent_at[e.event_id] = time.time()
        producer.interaction(e)
    producer.flush()
    sent = time.time() - t0
    latencies, _ = drain(s, {e.event_id for e in events}, sent_at, 600.0, consumer)
    return {"events": len(events), "achieved_rate": len(events) / sent,
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def _bytes_per_user(data_dir: Path) -> dict[str, float]:
    from rocksdict import AccessType, Rdict

    from engine.support import UserSupport

    users, record_bytes, disk = 0, 0, 0
    for db_path in sorted(data_dir.glob("faust/**/supports-*.db")):
        disk += sum(f.stat().st_size for f in db_path.rglob("*") if f.is_file())
        db = Rdict(str(db_path), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if bytes(key).startswith(b"__faust"):
                    continue
                UserSupport.from_bytes(bytes(value))  # a real record, not bookkeeping
                users += 1
                record_bytes += len(value)
        finally:
            db.close()
    return {
        "users": users,
        "bytes_per_user": record_bytes / users if users else 0.0,
        "disk_bytes_per_user": disk / users if users else 0.0,
        "gib_per_million_users": record_bytes / max(users, 1) * 1e6 / 2**30,
    }


# ----------------------------------------------------------------------------- broker storage
#: Share of the S3-backed broker's measured throughput at which both brokers are paced for the
#: latency figures (the same offered load on both: a rate the slower one sustains).
STORAGE_PACE_FRACTION = 0.5


def bench_kafka_storage(settings: Settings, n_events: int = 5_000,
                        paced_events: int = 2_000) -> dict[str, Any]:
    """The full worker through the embedded broker on memory storage and on S3 storage (a
    loopback S3 endpoint, or ``settings.s3_endpoint``), side by side in one run: events/s with
    the producer flat out, then p50/p99 latency with both paced at
    :data:`STORAGE_PACE_FRACTION` of the S3 broker's measured events/s; ``s3_vs_memory_*`` are
    the ratios. Each broker gets the worker settings the rest of Kindling gives it
    (``streams.broker.embedded_worker_settings``: a 3 s fetch wait on S3)."""
    from engine.trainer import save_bundle, train_bundle
    from streams.broker import EmbeddedBroker, embedded_worker_settings

    data, catalog, events, cut = bench_workload(settings)
    stream = events[cut:]
    if 2 * n_events + 2 * paced_events > len(stream):
        raise ValueError(f"the workload streams {len(stream)} events: ask for fewer")
    workdir = Path(tempfile.mkdtemp(prefix="kindling-bench-storage-"))
    bundle = None
    out: dict[str, Any] = {}
    rate: float | None = None
    s3_storage = settings.broker_storage if settings.broker_storage.startswith("s3://") \
        else "s3://kindling-bench/"
    # S3 first: its throughput sets the pace for both.
    for i, storage in enumerate((s3_storage, "memory")):
        name = "s3" if storage.startswith("s3://") else "memory"
        broker_settings = settings.replace(broker_storage=storage,
                                           s3_endpoint=settings.s3_endpoint or "local")
        fast = stream[i * n_events : (i + 1) * n_events]
        base = 2 * n_events + i * paced_events
        paced = stream[base : base + paced_events]
        with EmbeddedBroker.from_settings(broker_settings) as broker:
            run = uuid.uuid4().hex[:6]
            s = embedded_worker_settings(
                broker.url, settings, s3=broker.persistent, data_dir=str(workdir / name),
                app_id=f"bench-{run}", topic_prefix=f"bench-{run}.", model_dir="",
                retrain_interval_s=0.0, pipeline="full",
            )
            if bundle is None:
                bundle = train_bundle(s, events[:cut], catalog, steps=100).bundle
            save_bundle(bundle, s.data_dir)
            result = _run_storage(s, broker.pid, data.items, fast, paced, rate)
            rate = rate or STORAGE_PACE_FRACTION * result["throughput"]["events_per_s"]
        out[name] = _summary(result, result["rate"])
    for key in ("events_per_s", "events_per_worker_cpu_s"):
        out[f"s3_vs_memory_{key}"] = out["s3"][key] / max(out["memory"][key], 1e-9)
    for key in ("p50_ms", "p99_ms"):
        out[f"s3_vs_memory_{key}"] = out["s3"][key] / max(out["memory"][key], 1e-9)
    return {**out, "paced_rate": rate, "pace_fraction_of_s3_events_per_s": STORAGE_PACE_FRACTION,
            "learner": settings.learner, "catalog_items": len(data.items)}


def _run_storage(s: Settings, broker_pid: int | None, items: Sequence[Any],
                 fast: Sequence[Interaction], paced: Sequence[Interaction],
                 rate: float | None) -> dict[str, Any]:
    """Throughput, then paced latency at ``rate`` (None: a fraction of the throughput just
    measured), on one worker."""
    from kafka import KafkaConsumer

    from ops.process import WorkerProcess
    from streams.kafka import EventProducer
    from streams.topics import client_config, ensure_topics

    ensure_topics(s)
    worker = WorkerProcess(s, Path(s.data_dir).parent / f"{Path(s.data_dir).name}-worker.log")
    worker.start()
    consumer = KafkaConsumer(s.topic("recommendations"), **client_config(s), group_id=None,
                             auto_offset_reset="latest", enable_auto_commit=False,
                             fetch_max_wait_ms=max(500, s.fetch_max_wait_ms))
    consumer.poll(timeout_ms=1000)
    try:
        with EventProducer(s, linger_ms=2) as producer:
            for item in items:
                producer.item(item)
            producer.flush()
            worker.wait_for_catalog(len(items))
            pids = {"worker": worker.proc.pid, "broker": broker_pid}
            before = _cpu_seconds(pids)
            result: dict[str, Any] = {
                "throughput": _throughput(s, producer, fast, consumer, _drain)}
            after = _cpu_seconds(pids)
            result["cpu"] = {f"{k}_cpu_s": after[k] - before[k] for k in after}
            result["rate"] = rate or STORAGE_PACE_FRACTION * result["throughput"]["events_per_s"]
            result["paced"] = _paced(s, producer, paced, result["rate"], consumer, _drain)
    finally:
        consumer.close()
        worker.stop()
    return result
