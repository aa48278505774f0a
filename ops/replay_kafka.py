"""Replay through the real thing: the embedded broker and a ``kindling worker`` process.

:class:`KafkaRunner` has the interface of :class:`evaluation.runners.KindlingRunner` for the
prequential protocol. It trains exactly like the in-process runner (same ``train_bundle``, same
seed), saves that model as the worker's first version, then streams the items, the users' earlier
events and the evaluated events through Kafka and reads the recommendations topic back.

What is compared, and the one thing the worker cannot provide: the list "before" a stream event is
the recommendation the worker published after the user's *previous* event. A user whose first
event ever is in the stream has no previous recommendation (the worker publishes only in response
to events); that list is the model's prior for the user, computed in-process by the same model
version, and counted in ``info["prior_lists"]``. Every other list comes from the topic.

Scale-out (``workers=2`` or more): the first worker starts alone; the others join the same
consumer group *while events are flowing* (the stream is trickled until each has joined), so
partitions move between processes mid-stream and the newcomers restore the users' state from the
changelogs. Each worker has its own data dir (its own RocksDB), as on separate hosts. An event
whose offset was not committed before its partition moved is processed again and its
recommendation published twice (at-least-once output); ``info["duplicate_outputs"]`` counts the
extra copies and ``info["differing_duplicates"]`` those whose items or model version differ from
the first copy. ``info["assigned_partitions"]`` is each worker's ``/health`` at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from evaluation.runners import KindlingRunner
from schemas import Interaction, Item, User

logger = logging.getLogger(__name__)


def via_kafka(workers: int = 1, **options: Any) -> Any:
    """A ``serve_via`` hook for :func:`evaluation.replay.replay`: each Kindling learner is served
    by :class:`KafkaRunner` (``workers`` processes in one consumer group)."""

    def wrap(runner: KindlingRunner, log: Any) -> KafkaRunner:
        return KafkaRunner(runner, log.items, workers=workers, **options)

    wrap.label = "kafka"  # type: ignore[attr-defined]
    return wrap



class KafkaRunner:
    """Prequential replay through the embedded broker and a worker process."""

    def __init__(
        self,
        inner: KindlingRunner,
        items: Sequence[Item],
        *,
        broker_url: str | None = None,
        workdir: str | Path | None = None,
        deadline_s: float = 600.0,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.inner = inner
        self.name = inner.name
        self.items = list(items)
        self.broker_url = broker_url
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kindling-vk-"))
        self.deadline_s = deadline_s
        self.latencies_ms: list[float] = []
        self.info: dict[str, Any] = {"kind": "kindling-via-kafka"}
        self.workers = workers
        self.recommendations: dict[str, list[str]] = {}
        self.versions: dict[str, str] = {}  # event id -> model_version of its recommendation
        # event id -> the 2nd, 3rd... copies published for it (items, model_version)
        self.extra_copies: dict[str, list[tuple[list[str], str]]] = {}

    # KindlingRunner's interface -------------------------------------------------------------
    @property
    def rec(self) -> Any:
        return self.inner.rec

    def fit(self, train: Sequence[Interaction]) -> None:
        self.inner.fit(train)
        self.info.update(self.inner.info)
        self.info["kind"] = "kindling-via-kafka"

    def with_top_k(self, k: int, capacity: int) -> None:
        self.inner.with_top_k(k, capacity)

    def stream(
        self, warm: Sequence[Interaction], events: Sequence[Interaction], k: int
    ) -> Iterator[list[str]]:
        active = {e.user_id for e in events}
        history = [e for e in warm if e.user_id in active]
        recs = self._serve(history + list(events))
        self.recommendations = recs
        previous: dict[str, str] = {}
        for e in history:
            previous[e.user_id] = e.event_id
        priors = 0
        for e in events:
            before = previous.get(e.user_id)
            if before is None:
                priors += 1
                yield self._prior(e)[:k]
            else:
                yield recs[before][:k]
            previous[e.user_id] = e.event_id
        self.info["prior_lists"] = priors
        self.info["topic_lists"] = len(events) - priors

    # ---------------------------------------------------------------------------------------
    def _prior(self, e: Interaction) -> list[str]:
        from engine.support import UserSupport

        snap = self.inner.rec.snapshot(e, UserSupport(), False)
        return self.inner.rec.rank([snap], self.inner.profile_of)[0].item_ids()

    def _serve(self, events: Sequence[Interaction]) -> dict[str, list[str]]:
        """Send ``events`` through a worker; return ``event_id -> recommended item ids``."""
        from streams.broker import EmbeddedBroker

        if self.broker_url:
            return self._serve_on(self.broker_url, events)
        with EmbeddedBroker() as broker:
            return self._serve_on(broker.url, events)

    def _serve_on(self, broker_url: str, events: Sequence[Interaction]) -> dict[str, list[str]]:
        from engine.bundle import versions_dir
        from engine.trainer import save_bundle
        from ops.process import WorkerProcess
        from streams.broker import embedded_worker_settings, free_port
        from streams.kafka import EventProducer, consume
        from streams.topics import ensure_topics

        run = uuid.uuid4().hex[:8]
        settings = embedded_worker_settings(
            broker_url, self.inner.settings, data_dir=str(self.workdir / run),
            app_id=f"replay-{run}", topic_prefix=f"replay-{run}.", model_dir="",
            retrain_interval_s=0.0,
        )
        save_bundle(self.inner.rec.bundle, settings.data_dir)
        ensure_topics(settings)
        # One data dir (RocksDB) per process, as on separate hosts; the same model version.
        configs, logs = [settings], [self.workdir / f"worker-{run}.log"]
        for k in range(2, self.workers + 1):
            data_dir = self.workdir / f"{run}-w{k}"
            shutil.copytree(versions_dir(settings.data_dir), versions_dir(data_dir))
            configs.append(settings.replace(data_dir=str(data_dir)))
            logs.append(self.workdir / f"worker-{run}-w{k}.log")
        if self.workers > 1:  # /health tells which partitions each process holds
            configs = [c.replace(metrics_port=free_port(), metrics_host="127.0.0.1")
                       for c in configs]
        procs = [WorkerProcess(configs[0], logs[0]).start()]
        sent_at: dict[str, float] = {}
        out: dict[str, list[str]] = {}
        copies: dict[str, int] = {}
        differing = 0
        started = time.perf_counter()
        try:
            with EventProducer(settings) as producer:
                users = {e.user_id for e in events}
                for user_id in sorted(users):
                    attributes = self.inner.profile_of(user_id)
                    if attributes:
                        producer.user(User(user_id=user_id, attributes=dict(attributes)))
                procs[0].load_catalog(producer, self.items)
                sent = 0
                for k in range(1, self.workers):
                    # The first quarter goes to the first worker alone; each newcomer joins
                    # while a slice of the middle half is trickled in.
                    if sent == 0:
                        sent = self._send(producer, events, 0, len(events) // 4, sent_at)
                    stop = len(events) // 4 + k * (len(events) // 2) // (self.workers - 1)
                    sent = self._join_while_sending(
                        WorkerProcess(configs[k], logs[k]), procs, producer, events, sent, stop,
                        sent_at)
                self._send(producer, events, sent, len(events), sent_at)
            want = {e.event_id for e in events}
            for _, raw in consume(settings, settings.topic("recommendations"), idle_timeout_s=30,
                                  deadline_s=self.deadline_s):
                doc = json.loads(raw)
                source = doc["source_event_id"]
                if source not in want:
                    continue
                items = [i["item_id"] for i in doc["items"]]
                copies[source] = copies.get(source, 0) + 1
                if source in out:
                    self.extra_copies.setdefault(source, []).append(
                        (items, doc["model_version"]))
                    differing += (items != out[source]
                                  or doc["model_version"] != self.versions[source])
                    continue
                out[source] = items
                self.versions[source] = doc["model_version"]
                self.latencies_ms.append(1000.0 * (doc["produced_at"] - sent_at[source]))
                if len(out) == len(want):
                    break
            if self.workers > 1:
                self.info["assigned_partitions"] = [_health(c)["assigned_partitions"]
                                                    for c in configs]
        finally:
            for proc in procs:
                proc.stop()
        self.info["kafka_seconds"] = time.perf_counter() - started
        self.info["kafka_events"] = len(events)
        self.info["worker_processes"] = self.workers
        self.info["duplicate_outputs"] = sum(copies.values()) - len(copies)
        self.info["differing_duplicates"] = differing
        self.info["worker_logs"] = [str(p) for p in logs]
        missing = len(events) - len(out)
        self.info["missing_event_ids"] = [e.event_id for e in events if e.event_id not in out]
        if missing:
            raise RuntimeError(f"{missing} of {len(events)} events got no recommendation "
                               f"through Kafka (worker logs: {logs})")
        return out

    @staticmethod
    def _send(producer: Any, events: Sequence[Interaction], start: int, stop: int,
              sent_at: dict[str, float]) -> int:
        for e in events[start:stop]:
            sent_at[e.event_id] = time.time()
            producer.interaction(e)
        producer.flush()
        return max(start, stop)

    def _join_while_sending(self, worker: Any, procs: list[Any], producer: Any,
                            events: Sequence[Interaction], start: int, stop: int,
                            sent_at: dict[str, float]) -> int:
        """Start ``worker`` and trickle ``events[start:stop]`` (spread over up to 40 s) until it
        is ready, so its join rebalances the group while events flow; then send the rest of
        the slice. Returns the index reached."""
        errors: list[BaseException] = []

        def start_worker() -> None:
            try:
                procs.append(worker.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        joiner = threading.Thread(target=start_worker, daemon=True, name="replay-join")
        joiner.start()
        step = max(1, (stop - start) // 400)
        sent = start
        while joiner.is_alive() and sent < stop:
            sent = self._send(producer, events, sent, min(stop, sent + step), sent_at)
            time.sleep(0.1)
        joiner.join()
        if errors:
            raise errors[0]
        self.info.setdefault("sent_before_join_ready", []).append(sent)
        return self._send(producer, events, sent, stop, sent_at)


def _health(settings: Any) -> dict[str, Any]:
    """A worker's ``/health`` document (also when it answers 503: not ready)."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{settings.metrics_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
