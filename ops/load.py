"""``kindling load``: overload a real worker, then check it recovers without dropping anything.

A real ``kindling worker`` subprocess consumes from a broker (the embedded Tansu broker unless one
is given) in three phases:

1. **sustainable rate** — unless the caller gives one, a short saturation run (like ``kindling
   bench kafka``): ``saturation_events`` are produced as fast as the producer goes, and the rate
   is the events divided by the time from the first send to the last recommendation read back;
2. **burst** — produce at ``factor`` × that rate for ``seconds`` (the worker falls behind: lag
   grows, which is the point);
3. **drain** — stop producing and wait until the consumer group's lag is 0 again (with a
   timeout).

Every second the driver samples the worker's resident memory (``VmRSS`` in
``/proc/<pid>/status``), the group's lag (end offsets minus the group's committed offsets, read
from the broker with kafka-python, not from the worker) and the recommendations read back. The
audit is by ``source_event_id``, like ``kindling chaos``: every event sent must have a
recommendation (dropped = 0), and nothing may go to the dead-letter topic. Bounded memory is
judged from the RSS slope over the second half of the burst, when the backlog is largest: a
buffer that grows with the lag would show there.

The user population is fixed (``users``), so state does not grow with time once every user has
a full support set; RSS growth after that is growth of something else.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.settings import Settings
from ops.process import WorkerProcess
from schemas import Interaction
from streams.broker import embedded_worker_settings
from streams.topics import client_config, ensure_topics

#: The worker encodes recommendations as compact JSON; the driver only needs the source event id
#: and reads thousands per second on a shared core, so it pulls the id out without a full parse.
_SOURCE = re.compile(rb'"source_event_id":"([^"]*)"')


@dataclass
class Sample:
    """One second of the run, as the driver saw it."""

    t: float  # seconds since the burst started (negative: before it)
    phase: str  # "burst" or "drain"
    sent: int
    received: int  # distinct events with a recommendation
    lag: int | None  # end offsets - committed offsets, summed over partitions
    rss_mib: float | None


@dataclass
class LoadReport:
    sustainable_rate: float
    rate_source: str  # "measured" or "given"
    factor: float
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    offered_rate: float = 0.0
    events_sent: int = 0
    events_with_recommendation: int = 0
    unanswered: int = 0  # sent, no recommendation read back when the run ended
    duplicate_outputs: int = 0
    dlq: int = 0
    lag_recovered: bool = False
    lag_zero_after_s: float | None = None
    worker_tracebacks: int = 0
    saturation: dict[str, float] = field(default_factory=dict)
    workdir: str = ""

    def _burst(self) -> list[Sample]:
        return [s for s in self.samples if s.phase == "burst"]

    @property
    def consume_rate(self) -> float:
        """Distinct events answered per second during the burst (what the worker kept up with)."""
        burst = self._burst()
        if len(burst) < 2 or burst[-1].t <= burst[0].t:
            return 0.0
        return (burst[-1].received - burst[0].received) / (burst[-1].t - burst[0].t)

    @property
    def dropped(self) -> int | None:
        """Events that never got a recommendation although the group's lag returned to 0 (every
        offset committed); unknown (None) if the lag never recovered within the timeout."""
        return self.unanswered if self.lag_recovered else None

    @property
    def peak_lag(self) -> int:
        return max((s.lag for s in self.samples if s.lag is not None), default=0)

    def rss(self) -> dict[str, float | None]:
        """RSS at the start of the burst, its peak and at the end, and the slope (MiB/min) of a
        least-squares line through the second half of the burst."""
        values = [s for s in self.samples if s.rss_mib is not None]
        if not values:
            return {"start_mib": None, "peak_mib": None, "end_mib": None,
                    "slope_last_half_mib_per_min": None}
        burst = [s for s in values if s.phase == "burst"]
        half = [s for s in burst if s.t >= self.seconds / 2]
        slope = None
        if len(half) >= 3:
            t = np.array([s.t for s in half])
            y = np.array([s.rss_mib for s in half], dtype=float)
            slope = float(np.polyfit(t, y, 1)[0]) * 60.0
        return {
            "start_mib": round(burst[0].rss_mib if burst else values[0].rss_mib, 1),
            "peak_mib": round(max(s.rss_mib for s in values), 1),
            "end_burst_mib": round(burst[-1].rss_mib, 1) if burst else None,
            "end_mib": round(values[-1].rss_mib, 1),
            "slope_last_half_mib_per_min": None if slope is None else round(slope, 2),
        }

    @property
    def ok(self) -> bool:
        return (self.events_sent > 0 and self.unanswered == 0 and self.dlq == 0
                and self.lag_recovered and self.worker_tracebacks == 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sustainable_rate": round(self.sustainable_rate, 1),
            "rate_source": self.rate_source,
            "factor": self.factor,
            "target_rate": round(self.sustainable_rate * self.factor, 1),
            "offered_rate": round(self.offered_rate, 1),
            "consume_rate_during_burst": round(self.consume_rate, 1),
            "burst_seconds": self.seconds,
            "peak_lag": self.peak_lag,
            "lag_recovered": self.lag_recovered,
            "lag_zero_after_s": None if self.lag_zero_after_s is None
            else round(self.lag_zero_after_s, 1),
            "rss": self.rss(),
            "events_sent": self.events_sent,
            "events_with_recommendation": self.events_with_recommendation,
            "dropped": self.dropped,
            "unanswered_at_end": self.unanswered,
            "duplicate_outputs": self.duplicate_outputs,
            "dlq": self.dlq,
            "worker_tracebacks": self.worker_tracebacks,
            "saturation": self.saturation,
            "workdir": self.workdir,
            "samples": [
                {"t": round(s.t, 2), "phase": s.phase, "sent": s.sent, "received": s.received,
                 "lag": s.lag, "rss_mib": s.rss_mib}
                for s in self.samples
            ],
        }


def worker_rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` (``VmRSS``), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


class GroupLag:
    """The group's lag on one topic, from the broker: end offsets minus committed offsets.

    A partition the group never committed counts from 0 (the topics here are fresh per run).
    On the embedded broker the end offset can be short by the tail of the last record batch
    (see :mod:`workers.recovery_compat`), so "lag 0" is only believed together with every
    recommendation read back.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        self.group = settings.app_id
        self.partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        self._consumer = KafkaConsumer(**client_config(settings), group_id=None,
                                       enable_auto_commit=False)
        self._admin = KafkaAdminClient(**client_config(settings), request_timeout_ms=10000)

    def end_offsets(self) -> dict[int, int]:
        ends = self._consumer.end_offsets(self.partitions)
        return {tp.partition: int(off) for tp, off in ends.items()}

    def committed(self) -> dict[int, int]:
        if hasattr(self._admin, "list_group_offsets"):  # kafka-python 3.x
            got = self._admin.list_group_offsets({self.group: self.partitions})[self.group]
        else:
            got = self._admin.list_consumer_group_offsets(self.group, partitions=self.partitions)
        return {tp.partition: meta.offset for tp, meta in got.items() if meta.offset >= 0}

    def __call__(self) -> int | None:
        try:
            ends, done = self.end_offsets(), self.committed()
        except Exception:  # noqa: BLE001 - a sample lost to a slow broker is reported as None
            return None
        return sum(max(0, end - done.get(p, 0)) for p, end in ends.items())

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()


class Outputs(threading.Thread):
    """Reads the recommendations topic from the beginning; counts distinct source events."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(daemon=True, name="load-outputs")
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(topic, **client_config(settings), group_id=None,
                                       auto_offset_reset="earliest", enable_auto_commit=False)
        self.seen: set[bytes] = set()
        self.messages = 0
        self.last_at = 0.0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for records in self._consumer.poll(timeout_ms=200).values():
                    ids = [m.group(1) if (m := _SOURCE.search(r.value)) else
                           json.loads(r.value)["source_event_id"].encode() for r in records]
                    with self._lock:
                        self.seen.update(ids)
                        self.messages += len(ids)
                        self.last_at = time.time()
        finally:
            self._consumer.close()

    def received(self) -> int:
        with self._lock:
            return len(self.seen)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class EventStream:
    """Event ``i`` of the run: a fixed population's synthetic events, cycled, with a fresh
    ``event_id`` per send (``<tag>-<i>``) so the audit can tell every event apart."""

    def __init__(self, users: int, items: int, seed: int) -> None:
        from evaluation.synthetic import generate

        data = generate(n_users=users, n_items=items, events_per_user=(10, 30), seed=seed,
                        new_item_fraction=0.0)
        self.items = data.items
        self.base = sorted(data.events, key=lambda e: (e.ts, e.event_id))
        self.tag = uuid.uuid4().hex[:6]
        self.t0 = time.time()

    def event(self, i: int) -> Interaction:
        e = self.base[i % len(self.base)]
        return Interaction(event_id=f"{self.tag}-{i}", user_id=e.user_id, item_id=e.item_id,
                           kind=e.kind, value=e.value, ts=self.t0 + i * 1e-3, domain=e.domain)

    def event_id(self, i: int) -> bytes:
        return f"{self.tag}-{i}".encode()


class PacedProducer(threading.Thread):
    """Sends events ``start, start+1, ...`` at ``rate``/s for ``seconds``, in 50 ms chunks."""

    def __init__(self, settings: Settings, stream: EventStream, start: int, rate: float,
                 seconds: float) -> None:
        super().__init__(daemon=True, name="load-producer")
        self.settings, self.stream, self.start_at = settings, stream, start
        self.rate, self.seconds = rate, seconds
        self.sent = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        from streams.kafka import EventProducer

        try:
            chunk = max(1, round(self.rate / 20))
            total = int(self.rate * self.seconds)
            with EventProducer(self.settings) as producer:
                started = time.monotonic()
                while self.sent < total:
                    n = min(chunk, total - self.sent)
                    for i in range(self.start_at + self.sent, self.start_at + self.sent + n):
                        producer.interaction(self.stream.event(i))
                    producer.flush()
                    self.sent += n
                    delay = started + self.sent / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.elapsed = time.monotonic() - started
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def load_settings(broker_url: str, workdir: Path, base: Settings | None = None) -> Settings:
    """Fresh topics and group per run; no retraining (its child would compete for the CPU and
    its RSS is not the worker's)."""
    tag = uuid.uuid4().hex[:6]
    return embedded_worker_settings(
        broker_url, base, data_dir=str(workdir / "data"), app_id=f"load-{tag}",
        topic_prefix=f"load-{tag}.", model_dir="", retrain_interval_s=0.0, torch_threads=1,
    )


def _saturate(settings: Settings, stream: EventStream, n: int, outputs: Outputs,
              deadline_s: float) -> dict[str, float]:
    """Produce ``n`` events at once; events/s = ``n`` / (first send → last recommendation)."""
    from streams.kafka import EventProducer

    before = outputs.received()
    t0 = time.time()
    with EventProducer(settings) as producer:
        for i in range(n):
            producer.interaction(stream.event(i))
    produced_s = time.time() - t0
    deadline = time.monotonic() + deadline_s
    while outputs.received() < before + n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"saturation run: only {outputs.received() - before} of {n} "
                               f"recommendations within {deadline_s:.0f} s")
        time.sleep(0.1)
    seconds = outputs.last_at - t0
    return {"events": n, "seconds": round(seconds, 2), "events_per_s": round(n / seconds, 1),
            "produce_s": round(produced_s, 2)}


def _wait_lag_zero(lag: GroupLag, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lag() == 0:
            return True
        time.sleep(0.5)
    return False


def run_load(
    settings: Settings,
    *,
    rate: float | None = None,
    factor: float = 2.0,
    seconds: float = 180.0,
    saturation_events: int = 20_000,
    users: int = 5000,
    items: int = 2000,
    train_steps: int = 100,
    drain_timeout_s: float | None = None,
    log_path: Path | None = None,
    progress: Callable[[Sample], None] | None = None,
) -> LoadReport:
    """The three phases on a fresh topic set; see the module docstring."""
    from engine.catalog import Catalog
    from engine.features import HashingFeaturizer
    from engine.trainer import save_bundle, train_bundle
    from streams.kafka import EventProducer

    stream = EventStream(users, items, settings.seed)
    if train_steps > 0:  # the worker serves a trained model, as in `kindling bench kafka`
        catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
        catalog.upsert(stream.items)
        trained = train_bundle(settings, stream.base[: len(stream.base) // 3], catalog,
                               steps=train_steps, seed=settings.seed)
        save_bundle(trained.bundle, settings.data_dir)
    ensure_topics(settings)
    log_path = log_path or Path(settings.data_dir).parent / "worker.log"
    worker = WorkerProcess(settings, log_path).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    outputs = Outputs(settings, settings.topic("recommendations"))
    outputs.start()
    lag = GroupLag(settings, settings.topic("interactions"))
    report = LoadReport(sustainable_rate=rate or 0.0, rate_source="given" if rate else "measured",
                        factor=factor, seconds=seconds, workdir=str(Path(settings.data_dir).parent))
    try:
        with EventProducer(settings) as producer:
            worker.load_catalog(producer, stream.items)  # before the first event
        sent = 0
        if not rate:
            report.saturation = _saturate(settings, stream, saturation_events, outputs, 600.0)
            report.sustainable_rate = report.saturation["events_per_s"]
            sent = saturation_events
            _wait_lag_zero(lag, 60.0)
        base_received = outputs.received()
        target = report.sustainable_rate * factor
        feeder = PacedProducer(settings, stream, sent, target, seconds)
        t0 = time.monotonic()
        feeder.start()
        tick = 0

        def sample(phase: str) -> Sample:
            s = Sample(time.monotonic() - t0, phase, feeder.sent,
                       outputs.received() - base_received, lag(), worker_rss_mib(pid))
            report.samples.append(s)
            if progress is not None:
                progress(s)
            return s

        while feeder.is_alive():
            tick += 1
            time.sleep(max(0.0, t0 + tick - time.monotonic()))
            sample("burst")
        if feeder.error is not None:
            raise RuntimeError(f"producer failed: {feeder.error!r}")
        burst_end = time.monotonic() - t0
        report.offered_rate = feeder.sent / feeder.elapsed if feeder.elapsed else 0.0
        report.events_sent = feeder.sent
        # Drain: three times what the backlog would take at the rate achieved during the burst.
        backlog = report.samples[-1].lag if report.samples and report.samples[-1].lag else 0
        timeout = drain_timeout_s or max(60.0, 3.0 * backlog / max(report.consume_rate, 1.0))
        while time.monotonic() - t0 - burst_end < timeout:
            tick += 1
            time.sleep(max(0.0, t0 + tick - time.monotonic()))
            s = sample("drain")
            if s.lag == 0 and s.received >= feeder.sent:
                report.lag_recovered = True
                report.lag_zero_after_s = s.t - burst_end
                break
        # Outputs still in flight (published but not yet read) are not drops: wait for quiet.
        quiet = time.monotonic() + 10.0
        while outputs.received() - base_received < feeder.sent and time.monotonic() < quiet:
            time.sleep(0.2)
    finally:
        outputs.stop()
        dlq_ends = _dlq_count(settings)
        lag.close()
        worker.stop()
    wanted = {stream.event_id(i) for i in range(sent, sent + report.events_sent)}
    report.events_with_recommendation = len(wanted & outputs.seen)
    report.unanswered = len(wanted) - report.events_with_recommendation
    report.duplicate_outputs = outputs.messages - len(outputs.seen)
    report.dlq = dlq_ends
    report.worker_tracebacks = worker.tail(10_000_000).count("Traceback")
    return report


def _dlq_count(settings: Settings) -> int:
    """Records in the (fresh, per-run) dead-letter topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(settings.topic("dlq"), p) for p in range(settings.partitions)]
        return int(sum(consumer.end_offsets(tps).values()))
    finally:
        consumer.close()


def _print_sample(s: Sample) -> None:
    if int(s.t) % 10 == 0 or s.phase == "drain" and int(s.t) % 5 == 0:
        print(f"  t={s.t:6.1f}s {s.phase:5s} sent={s.sent:8d} answered={s.received:8d} "
              f"lag={s.lag!s:>7s} rss={s.rss_mib or 0:7.1f} MiB", flush=True)


def run(settings: Settings, args: Any) -> int:
    """The CLI entry point: embedded broker unless ``--broker`` names one."""
    from streams.broker import broker_url

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kindling-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with broker_url(settings) as url:
        report = run_load(
            load_settings(url, workdir, settings), rate=args.rate_per_s, factor=args.factor,
            seconds=args.seconds, saturation_events=args.saturation_events, users=args.users,
            items=args.catalog_items, train_steps=args.steps,
            drain_timeout_s=args.drain_timeout_s, log_path=workdir / "worker.log",
            progress=None if args.json else _print_sample,
        )
    out = report.to_dict()
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "samples"}), flush=True)
    else:
        for key in ("sustainable_rate", "rate_source", "target_rate", "offered_rate",
                    "consume_rate_during_burst", "burst_seconds", "peak_lag", "lag_recovered",
                    "lag_zero_after_s", "rss", "events_sent", "events_with_recommendation",
                    "dropped", "unanswered_at_end", "duplicate_outputs", "dlq",
                    "worker_tracebacks", "ok"):
            print(f"{key:28s} {out[key]}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0 if report.ok else 1
