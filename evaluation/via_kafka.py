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
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from evaluation.runners import KindlingRunner
from schemas import Interaction, Item, User

logger = logging.getLogger(__name__)

_CATALOG_LINE = re.compile(rb"catalog: (\d+) items received")


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
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.items = list(items)
        self.broker_url = broker_url
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kindling-vk-"))
        self.deadline_s = deadline_s
        self.latencies_ms: list[float] = []
        self.info: dict[str, Any] = {"kind": "kindling-via-kafka"}
        self.recommendations: dict[str, list[str]] = {}

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
        from engine.trainer import save_bundle
        from streams.broker import embedded_worker_settings
        from streams.kafka import EventProducer, consume
        from streams.topics import ensure_topics
        from workers.process import WorkerProcess

        run = uuid.uuid4().hex[:8]
        settings = embedded_worker_settings(
            broker_url, self.inner.settings, data_dir=str(self.workdir / run),
            app_id=f"replay-{run}", topic_prefix=f"replay-{run}.", model_dir="",
            retrain_interval_s=0.0,
        )
        save_bundle(self.inner.rec.bundle, settings.data_dir)
        ensure_topics(settings)
        log_path = self.workdir / f"worker-{run}.log"
        worker = WorkerProcess(settings, log_path).start()
        sent_at: dict[str, float] = {}
        out: dict[str, list[str]] = {}
        started = time.perf_counter()
        try:
            with EventProducer(settings) as producer:
                users = {e.user_id for e in events}
                for user_id in sorted(users):
                    attributes = self.inner.profile_of(user_id)
                    if attributes:
                        producer.user(User(user_id=user_id, attributes=dict(attributes)))
                for item in self.items:
                    producer.item(item)
                producer.flush()
                self._wait_for_catalog(log_path, len(self.items))
                for e in events:
                    sent_at[e.event_id] = time.time()
                    producer.interaction(e)
            want = {e.event_id for e in events}
            for _, raw in consume(settings, settings.topic("recommendations"), idle_timeout_s=30,
                                  deadline_s=self.deadline_s):
                doc = json.loads(raw)
                source = doc["source_event_id"]
                if source in want and source not in out:
                    out[source] = [i["item_id"] for i in doc["items"]]
                    self.latencies_ms.append(1000.0 * (doc["produced_at"] - sent_at[source]))
                if len(out) == len(want):
                    break
        finally:
            worker.stop()
        self.info["kafka_seconds"] = time.perf_counter() - started
        self.info["kafka_events"] = len(events)
        missing = len(events) - len(out)
        if missing:
            raise RuntimeError(f"{missing} of {len(events)} events got no recommendation "
                               f"through Kafka (worker log: {log_path})")
        return out

    @staticmethod
    def _wait_for_catalog(log_path: Path, n_items: int, timeout: float = 120.0) -> None:
        """Events must not overtake the catalog: wait until the items agent logged them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = sum(int(n) for n in _CATALOG_LINE.findall(log_path.read_bytes()))
            if seen >= n_items:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the worker did not load {n_items} items within {timeout:.0f} s")
