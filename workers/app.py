"""The Faust worker: declarations and thin agents around :class:`engine.Recommender`.

Delivery semantics. Events are taken in micro-batches with ``take_events``, which acks (makes
committable) a batch only after the agent body for it has returned; the body awaits the delivery
of every recommendation and dead letter before returning, and Faust flushes the producer (table
changelogs included) before it commits offsets. So an offset is never committed past an event
whose effect or output is not yet in Kafka. A crash can redeliver events; their ids are already
in the user's support-set record, so their effect is not applied twice (the recommendation is
published again: at-least-once output, exactly-once state).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import faust
import torch
from faust.streams import _current_event
from faust.types import EventT

from engine.bundle import ModelBundle, latest_version
from engine.recommender import Recommender
from engine.retrain import write_snapshot
from engine.settings import Settings
from engine.trainer import learner_config
from schemas import DeadLetter, SchemaError, decode_interaction, decode_item, decode_user, encode
from schemas.wire import RatingScale
from streams.topics import TopicNames
from workers.faust_compat import set_fetch_max_wait
from workers.metrics import Metrics
from workers.process import settings_env

log = logging.getLogger("kindling.worker")

# Tables pick their serializers from the types (bytes -> "raw"); a ``schema=`` is ignored on reads.
RAW_TYPES = {"key_type": bytes, "value_type": bytes}


def load_bundle(settings: Settings) -> ModelBundle:
    """The configured checkpoint, else the newest promoted version, else an untrained model."""
    path = Path(settings.model_dir) if settings.model_dir else latest_version(settings.data_dir)
    if path is not None:
        bundle = ModelBundle.load(path)
        if bundle.learner.config.feature_dim != settings.feature_dim:
            raise ValueError(
                f"model {path} expects {bundle.learner.config.feature_dim} content features, "
                f"the worker makes {settings.feature_dim} (KINDLING_FEATURE_DIM)"
            )
        log.info("loaded model %s from %s", bundle.version, path)
        return bundle
    log.warning("no trained model under %s: serving an untrained %s (content only)",
                settings.data_dir, settings.learner)
    return ModelBundle.untrained(settings.learner, learner_config(settings))


class Kindling:
    """The worker's components, built from one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        set_fetch_max_wait(settings.fetch_max_wait_ms)
        torch.set_num_threads(max(1, settings.torch_threads))
        self.topics = TopicNames.from_settings(settings)
        self.scale = RatingScale(settings.rating_low, settings.rating_high)
        self.metrics = Metrics()
        self.recommender = Recommender(settings, load_bundle(settings))
        self.metrics.model_version(self.recommender.model_version)
        self._retraining: asyncio.Future[None] | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ declarations
    def _build_app(self) -> faust.App:
        s = self.settings
        datadir = Path(s.data_dir) / "faust"
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.app_id,
            broker=s.broker,
            store="rocksdb://",
            datadir=str(datadir),
            topic_partitions=s.partitions,
            topic_replication_factor=1,
            topic_allow_declare=True,
            table_standby_replicas=0,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=s.heartbeat_interval_s,
            broker_rebalance_timeout=s.rebalance_timeout_s,
            broker_max_poll_interval=s.max_poll_interval_s,
            broker_commit_every=1000,
            broker_commit_interval=1.0,
            web_enabled=s.web_enabled,
            web_port=s.web_port,
            producer_acks=-1,
            recovery_consistency_check=s.recovery_consistency_check,
            broker_credentials=self._credentials(),
        )
        def topic(name: str) -> faust.TopicT:
            # Not ``schema=RAW``: with tables present, topics declared that way were fetched but
            # never dispatched to their agents (faust-streaming 0.15.3, seen here on Tansu).
            return app.topic(name, **RAW_TYPES, key_serializer="raw", value_serializer="raw",
                             partitions=s.partitions)

        self.interactions = topic(self.topics.interactions)
        self.items = topic(self.topics.items)
        self.users = topic(self.topics.users)
        self.recommendations = topic(self.topics.recommendations)
        self.dlq = topic(self.topics.dlq)
        self.supports = app.Table("supports", partitions=s.partitions, **RAW_TYPES,
                                  help="per-user support sets (engine.support codec)")
        self.profiles = app.Table("users", partitions=s.partitions, **RAW_TYPES,
                                  help="per-user attribute JSON")
        self.catalog_table = app.GlobalTable(
            "catalog", partitions=s.partitions, **RAW_TYPES, help="item records (wire JSON)",
            on_changelog_event=self._on_catalog_changelog,
        )
        app.agent(self.interactions, name="interactions")(self._interactions_agent)
        app.agent(self.items, name="items")(self._items_agent)
        app.agent(self.users, name="users")(self._users_agent)
        app.timer(2.0, name="model-watch")(self._watch_models)
        if s.retrain_interval_s > 0:
            # on_leader: one retrain per consumer group, not one per worker process.
            app.timer(s.retrain_interval_s, name="retrain", on_leader=True)(self._retrain)
        app.task(self._load_catalog)
        return app

    def _credentials(self) -> Any:
        s = self.settings
        if s.sasl_mechanism:
            return faust.SASLCredentials(
                username=s.sasl_username, password=s.sasl_password, mechanism=s.sasl_mechanism,
                ssl_context=self._ssl_context() if "SSL" in s.security_protocol else None,
            )
        if s.security_protocol == "SSL":
            return faust.SSLCredentials(self._ssl_context())
        return None

    def _ssl_context(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=self.settings.ssl_cafile or None)

    # ------------------------------------------------------------------ agents
    async def _interactions_agent(self, stream: faust.StreamT) -> None:
        s = self.settings
        async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
            started = time.perf_counter()
            snaps, good, pending = [], [], []
            # Table reads go to the *current event's* partition: look attributes up per event,
            # not later for the whole batch (that read only the last event's partition).
            profiles: dict[str, dict[str, Any] | None] = {}
            for event in batch:
                _set_current_event(stream, event)
                try:
                    interaction = decode_interaction(event.value, self.scale)
                except SchemaError as exc:
                    pending.append(await self._dead_letter(event, exc.describe()))
                    continue
                snap = self.recommender.apply(interaction, self.supports)
                profiles[interaction.user_id] = self._profile_of(interaction.user_id)
                snaps.append(snap)
                good.append(event)
                self.metrics.support_size.observe(len(snap.support))
                if snap.duplicate:
                    self.metrics.duplicates.inc()
            try:
                recs = self.recommender.rank(snaps, profiles.get)
            except Exception as exc:  # noqa: BLE001 - a model bug must not lose events
                log.exception("ranking failed for a batch of %d events", len(snaps))
                reason = f"internal error while ranking: {exc!r}"
                for e in good:
                    pending.append(await self._dead_letter(e, reason))
                recs = []
            for rec in recs:
                pending.append(
                    await self.recommendations.send(key=rec.user_id.encode(), value=encode(rec))
                )
            if pending:
                await asyncio.gather(*pending)
            self.metrics.events.inc(len(batch))
            self.metrics.batch_latency.observe(time.perf_counter() - started)

    async def _items_agent(self, stream: faust.StreamT) -> None:
        async for batch in stream.take_events(self.settings.batch_max, within=0.2):
            items, pending = [], []
            for event in batch:
                _set_current_event(stream, event)
                try:
                    item = decode_item(event.value)
                except SchemaError as exc:
                    pending.append(await self._dead_letter(event, exc.describe()))
                    continue
                self.catalog_table[item.item_id.encode()] = encode(item)
                items.append(item)
            if items:
                changed = self.recommender.catalog.upsert(items)
                log.info("catalog: %d items received, %d new or changed", len(items), changed)
            if pending:
                await asyncio.gather(*pending)

    async def _users_agent(self, stream: faust.StreamT) -> None:
        async for batch in stream.take_events(self.settings.batch_max, within=0.2):
            pending = []
            for event in batch:
                _set_current_event(stream, event)
                try:
                    user = decode_user(event.value)
                except SchemaError as exc:
                    pending.append(await self._dead_letter(event, exc.describe()))
                    continue
                self.profiles[user.user_id.encode()] = json.dumps(user.attributes).encode()
            if pending:
                await asyncio.gather(*pending)

    # ------------------------------------------------------------------ helpers
    def _profile_of(self, user_id: str) -> dict[str, Any] | None:
        raw = self.profiles.get(user_id.encode())
        return json.loads(raw) if raw else None

    async def _dead_letter(self, event: EventT, reason: str) -> Any:
        msg = event.message
        letter = DeadLetter(
            reason, msg.topic, msg.partition, msg.offset, event.value or b"", event.key
        )
        self.metrics.dlq.inc()
        log.warning("dead letter: %s (topic=%s partition=%s offset=%s)",
                    reason, msg.topic, msg.partition, msg.offset)
        return await self.dlq.send(key=event.key, value=encode(letter))

    def _on_catalog_changelog(self, event: EventT) -> None:
        # Items written by another worker reach this one only through the global changelog.
        if event.value:
            try:
                self.recommender.catalog.upsert([decode_item(event.value)])
            except SchemaError:
                log.error("corrupt catalog changelog record at offset %s", event.message.offset)

    async def _load_catalog(self) -> None:
        await self.app.tables.recovery.completed.wait()
        items = []
        for _, raw in self.catalog_table.items():
            try:
                items.append(decode_item(raw))
            except SchemaError:
                continue
        if items:
            self.recommender.catalog.upsert(items)
            log.info("catalog recovered: %d items", len(items))

    async def _retrain(self) -> None:
        """Snapshot this worker's users, items and attributes, then retrain in a child process
        (``kindling retrain``) so training never stalls the event loop; the child promotes the
        candidate only if its held-out loss is not worse (``engine/retrain.py``)."""
        if self._retraining is not None and not self._retraining.done():
            log.info("retrain: the previous round is still running; skipping this tick")
            return
        s = self.settings
        catalog = self.recommender.catalog
        domain_of = dict(zip(catalog.ids, catalog.domains, strict=True))
        supports: list[tuple[str, bytes]] = []
        for key, raw in self.supports.items():
            supports.append((key.decode("utf-8"), raw))
            if len(supports) >= s.retrain_max_users:
                break
            if len(supports) % 1000 == 0:
                await asyncio.sleep(0)  # a large table must not starve the agents
        if len(supports) < s.retrain_min_users:
            log.info("retrain: %d users held here, fewer than retrain_min_users=%d; waiting",
                     len(supports), s.retrain_min_users)
            return
        items = [raw for _, raw in self.catalog_table.items()]
        users = [(k.decode("utf-8"), json.loads(v)) for k, v in self.profiles.items()]
        directory = Path(s.data_dir) / "retrain" / f"snapshot-{time.time_ns()}"
        loop = asyncio.get_running_loop()
        _, n_users, n_events = await loop.run_in_executor(
            None, write_snapshot, directory, supports, items, users, domain_of, s.retrain_max_users
        )
        log.info("retrain: snapshot of %d users, %d events, %d items -> %s",
                 n_users, n_events, len(items), directory)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.cli", "retrain", str(directory),
            env=settings_env(s), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._retraining = asyncio.ensure_future(self._finish_retrain(proc, directory))

    async def _finish_retrain(self, proc: asyncio.subprocess.Process, directory: Path) -> None:
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:  # the worker is stopping: don't leave an orphan behind
            proc.kill()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        lines = output.decode("utf-8", "replace").strip().splitlines()
        if proc.returncode != 0:
            log.error("retrain failed (exit %s): %s", proc.returncode, "\n".join(lines[-20:]))
        else:
            log.info("retrain outcome: %s", lines[-1] if lines else "(no output)")
            await self._watch_models()
        shutil.rmtree(directory, ignore_errors=True)

    async def _watch_models(self) -> None:
        """Hot-swap when a newer promoted version appears under data_dir/models."""
        if self.settings.model_dir:
            return
        path = latest_version(self.settings.data_dir)
        if path is None or path.name == self.recommender.model_version:
            return
        bundle = await asyncio.get_running_loop().run_in_executor(None, ModelBundle.load, path)
        if bundle.version != self.recommender.model_version:
            self.recommender.swap(bundle)
            self.metrics.model_version(bundle.version)


def _set_current_event(stream: faust.StreamT, event: EventT) -> None:
    """Point table writes at ``event``'s partition without touching ``stream.current_event``.

    Table writes find their changelog partition through the ``current_event`` context variable;
    inside a ``take_events`` batch Faust leaves it at the batch's last event, so it is set per
    event. Only the context variable (local to this agent's task) is set: calling
    ``stream._set_current_event`` also rewrote the attribute that Faust's ``take_events`` buffer
    reads from another task, so an event that arrived mid-batch was swapped for the batch's last
    one: that event was never processed yet its offset was acked, and the other ran twice
    (seen here as 2-5 events lost per 5,000 on the embedded broker).
    """
    del stream  # kept in the signature: the event belongs to this stream
    _current_event.set(weakref.ref(event))
