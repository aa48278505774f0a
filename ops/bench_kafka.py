"""``kindling bench kafka``: the Kafka ceiling and Kindling's serving, side by side in one run.

Four columns on one synthetic workload (5,000 users, 2,000 items, a model trained on the first
third of the log), each with events/s and events per CPU-second of the consuming process:

* **bare**: a bare aiokafka echo (``ops/bare_echo.py``): fetch, decode, one produce per event,
  wait for the sends, commit. No Faust: the Python Kafka ceiling on this machine;
* **echo**: the Faust worker with ``pipeline="echo"`` (same topics, micro-batches, decoding,
  dead-lettering and producer as serving; an empty recommendation per event, no state, no model);
* **serving**: the Faust worker serving ``settings.learner`` (RocksDB tables, adaptation, rank);
* **state** (only when asked for, ``--columns``): the Faust worker with ``pipeline="state"``,
  serving without the model (support sets, changelog, ten-item answers, online hit@K; every
  answer the catalog's first ``top_k`` items): what serving's state and answers cost;
* **pipeline**: the same apply + rank code in process, without Kafka (``Recommender.process``).

Per Kafka column, a real consumer process on the embedded broker:

* **capacity**: ``n`` events produced as fast as the load generator goes; events/s is ``n`` over
  the time from the first send to the last recommendation read back, and the consumer's CPU
  seconds (``/proc/<pid>/stat``) over the same window give events per CPU-second (what one
  process does with a core to itself; the broker and the load generator share the machine);
* **latency at a paced rate**: events sent at 25% and 50% of the capacity that column measured in
  this run (never a fixed rate: a fixed rate that one machine sustains overloads a slower one);
  per event, latency is the recommendation's ``produced_at`` minus the send time (one clock);
  p50, p99 and the achieved send rate are reported. Serving runs first, so bare and echo are
  also paced at 50% of *serving's* capacity: the p99 that serving's is compared with.

The pipeline column replays arrivals at the same fractions of its own capacity in process
(latency = batch done minus arrival), so every column has the same figures.

Ratios (``ratios``) are what to compare across machines; absolute rates are one machine's.
Serving's figures are also written under the flat keys older reports used (``events_per_s``,
``events_per_worker_cpu_s``, ``echo_*``), so two commits' reports compare key by key.

Bytes per user: the mean support-set record and the supports table's RocksDB files on disk per
user, after the serving worker stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.settings import Settings
from schemas import Interaction

# serving first: its capacity paces the others too
KAFKA_COLUMNS = ("serving", "state", "echo", "bare")
COLUMNS = ("bare", "echo", "serving", "pipeline")  # the default run, in the report's order
ALL_COLUMNS = ("bare", "echo", "state", "serving", "pipeline")  # report order: ceiling first
FRACTIONS = (0.25, 0.5)
MIN_PACED_EVENTS = 200


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


class EventSource:
    """Hands out events in stream order. ``fresh`` sources (serving, pipeline) never repeat one:
    repeats would be de-duplicated, not served. Stateless echoes cycle through the stream with
    new event ids instead, as many as their higher rates need."""

    def __init__(self, events: Sequence[Interaction], fresh: bool) -> None:
        self.events = events
        self.fresh = fresh
        self.used = 0
        self._cycle: Iterator[Interaction] = self._cycled()

    def _cycled(self) -> Iterator[Interaction]:
        for lap in itertools.count():
            for e in self.events:
                yield e if lap == 0 else dataclasses.replace(e, event_id=f"{e.event_id}~{lap}")

    def left(self) -> int | None:
        return len(self.events) - self.used if self.fresh else None

    def take(self, n: int) -> list[Interaction]:
        if self.fresh and n > len(self.events) - self.used:
            raise ValueError(f"the workload has {len(self.events) - self.used} fresh events "
                             f"left, {n} asked: lower --events or --paced-s")
        self.used += n
        return list(itertools.islice(self._cycle, n))


def _paced_count(rate: float, seconds: float, source: EventSource, runs_left: int) -> int:
    """Events for a paced run of ``seconds`` at ``rate``, within what a fresh source has left."""
    want = max(MIN_PACED_EVENTS, int(rate * seconds))
    left = source.left()
    if left is not None:
        want = min(want, left // max(runs_left, 1))
    return want


def bench_kafka(
    settings: Settings, n_events: int = 20_000, paced_s: float = 5.0,
    fractions: Sequence[float] = FRACTIONS, columns: Sequence[str] = COLUMNS,
) -> dict[str, Any]:
    """Every column of ``columns`` (see the module docstring) in one run on one embedded broker."""
    from engine.trainer import save_bundle, train_bundle
    from streams.broker import EmbeddedBroker, embedded_worker_settings

    unknown = set(columns) - set(ALL_COLUMNS)
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}; choose from "
                         f"{', '.join(ALL_COLUMNS)}")
    data, catalog, events, cut = bench_workload(settings)
    stream = events[cut:]
    bundle = None
    if {"serving", "state", "pipeline"} & set(columns):
        bundle = train_bundle(settings, events[:cut], catalog, steps=100).bundle
    workdir = Path(tempfile.mkdtemp(prefix="kindling-bench-"))
    out: dict[str, Any] = {"columns": {}}
    serving_rate: float | None = None
    with EmbeddedBroker() as broker:
        for column in (c for c in KAFKA_COLUMNS if c in columns):
            run = uuid.uuid4().hex[:6]
            s = embedded_worker_settings(
                broker.url, settings, data_dir=str(workdir / column), app_id=f"bench-{run}",
                topic_prefix=f"bench-{run}.", model_dir="", retrain_interval_s=0.0,
                pipeline={"echo": "echo", "state": "state"}.get(column, "full"),
            )
            if column in ("serving", "state"):
                save_bundle(bundle, s.data_dir)
            # each column's worker has its own tables: the stream is fresh to each stateful one
            source = EventSource(stream, fresh=column in ("serving", "state"))
            extra_rates = [] if serving_rate is None else [serving_rate]
            result = _kafka_column(column, s, broker.pid, data.items, source, n_events,
                                   fractions, paced_s, extra_rates)
            if column == "serving":
                result["bytes_per_user"] = _bytes_per_user(Path(s.data_dir))
                serving_rate = 0.5 * result["events_per_s"]
            out["columns"][column] = result
    if "pipeline" in columns:
        out["columns"]["pipeline"] = _pipeline_column(settings, bundle, catalog, stream,
                                                      n_events, fractions, paced_s)
    out["columns"] = {c: out["columns"][c] for c in ALL_COLUMNS if c in out["columns"]}
    out["ratios"] = _ratios(out["columns"])
    out.update(_legacy_keys(out["columns"]))
    return {**out, "learner": settings.learner, "inner_steps": settings.inner_steps,
            "catalog_items": len(data.items), "batch_max": settings.batch_max,
            "event_loop": settings.event_loop, "torch_threads": settings.torch_threads,
            "cpu_count": os.cpu_count()}


def _kafka_column(column: str, s: Settings, broker_pid: int | None, items: Sequence[Any],
                  source: EventSource, n_events: int, fractions: Sequence[float],
                  paced_s: float, extra_rates: Sequence[float]) -> dict[str, Any]:
    from kafka import KafkaConsumer

    from ops.bare_echo import READY
    from ops.process import WorkerProcess
    from streams.kafka import EventProducer
    from streams.topics import client_config, ensure_topics

    ensure_topics(s)
    log_path = Path(s.data_dir).parent / f"{column}.log"
    if column == "bare":
        consumer_proc = WorkerProcess(s, log_path, module=("ops.bare_echo",),
                                      ready=READY.encode())
    else:
        consumer_proc = WorkerProcess(s, log_path)
    consumer_proc.start()
    reader = KafkaConsumer(s.topic("recommendations"), **client_config(s), group_id=None,
                           auto_offset_reset="latest", enable_auto_commit=False)
    reader.poll(timeout_ms=1000)  # join the partitions before anything is produced
    try:
        with EventProducer(s, linger_ms=2) as producer:
            if column != "bare":  # the bare echo reads no catalog
                consumer_proc.load_catalog(producer, items)
            pids = {"consumer": consumer_proc.proc.pid, "broker": broker_pid}
            before = _cpu_seconds(pids)
            capacity = _throughput(producer, source.take(n_events), reader)
            after = _cpu_seconds(pids)
            cpu = {f"{k}_cpu_s": after[k] - before[k] for k in after}
            rates = [f * capacity["events_per_s"] for f in fractions]
            paced = []
            for i, (label, rate) in enumerate(
                    [(f"{f:g}", r) for f, r in zip(fractions, rates, strict=True)]
                    + [("serving/2", r) for r in extra_rates]):
                runs_left = len(rates) + len(extra_rates) - i
                events = source.take(_paced_count(rate, paced_s, source, runs_left))
                paced.append({"of": label, **_paced(producer, events, rate, reader)})
    finally:
        reader.close()
        consumer_proc.stop()
    return {
        "events": capacity["events"],
        "events_per_s": capacity["events_per_s"],
        "produce_events_per_s": capacity["produce_events_per_s"],
        "saturated_p50_ms": capacity["p50_ms"],
        "saturated_p99_ms": capacity["p99_ms"],
        **cpu,
        "events_per_cpu_s": capacity["events"] / max(cpu["consumer_cpu_s"], 1e-9),
        "paced": paced,
    }


def _pipeline_column(settings: Settings, bundle: Any, catalog: Any,
                     stream: Sequence[Interaction], n_events: int, fractions: Sequence[float],
                     paced_s: float) -> dict[str, Any]:
    """The serving code without Kafka: ``Recommender.process`` per micro-batch of ``batch_max``
    (capacity), then arrivals replayed at fractions of that capacity (latency)."""
    import torch

    from engine.recommender import Recommender

    torch.set_num_threads(max(1, settings.torch_threads))
    rec = Recommender(settings, bundle, catalog)
    supports: dict[str, bytes] = {}
    source = EventSource(stream, fresh=True)
    events = source.take(n_events)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(events), settings.batch_max):
        rec.process(events[i : i + settings.batch_max], supports)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    capacity = len(events) / wall
    paced = []
    for i, f in enumerate(fractions):
        rate = f * capacity
        chunk = source.take(_paced_count(rate, paced_s, source, len(fractions) - i))
        paced.append({"of": f"{f:g}", **_paced_in_process(rec, supports, chunk, rate,
                                                          settings.batch_max)})
    sizes = [len(v) for v in supports.values()]
    return {"events": len(events), "events_per_s": capacity, "consumer_cpu_s": cpu,
            "events_per_cpu_s": len(events) / max(cpu, 1e-9), "paced": paced,
            "bytes_per_user": {"bytes_per_user": float(np.mean(sizes)) if sizes else 0.0}}


def _paced_in_process(rec: Any, supports: dict[str, bytes], events: Sequence[Interaction],
                      rate: float, batch_max: int) -> dict[str, float]:
    """Events arrive every ``1/rate`` s; whatever has arrived (at most ``batch_max``) is one
    micro-batch; an event's latency is its batch's end minus its arrival."""
    latencies: list[float] = []
    t0 = time.perf_counter()
    due = [t0 + i / rate for i in range(len(events))]
    i = 0
    while i < len(events):
        now = time.perf_counter()
        if due[i] > now:
            time.sleep(due[i] - now)
            now = time.perf_counter()
        j = i
        while j < len(events) and j - i < batch_max and due[j] <= now:
            j += 1
        rec.process(events[i:j], supports)
        done = time.perf_counter()
        latencies.extend(1000.0 * (done - due[k]) for k in range(i, j))
        i = j
    return {"rate": rate, "events": len(events),
            "achieved_rate": len(events) / max(due[-1] - t0, 1e-9) if len(events) > 1 else rate,
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def _ratios(cols: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Column over column, for events/s and events per CPU-second; serving's p99 at 50% of its
    capacity over the echoes' p99 at that same rate."""
    out: dict[str, float] = {}
    pairs = [("serving", "echo"), ("serving", "bare"), ("echo", "bare"), ("serving", "pipeline"),
             ("state", "echo"), ("serving", "state")]
    for a, b in pairs:
        if a in cols and b in cols:
            for key in ("events_per_s", "events_per_cpu_s"):
                out[f"{a}_vs_{b}_{key}"] = cols[a][key] / max(cols[b][key], 1e-9)
    serving = cols.get("serving")
    if serving:
        half = next((p for p in serving["paced"] if p["of"] == "0.5"), None)
        for other in ("echo", "bare", "state"):
            same = next((p for p in cols.get(other, {}).get("paced", [])
                         if p["of"] == "serving/2"), None)
            if half and same:
                out[f"serving_vs_{other}_p99_at_serving_half"] = (
                    half["p99_ms"] / max(same["p99_ms"], 1e-9))
    return out


def _legacy_keys(cols: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Serving's and the Faust echo's capacity figures under the keys earlier reports used."""
    out: dict[str, Any] = {}
    for column, prefix in (("serving", ""), ("echo", "echo_")):
        c = cols.get(column)
        if c:
            out[f"{prefix}events_per_s"] = c["events_per_s"]
            out[f"{prefix}events_per_worker_cpu_s"] = c["events_per_cpu_s"]
            out[f"{prefix}worker_cpu_s"] = c["consumer_cpu_s"]
    if "serving" in cols and "echo" in cols:
        for key in ("events_per_s", "events_per_worker_cpu_s"):
            out[f"{key}_vs_echo"] = out[key] / max(out[f"echo_{key}"], 1e-9)
    return out


def render(result: dict[str, Any]) -> str:
    """The four columns as a markdown table (absolute figures are this machine's)."""
    cols = result["columns"]
    names = list(cols)
    rows = [("events/s (capacity)", lambda c: f"{c['events_per_s']:,.0f}"),
            ("events per CPU-second of the consumer", lambda c: f"{c['events_per_cpu_s']:,.0f}")]
    fractions = sorted({p["of"] for c in cols.values() for p in c["paced"]},
                       key=lambda x: (not x[0].isdigit(), x))
    for of in fractions:
        label = ("p50 / p99 ms at 50% of serving's capacity" if of == "serving/2"
                 else f"p50 / p99 ms at {float(of):.0%} of own capacity")

        def cell(c: dict[str, Any], of: str = of) -> str:
            p = next((p for p in c["paced"] if p["of"] == of), None)
            if p is None:
                return ""
            return (f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f} "
                    f"({p['achieved_rate']:,.0f}/s)")

        rows.append((label, cell))
    if "serving" in cols:
        serving = cols["serving"]
        rows.append(("events/s / serving's",
                     lambda c: f"{c['events_per_s'] / serving['events_per_s']:.2f}"))
        rows.append(("events per CPU-second / serving's",
                     lambda c: f"{c['events_per_cpu_s'] / serving['events_per_cpu_s']:.2f}"))
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(cols[n]) for n in names) + " |")
    return "\n".join(lines)


def _cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """User + system CPU seconds of each process (all its threads) and of this one."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"load_generator": sum(os.times()[:2])}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            out[name] = float("nan")
    return out


def _drain(want: set[str], sent_at: dict[str, float], deadline_s: float,
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


def _throughput(producer: Any, events: Sequence[Interaction], consumer: Any) -> dict[str, float]:
    sent_at: dict[str, float] = {}
    t0 = time.time()
    for e in events:
        sent_at[e.event_id] = time.time()
        producer.interaction(e)
    producer.flush()
    produced = time.time() - t0
    latencies, last = _drain({e.event_id for e in events}, sent_at, 600.0, consumer)
    return {"events": len(events), "events_per_s": len(events) / (last - t0),
            "produce_events_per_s": len(events) / max(produced, 1e-9),
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def _paced(producer: Any, events: Sequence[Interaction], rate: float,
           consumer: Any) -> dict[str, float]:
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
    latencies, _ = _drain({e.event_id for e in events}, sent_at, 600.0, consumer)
    return {"rate": rate, "events": len(events), "achieved_rate": len(events) / sent,
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
    }


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
            worker.load_catalog(producer, items)
            pids = {"worker": worker.proc.pid, "broker": broker_pid}
            before = _cpu_seconds(pids)
            result: dict[str, Any] = {
                "throughput": _throughput(producer, fast, consumer)}
            after = _cpu_seconds(pids)
            result["cpu"] = {f"{k}_cpu_s": after[k] - before[k] for k in after}
            result["rate"] = rate or STORAGE_PACE_FRACTION * result["throughput"]["events_per_s"]
            result["paced"] = _paced(producer, paced, result["rate"], consumer)
    finally:
        consumer.close()
        worker.stop()
    return result
