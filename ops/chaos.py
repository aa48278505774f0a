"""``kindling chaos``: SIGKILL a real worker, or the broker, while events stream in; audit.

A real ``kindling worker`` subprocess consumes from a broker (the embedded Tansu broker unless
one is given) while a producer thread sends synthetic interactions at a steady rate. At random
moments, ``kills`` times, either

* ``--kill worker``: the worker is SIGKILLed (no shutdown, no flush, no commit) and restarted; or
* ``--kill broker``: the embedded broker is SIGKILLed, left down for a moment and restarted on
  the same storage (S3: ``--broker-storage s3://BUCKET/``, a loopback S3 endpoint by default).
  The worker is *not* restarted: it must reconnect, rejoin its group and carry on by itself
  (``worker_restarts`` counts the times it died and had to be started again), and the group's
  committed offsets read before the kill must still be there after the restart.

Afterwards the audit reads Kafka itself, not the worker's word:

* **state** — the ``supports`` changelog (what a recovering worker restores): every user's
  lifetime count ``n_total`` must equal the number of events sent for them (fewer = an effect
  lost, more = an event applied twice), and the stored support set must hold exactly the user's
  most recent events, in order;
* **output** — every event has a recommendation whose ``source_event_id`` is that event
  (a redelivered event is published again: at-least-once output is allowed and counted);
* **commits** — at each kill, the group's committed offsets are read before the restart; every
  event below a committed offset must already have had its recommendation published before the
  kill (an offset committed past an unprocessed event, faust#606, would show up here), and at
  the end the committed offsets reach the end of every partition; after a broker restart no
  committed offset may be below what it was before the kill (``offsets_regressed``);
* **inputs** — every interaction is stored once in its topic (``duplicate_inputs`` counts
  events a retrying producer stored twice; the worker must still apply them once).

The recovery figure is the time from a worker's kill (worker kills) or from the broker's restart
(broker kills) to the first recommendation produced after it.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.settings import Settings
from engine.support import UserSupport, event_hash
from evaluation.synthetic import generate
from ops.process import WorkerProcess
from schemas import Interaction
from streams.broker import EmbeddedBroker, embedded_worker_settings
from streams.kafka import EventProducer, consume
from streams.topics import client_config, ensure_topics


@dataclass
class KillRecord:
    at: float
    produced_before: int
    committed: dict[int, int]
    ready_after_s: float = 0.0
    first_output_after_s: float | None = None
    # broker kills: when the broker answered again, and the committed offsets it then reported
    restarted_at: float | None = None
    committed_after: dict[int, int] | None = None

    @property
    def recovery_from(self) -> float:
        """The moment recovery is timed from: the worker's kill, or the broker's restart."""
        return self.at if self.restarted_at is None else self.restarted_at


@dataclass
class ChaosReport:
    events: int
    users: int
    target: str = "worker"
    kills: list[KillRecord] = field(default_factory=list)
    worker_restarts: int = 0
    offsets_regressed: int = 0
    duplicate_inputs: int = 0
    inputs_missing: int = 0
    outputs: int = 0
    events_without_output: int = 0
    duplicate_outputs: int = 0
    users_with_lost_effects: int = 0
    effects_lost: int = 0
    effects_applied_twice: int = 0
    support_mismatches: int = 0
    committed_past_unprocessed: int = 0
    final_uncommitted: int = 0
    recovered_in_flight: int = 0
    seconds: float = 0.0
    worker_tracebacks: int = 0
    misplaced_state_records: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.events_without_output == 0 and self.effects_lost == 0
                and self.effects_applied_twice == 0 and self.support_mismatches == 0
                and self.committed_past_unprocessed == 0 and self.final_uncommitted == 0
                and self.worker_tracebacks == 0 and self.misplaced_state_records == 0
                and self.offsets_regressed == 0 and self.inputs_missing == 0
                and (self.target == "worker" or self.worker_restarts == 0)
                and len(self.kills) > 0)

    def to_dict(self) -> dict[str, Any]:
        ready = [k.ready_after_s for k in self.kills]
        first = [k.first_output_after_s for k in self.kills if k.first_output_after_s is not None]
        return {
            "ok": self.ok,
            "target": self.target,
            "events": self.events,
            "users": self.users,
            "kills": len(self.kills),
            "worker_restarts": self.worker_restarts,
            "offsets_regressed": self.offsets_regressed,
            "duplicate_inputs": self.duplicate_inputs,
            "inputs_missing": self.inputs_missing,
            "events_lost": self.events_without_output,
            "effects_lost": self.effects_lost,
            "duplicated_applied": self.effects_applied_twice,
            "support_set_mismatches": self.support_mismatches,
            "committed_past_unprocessed": self.committed_past_unprocessed,
            "final_uncommitted": self.final_uncommitted,
            "recovered_in_flight": self.recovered_in_flight,
            "outputs": self.outputs,
            "duplicate_outputs": self.duplicate_outputs,
            "recovery_ready_s": _spread(ready),
            "recovery_first_output_s": _spread(first),
            "worker_tracebacks": self.worker_tracebacks,
            "misplaced_state_records": self.misplaced_state_records,
            "examples": self.examples,
            "seconds": round(self.seconds, 1),
            "kill_log": [
                {"at_event": k.produced_before, "ready_after_s": round(k.ready_after_s, 2),
                 "first_output_after_s": None if k.first_output_after_s is None
                 else round(k.first_output_after_s, 2),
                 "committed": {str(p): o for p, o in sorted(k.committed.items())}}
                | ({} if k.committed_after is None else {
                    "down_s": round((k.restarted_at or k.at) - k.at, 2),
                    "committed_after_restart": {
                        str(p): o for p, o in sorted(k.committed_after.items())}})
                for k in self.kills
            ],
        }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"max": round(max(values), 2), "mean": round(sum(values) / len(values), 2)}


def chaos_settings(broker_url: str, workdir: Path, base: Settings | None = None, *,
                   s3: bool = False) -> Settings:
    """Fresh topics and group per run; short timeouts so a restarted worker rejoins quickly;
    ``s3``: the broker keeps its data in S3 (longer fetch waits, streams/broker.py)."""
    tag = uuid.uuid4().hex[:6]
    return embedded_worker_settings(
        broker_url, base, s3=s3, data_dir=str(workdir / "data"), app_id=f"chaos-{tag}",
        topic_prefix=f"chaos-{tag}.", torch_threads=1,
    )


def stream_of(n_events: int, n_users: int, seed: int) -> tuple[list[Any], list[Interaction]]:
    per_user = max(2, -(-n_events // n_users) + 2)
    # A user rates an item once: long histories need a catalog several times their length.
    data = generate(n_users=n_users, n_items=max(100, n_users, 3 * per_user), seed=seed,
                    events_per_user=(per_user, per_user + 1))
    events = sorted(data.events, key=lambda e: e.ts)[:n_events]
    if len(events) < n_events:
        raise ValueError(f"synthetic log has only {len(events)} events")
    return data.items, events


def _committed(settings: Settings, topic: str, attempts: int = 10) -> dict[int, int]:
    for attempt in range(attempts):
        try:
            return _committed_once(settings, topic)
        except Exception:  # noqa: BLE001 - a broker that just restarted: ask again
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _committed_once(settings: Settings, topic: str) -> dict[int, int]:
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
    admin = KafkaAdminClient(**client_config(settings), request_timeout_ms=10000)
    try:
        if hasattr(admin, "list_group_offsets"):  # kafka-python 3.x
            offsets = admin.list_group_offsets({settings.app_id: partitions})[settings.app_id]
        else:
            offsets = admin.list_consumer_group_offsets(settings.app_id, partitions=partitions)
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if tp.topic == topic and meta.offset >= 0}


def _positions(settings: Settings, topic: str) -> tuple[dict[str, tuple[int, int]], int]:
    """event_id -> (partition, offset) as the broker stored the interactions (the last copy),
    and how many records were a second copy of an event."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **client_config(settings), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             **_audit_fetch(settings))
    out, copies = {}, 0
    try:
        for message in consumer:
            event_id = json.loads(message.value)["event_id"]
            copies += event_id in out
            out[event_id] = (message.partition, message.offset)
    finally:
        consumer.close()
    return out, copies


def _changelog(settings: Settings, topic: str) -> dict[str, list[tuple[int, int, bytes]]]:
    """key -> [(partition, offset, value)] in offset order per partition."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **client_config(settings), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             **_audit_fetch(settings))
    out: dict[str, list[tuple[int, int, bytes]]] = defaultdict(list)
    try:
        for message in consumer:
            if message.key is not None:
                out[message.key.decode()].append(
                    (message.partition, message.offset, message.value))
    finally:
        consumer.close()
    for history in out.values():
        history.sort(key=lambda r: (r[0], r[1]))
    return out


def _audit_fetch(settings: Settings) -> dict[str, int]:
    """Fetch waits for the audit's readers: long enough for a slow (S3-backed) broker to answer,
    and an idle timeout well beyond that."""
    wait = max(500, settings.fetch_max_wait_ms)
    return {"fetch_max_wait_ms": wait, "consumer_timeout_ms": max(5000, 2 * wait)}


def _end_offsets(positions: dict[str, tuple[int, int]]) -> dict[int, int]:
    ends: dict[int, int] = defaultdict(int)
    for partition, offset in positions.values():
        ends[partition] = max(ends[partition], offset + 1)
    return dict(ends)


class _Producer(threading.Thread):
    def __init__(self, settings: Settings, events: list[Interaction], rate: float) -> None:
        super().__init__(daemon=True, name="chaos-producer")
        self.settings, self.events, self.rate = settings, events, rate
        self.sent_at: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            chunk = max(1, int(self.rate / 20))
            started = time.monotonic()
            # Idempotent (kafka-python's default with acks=all) and retrying for as long as
            # delivery_timeout_ms allows: a broker restart must delay events, not drop them.
            with EventProducer(self.settings, retries=2**31 - 1,
                               delivery_timeout_ms=120_000) as producer:
                for i in range(0, len(self.events), chunk):
                    for event in self.events[i : i + chunk]:
                        producer.interaction(event)
                    producer.flush()
                    now = time.time()
                    self.sent_at.extend([now] * len(self.events[i : i + chunk]))
                    delay = started + (i + chunk) / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def run_chaos(settings: Settings, n_events: int, kills: int, *, n_users: int = 150,
              seed: int = 0, rate: float | None = None, log_path: Path | None = None,
              settle_s: float = 60.0, deadline_s: float = 900.0,
              broker: EmbeddedBroker | None = None,
              down_s: tuple[float, float] = (0.5, 3.0)) -> ChaosReport:
    """Produce ``n_events`` while killing ``kills`` times the worker (``broker`` None) or
    ``broker`` (an embedded broker on persistent storage, down for ``down_s`` seconds each
    time); audit.

    The audit starts once every event has a recommendation, or no new one arrived for
    ``settle_s`` (longer than a restart's recovery, which took up to 26 s on a loaded machine:
    a shorter wait audited a worker that was still recovering and counted its backlog as lost),
    or after ``deadline_s``."""
    if broker is not None and not broker.persistent:
        raise ValueError("killing a memory-storage broker loses every topic: use S3 storage")
    rng = random.Random(seed)
    started = time.monotonic()
    items, events = stream_of(n_events, n_users, seed)
    report = ChaosReport(events=len(events), users=len({e.user_id for e in events}),
                         target="worker" if broker is None else "broker")
    topic = settings.topic("interactions")
    ensure_topics(settings)
    log_path = log_path or Path(settings.data_dir).parent / "worker.log"
    worker = WorkerProcess(settings, log_path).start()
    with EventProducer(settings) as producer:
        for item in items:
            producer.item(item)
    # Spread production over the kill cycles (a restart takes ~10 s here) and kill when the
    # producer passes a random point in each 1/(kills+1) slice of the stream, so every kill hits
    # live traffic; a slice already passed during the last restart is hit after a short random
    # delay (the worker is then busy with the backlog, which is another moment worth hitting).
    rate = rate or len(events) / (12.0 * kills + 8.0)
    cuts = [int(len(events) * (k + rng.uniform(0.3, 0.9)) / (kills + 1)) for k in range(kills)]
    feeder = _Producer(settings, events, rate)
    feeder.start()
    try:
        for cut in cuts:
            while len(feeder.sent_at) < cut and feeder.is_alive():
                time.sleep(0.05)
            time.sleep(rng.uniform(0.2, 1.5))
            if broker is None:
                at = time.time()
                worker.kill()
                record = KillRecord(at, len(feeder.sent_at), _committed(settings, topic))
                worker = WorkerProcess(settings, log_path).start()
                record.ready_after_s = time.time() - at
            else:
                record = _kill_broker(broker, settings, topic, len(feeder.sent_at),
                                      rng.uniform(*down_s))
                report.offsets_regressed += sum(
                    max(0, offset - record.committed_after.get(p, -1))  # type: ignore[union-attr]
                    for p, offset in record.committed.items())
            report.kills.append(record)
            if broker is not None and worker.proc is not None and worker.proc.poll() is not None:
                report.worker_restarts += 1  # it died on its own: start it so the audit can run
                worker = WorkerProcess(settings, log_path).start()
        feeder.join(deadline_s)
        if broker is not None and worker.proc is not None and worker.proc.poll() is not None:
            report.worker_restarts += 1
            worker = WorkerProcess(settings, log_path).start()
        if feeder.error is not None:
            raise RuntimeError(f"producer failed: {feeder.error!r}")
        wanted = {e.event_id for e in events}
        recs = []
        for _, value in consume(settings, settings.topic("recommendations"),
                                idle_timeout_s=settle_s, deadline_s=deadline_s):
            recs.append(json.loads(value))
            if len(recs) >= len(events) and wanted <= {r["source_event_id"] for r in recs}:
                break
        _await_final_commit(settings, topic, settle_s)
    finally:
        worker.stop()
    report.worker_tracebacks = worker.tail(10_000_000).count("Traceback")
    _audit(report, settings, events, feeder.sent_at, recs, topic)
    report.seconds = time.monotonic() - started
    return report


def _await_final_commit(settings: Settings, topic: str, timeout_s: float) -> None:
    """Give the worker up to ``timeout_s`` to commit past the last event before it is stopped.
    It commits every second; stopping it right after the last recommendation arrived audited
    the commit still pending as ``final_uncommitted`` (seen on a loaded machine). A group that
    is stuck still fails: its offsets never get there."""
    ends = _end_offsets(_positions(settings, topic)[0])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        committed = _committed(settings, topic)
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return
        time.sleep(0.5)


def _kill_broker(broker: EmbeddedBroker, settings: Settings, topic: str, produced: int,
                 down_s: float) -> KillRecord:
    """SIGKILL the broker, wait ``down_s``, restart it on the same storage; the committed
    offsets are read just before the kill and again once it answers."""
    committed = _committed(settings, topic)
    at = time.time()
    broker.kill()
    time.sleep(down_s)
    broker.start()
    record = KillRecord(at, produced, committed, restarted_at=time.time())
    record.ready_after_s = record.restarted_at - at  # type: ignore[operator]
    record.committed_after = _committed(settings, topic)
    return record


def _audit(report: ChaosReport, settings: Settings, events: list[Interaction],
           sent_at: list[float], recs: list[dict[str, Any]], topic: str) -> None:
    first_output: dict[str, float] = {}
    for rec in recs:
        source = rec["source_event_id"]
        first_output[source] = min(first_output.get(source, rec["produced_at"]), rec["produced_at"])
    report.outputs = len(recs)
    report.duplicate_outputs = len(recs) - len(first_output)
    report.events_without_output = sum(e.event_id not in first_output for e in events)

    # Recovery: how long after each kill the first new recommendation appeared; and which
    # events were in flight at a kill (sent before it, output only after it).
    outputs = sorted(first_output.values())
    recovered: set[str] = set()
    for kill in report.kills:
        later = [t for t in outputs if t > kill.recovery_from]
        kill.first_output_after_s = (later[0] - kill.recovery_from) if later else None
        for e, when in zip(events, sent_at, strict=False):
            if when <= kill.at and first_output.get(e.event_id, 0.0) > kill.at:
                recovered.add(e.event_id)
    report.recovered_in_flight = len(recovered)

    # Commits: nothing below a committed offset may lack an output published before the kill.
    positions, report.duplicate_inputs = _positions(settings, topic)
    # A sent (acknowledged) event the broker no longer has: lost by the broker or the producer,
    # not by the worker.
    report.inputs_missing = sum(e.event_id not in positions for e in events)
    for e in events:
        if e.event_id not in first_output and len(report.examples) < 5:
            report.examples.append({"event_without_output": e.event_id, "user": e.user_id,
                                    "stored_at": positions.get(e.event_id)})
    for kill in report.kills:
        for e in events:
            partition, offset = positions.get(e.event_id, (-1, -1))
            if offset >= 0 and offset < kill.committed.get(partition, 0):
                if first_output.get(e.event_id, float("inf")) > kill.at:
                    report.committed_past_unprocessed += 1
    final = _committed(settings, topic)
    report.final_uncommitted = sum(max(0, end - final.get(p, 0))
                                   for p, end in _end_offsets(positions).items())

    # State: the supports changelog, latest record per user.
    # A user's records must all be in the changelog partition of the user's interactions
    # (co-partitioning); the latest record is the last one *in that partition*.
    records = _changelog(settings, f"{settings.app_id}-supports-changelog")
    user_partition = {}
    for e in events:
        if e.event_id in positions:  # the home partition: where the user's events are stored
            user_partition.setdefault(e.user_id, positions[e.event_id][0])
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    sent = Counter({u: len(evs) for u, evs in by_user.items()})
    for user, evs in by_user.items():
        history = records.get(user, [])
        home = [value for partition, _, value in history
                if partition == user_partition.get(user, -1)]
        report.misplaced_state_records += len(history) - len(home)
        support = UserSupport.from_bytes(home[-1] if home else None)
        diff = support.n_total - sent[user]
        if diff < 0:
            report.users_with_lost_effects += 1
            report.effects_lost -= diff
        report.effects_applied_twice += max(0, diff)
        expected = [event_hash(e.event_id) for e in evs[-settings.support_capacity :]]
        got = [s.event_hash for s in support.events]
        if got != expected:
            report.support_mismatches += 1
        if (diff or got != expected) and len(report.examples) < 5:
            index = {event_hash(e.event_id): i for i, e in enumerate(evs)}
            report.examples.append({
                "user": user, "sent": sent[user], "n_total": support.n_total,
                "changelog_records": len(history), "records_outside_home": len(history) - len(home),
                "support_positions": [index.get(h, -1) for h in got],
            })


#: Where ``--kill broker`` keeps the broker's data when no S3 storage was configured.
DEFAULT_CHAOS_STORAGE = "s3://kindling-chaos/"


def broker_for_kills(settings: Settings) -> EmbeddedBroker:
    """The embedded broker ``--kill broker`` kills: on the configured S3 storage, else on a
    bucket of a loopback S3 endpoint (memory storage would lose everything at each kill)."""
    if settings.broker != Settings().broker:
        raise ValueError("--kill broker kills the embedded broker: do not pass --broker")
    if not settings.broker_storage.startswith("s3://"):
        settings = settings.replace(broker_storage=DEFAULT_CHAOS_STORAGE,
                                    s3_endpoint=settings.s3_endpoint or "local")
    return EmbeddedBroker.from_settings(settings)


def run(settings: Settings, args: Any) -> int:
    """The CLI entry point: embedded broker unless ``--broker`` names one (worker kills)."""
    from streams.broker import broker_url

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kindling-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    common = {"n_users": args.users, "seed": settings.seed, "log_path": workdir / "worker.log"}
    if getattr(args, "kill", "worker") == "broker":
        with broker_for_kills(settings) as broker:
            chaos = chaos_settings(broker.url, workdir, settings, s3=True)
            report = run_chaos(chaos, args.events, args.kills, broker=broker, **common)
    else:
        embedded_s3 = settings.broker == Settings().broker and \
            settings.broker_storage.startswith("s3://")
        with broker_url(settings) as url:
            chaos = chaos_settings(url, workdir, settings, s3=embedded_s3)
            report = run_chaos(chaos, args.events, args.kills, **common)
    out = report.to_dict() | {"workdir": str(workdir)}
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        for key in ("target", "events", "users", "kills", "worker_restarts", "events_lost",
                    "effects_lost",
                    "duplicated_applied", "support_set_mismatches", "committed_past_unprocessed",
                    "final_uncommitted", "offsets_regressed", "misplaced_state_records",
                    "recovered_in_flight", "inputs_missing", "duplicate_inputs",
                    "duplicate_outputs",
                    "recovery_ready_s", "recovery_first_output_s", "seconds", "ok"):
            print(f"{key:28s} {out[key]}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0 if report.ok else 1
