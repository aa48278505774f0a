"""The Faust worker: declarations and thin agents around :class:`engine.Recommender`.

Delivery semantics. Events are taken in micro-batches with ``take_events``, which acks (makes
committable) a batch only after the agent body for it has returned; the body awaits the delivery
of every recommendation and dead letter before returning, and Faust flushes the producer (table
changelogs included) before it commits offsets. So an offset is never committed past an event
whose effect or output is not yet in Kafka. A crash can redeliver events; their ids are already
in the user's support-set record, and so is the offset of the newest event applied (a
watermark: a user's events arrive from one partition in offset order), so their effect is not
applied twice (the recommendation is published again: at-least-once output, exactly-once
state). Caveat: a deleted and recreated interactions topic restarts offsets at 0, below the
watermarks; set ``KINDLING_OFFSET_DEDUP=false`` then (a warning is logged once per partition).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import weakref
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import faust
import torch
from faust.streams import _current_event, current_event
from faust.types import TP, EventT

from engine.bundle import ModelBundle, latest_version
from engine.catalog import Catalog
from engine.encoders import VectorCache, make_encoder, with_encoder_dim
from engine.exploration import checked_reward
from engine.online import OnlineHits
from engine.recommender import Recommender
from engine.retrain import write_snapshot
from engine.settings import Settings
from engine.trainer import learner_config
from schemas import (
    DeadLetter,
    Recommendation,
    SchemaError,
    decode_interaction,
    decode_item,
    decode_request,
    decode_user,
    encode,
)
from schemas.wire import RatingScale
from streams.batches import Delivered, ProducerBatches
from streams.topics import TopicNames, client_config
from workers import gap_guard, recovery_compat
from workers.faust_compat import drain_before_commit, resume_promptly, set_fetch_max_wait
from workers.metrics import Metrics
from workers.web import HealthState, WebServer, consumer_lag, event_age

log = logging.getLogger("kindling.worker")

# Tables pick their serializers from the types (bytes -> "raw"); a ``schema=`` is ignored on reads.
RAW_TYPES = {"key_type": bytes, "value_type": bytes}
# RocksDB memory per table partition. Faust's defaults are 3 x 64 MiB write buffers and a 2 GiB
# block cache for *each* partition's DB (6 tables x N partitions here): `kindling load` saw the
# worker's RSS climb ~30 MiB/min for minutes as the supports memtables filled towards 64 MiB per
# partition before their first flush. Small memtables flush early; the cap is what is reached.
ROCKSDB_OPTIONS = {"write_buffer_size": 4 * 2**20, "max_write_buffer_number": 2,
                   "block_cache_size": 32 * 2**20}


class TableAccess:
    """What the serving path needs of a Faust table, without a read costing two RocksDB look-ups
    and, for a ``batched`` table, without Faust's per-record write path.

    ``Table.get`` goes through ``__getitem__``, which first asks the store whether the key exists
    and then reads it: two RocksDB reads per hit. ``get`` here reads the table's store once (the
    same partition rules: the current event's partition, else every local one).

    Writes of a plain access are the table's own. A ``batched`` access holds each write (key,
    value, and the partition of the current event, as Faust's ``Table.__setitem__`` takes it)
    until :meth:`flush`, which writes them to the store with one RocksDB write batch per
    partition and hands their changelog records straight to the producer, one producer batch per
    changelog partition (``streams.batches``), instead of Faust's promise object, buffer task,
    publish step and per-record persisted-offset write (~14% of a serving worker's main-thread
    CPU in a profile). The returned awaitable resolves once every record is in Kafka, and then
    records each changelog partition's newest offset in the store, as Faust's
    ``_on_changelog_sent`` does per record, so recovery still starts where the store is. Reads
    in between see the held values."""

    __slots__ = ("table", "_held")

    def __init__(self, table: faust.Table, *, batched: bool = False) -> None:
        self.table = table
        self._held: dict[bytes, tuple[bytes, int]] | None = {} if batched else None

    def get(self, key: str | bytes, default: bytes | None = None) -> bytes | None:
        if self._held:
            held = self._held.get(key.encode() if isinstance(key, str) else key)
            if held is not None:
                return held[0]
        value = self.table.data.get(key)
        return default if value is None else value

    def __setitem__(self, key: str | bytes, value: bytes) -> None:
        if self._held is None:
            self.table[key] = value
            return
        event = current_event()
        if event is None:
            raise RuntimeError("table write outside of an event (no partition to write to)")
        # Keys as Faust's raw key serializer makes them (str -> UTF-8); one write per key wins.
        key_b = key.encode() if isinstance(key, str) else key
        self._held.pop(key_b, None)  # re-inserted last: changelog order = write order
        self._held[key_b] = (value, event.message.partition)

    async def flush(self, producer: Any) -> list[Any]:
        """Write the held records to the store and send their changelog records through
        ``producer`` (the app's aiokafka producer); returns the awaitables to gather before the
        batch is acked (empty when nothing was held)."""
        held, table = self._held, self.table
        if not held:
            return []
        self._held = {}
        if table.app.in_transaction:  # exactly-once persists changelog offsets at commit
            raise RuntimeError("a batched TableAccess serves at-least-once processing only")
        store = table.data
        batches: dict[int, Any] = {}
        for key, (value, partition) in held.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = _write_batch(store)
            batch.put(key, value)
            store._key_index[key] = partition  # noqa: SLF001 - what Store._set does per write
        for partition, batch in batches.items():
            store._db_for_partition(partition).write(batch)  # noqa: SLF001
        topic = table.changelog_topic.get_topic_name()
        out = ProducerBatches(producer)
        for key, (value, partition) in held.items():
            out.add(topic, key, value, partition)
        return [self._persist(store, topic, await out.send())]

    @staticmethod
    async def _persist(store: Any, topic: str, sent: list[Awaitable[Delivered]]) -> None:
        newest: dict[int, int] = {}
        for batch in await asyncio.gather(*sent):
            if batch.last > newest.get(batch.partition, -1):
                newest[batch.partition] = batch.last
        for partition, offset in newest.items():
            store.set_persisted_offset(TP(topic, partition), offset)


def _write_batch(store: Any) -> Any:
    """A write batch for ``store``'s RocksDB binding, as Faust's ``apply_changelog_batch`` makes."""
    if store.use_rocksdict:
        import rocksdict

        return rocksdict.WriteBatch(raw_mode=True)
    import rocksdb  # pragma: no cover - faust's python-rocksdb binding

    return rocksdb.WriteBatch()


def _table_kwargs() -> dict[str, Any]:
    # A fresh options dict per table: Faust's store pops keys from the mapping it is given.
    return {**RAW_TYPES, "options": dict(ROCKSDB_OPTIONS)}

# An offset this far below a user's watermark is no redelivery but a recreated topic: warn.
OFFSET_RESET_GAP = 100_000


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
    return ModelBundle.untrained(settings.learner,
                                 learner_config(settings, learner=settings.learner))


class Kindling:
    """The worker's components, built from one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        # The content encoder fixes the feature width (MiniLM: 384), so build it first.
        self.encoder = make_encoder(settings)
        settings = with_encoder_dim(settings, self.encoder)
        if settings.pipeline not in ("full", "echo", "state"):
            raise ValueError("pipeline must be 'full', 'echo' or 'state', got "
                             f"{settings.pipeline!r}")
        self.settings = settings
        set_fetch_max_wait(settings.fetch_max_wait_ms)
        drain_before_commit()  # changelogs in Kafka before offsets are committed
        resume_promptly()  # a partition paused for buffer pressure is fetched soon after
        # changelogs to their real end; stream partitions resumed only once seeked to committed
        recovery_compat.install(client_config(settings), settings.fetch_max_wait_ms)
        torch.set_num_threads(max(1, settings.torch_threads))
        self.topics = TopicNames.from_settings(settings)
        self.scale = RatingScale(settings.rating_low, settings.rating_high)
        self.metrics = Metrics()
        # A source partition whose records skip offsets is rewound, not committed past.
        gap_guard.install([self.topics.interactions, self.topics.items, self.topics.users,
                           self.topics.requests],
                          on_gap=lambda action: self.metrics.offset_gaps.labels(action).inc())
        # Item vectors are cached in the ``item_vectors`` table (store attached in _build_app).
        self.vector_cache = VectorCache(self.encoder, {}, write_through=False)
        self.recommender = Recommender(
            settings, load_bundle(settings), catalog=Catalog(self.vector_cache)
        )
        self.metrics.model_version(self.recommender.model_version)
        self.online = OnlineHits(settings.top_k, settings.online_hits_users)
        self.last_event_at: float | None = None  # wall time of the last interaction batch
        self._retraining: asyncio.Future[None] | None = None
        self._offset_reset_warned: set[tuple[str, int]] = set()
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
            # Bounded hand-off from the fetcher to the agents. Faust's defaults (no cap on the
            # records one getmany returns, 4096-event stream buffer) let one fetch hold the
            # fetcher blocked on a full buffer for longer than max_poll_interval when the worker
            # is behind; aiokafka then leaves the group and never rejoins, since Faust stops
            # polling once its partitions are revoked (seen with `kindling load`: the worker
            # stalled for good after ~10 s at 2x its rate). Now one fetch returns at most
            # 2 x batch_max records, and the queue (stream_buffer_events, see engine/settings.py)
            # has room for them above the 80% mark where Faust pauses a partition: a fetch never
            # waits on the agent.
            broker_max_poll_records=2 * s.batch_max,
            stream_buffer_maxsize=max(s.stream_buffer_events, 10 * s.batch_max),
            web_enabled=s.web_enabled,
            web_port=s.web_port,
            producer_acks=-1,
            producer_linger_ms=s.producer_linger_ms,
            producer_max_batch_size=s.producer_max_batch_size,
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
        self.requests = topic(self.topics.requests)
        self.supports = app.Table("supports", partitions=s.partitions, **_table_kwargs(),
                                  help="per-user support sets (engine.support codec)")
        self.profiles = app.Table("users", partitions=s.partitions, **_table_kwargs(),
                                  help="per-user attribute JSON")
        # Written once per user per micro-batch by the interactions agent, flushed in one go.
        self.support_access = TableAccess(self.supports, batched=True)
        self.profile_access = TableAccess(self.profiles)
        # Bandit state (engine/exploration.py): item stats keyed "<partition>/<item>", see there.
        self.bandit_items = app.Table("bandit_items", partitions=s.partitions, **_table_kwargs(),
                                      help="per-partition item reward stats (count, sum, sq)")
        self.bandit_users = app.Table("bandit_users", partitions=s.partitions, **_table_kwargs(),
                                      help="per-user exploration stats JSON")
        if self.recommender.explorer is not None:
            self.recommender.explorer.items = self.bandit_items
            self.recommender.explorer.users = self.bandit_users
        self.vectors_table = app.GlobalTable(
            "item_vectors", partitions=s.partitions, **_table_kwargs(),
            help="item id -> content digest + float32 content vector (engine.encoders)",
        )
        self.vector_cache.store = self.vectors_table
        self.catalog_table = app.GlobalTable(
            "catalog", partitions=s.partitions, **_table_kwargs(), help="item records (wire JSON)",
            on_changelog_event=self._on_catalog_changelog,
        )
        app.agent(self.interactions, name="interactions")(self._interactions_agent)
        app.agent(self.items, name="items")(self._items_agent)
        app.agent(self.users, name="users")(self._users_agent)
        app.agent(self.requests, name="requests")(self._requests_agent)
        app.timer(2.0, name="model-watch")(self._watch_models)
        if s.retrain_interval_s > 0:
            # on_leader: one retrain per consumer group, not one per worker process.
            app.timer(s.retrain_interval_s, name="retrain", on_leader=True)(self._retrain)
        app.task(self._load_catalog)
        if s.metrics_port:
            app.task(self._serve_web)
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
        if s.pipeline == "echo":
            await self._echo_agent(stream)
            return
        rebalances = -1
        async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
            started = time.perf_counter()
            if self.recommender.explorer is not None and rebalances != self.app.rebalancing_count:
                # Partitions may have moved: their bandit tables are the truth, not the cache.
                self.recommender.explorer.clear_cache()
                rebalances = self.app.rebalancing_count
            good, interactions, offsets, pending = [], [], [], []
            for event in batch:
                try:
                    interaction = decode_interaction(event.value, self.scale)
                    checked_reward(interaction, self.scale)  # bandit stats never see bad rewards
                except SchemaError as exc:
                    pending.append(await self._dead_letter(event, exc.describe()))
                    continue
                good.append(event)
                interactions.append(interaction)
                offsets.append(event.message.offset if s.offset_dedup else None)
            # One support-table read and at most one write per user per batch; table access goes
            # to the partition of the user's own event (bind), never the batch's last one.
            snaps = self.recommender.apply_batch(interactions, self.support_access, offsets,
                                                 bind=_binder(stream, good))
            # The batch's support records: in the store now, their changelog records delivered
            # before the batch is acked (awaited with the recommendations).
            pending.extend(await self.support_access.flush(self._producer()))
            profiles: dict[str, dict[str, Any] | None] = {}
            for event, snap, offset in zip(good, snaps, offsets, strict=True):
                if offset is not None and snap.watermark - offset > OFFSET_RESET_GAP:
                    self._warn_offset_reset(event, snap.watermark)
                user_id = snap.event.user_id
                if user_id not in profiles:  # once per user per batch, from its partition
                    _set_current_event(stream, event)
                    profiles[user_id] = self._profile_of(user_id)
                self.metrics.support_size.observe(len(snap.support))
                if snap.duplicate:
                    self.metrics.duplicates.inc()
            # Ranking reads tables for many users at once (bandit statistics keyed by the user's
            # partition): with no current event, Faust looks a key up in every local partition
            # instead of only the last event's.
            _current_event.set(None)
            try:
                ranked_at = time.perf_counter()
                recs = self.recommender.rank(snaps, profiles.get, model=s.pipeline != "state")
                self.metrics.rank_latency.observe(time.perf_counter() - ranked_at)
            except Exception as exc:  # noqa: BLE001 - a model bug must not lose events
                log.exception("ranking failed for a batch of %d events", len(snaps),
                              extra={"events": len(snaps), "partition": _partitions(good)})
                reason = f"internal error while ranking: {exc!r}"
                for e in good:
                    pending.append(await self._dead_letter(e, reason))
                recs = []
            explorer = self.recommender.explorer
            if explorer is not None:
                for event, rec in zip(good, recs, strict=False):
                    _set_current_event(stream, event)  # the user's partition, for the changelog
                    explored = [i.item_id for i in rec.items if i.why == "explore"]
                    explorer.shown(rec.user_id, explored)
            pending.extend(await self._answer(recs))
            if pending:
                await asyncio.gather(*pending)
            self._online_hits(snaps, recs, profiles)
            self.metrics.events.inc(len(batch))
            self.metrics.recommendations.inc(len(recs))
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_latency.observe(time.perf_counter() - started)
            self.last_event_at = time.time()

    async def _echo_agent(self, stream: faust.StreamT) -> None:
        """``pipeline="echo"``: the same stream, batching, decoding, dead-lettering and output
        topic as serving, answering each event with an empty recommendation (the transport cost
        that serving pays on top of its own work)."""
        s = self.settings
        async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
            pending, recs = [], []
            for event in batch:
                try:
                    interaction = decode_interaction(event.value, self.scale)
                except SchemaError as exc:
                    pending.append(await self._dead_letter(event, exc.describe()))
                    continue
                recs.append(Recommendation(interaction.user_id, (), "echo", interaction.event_id))
            pending.extend(await self._answer(recs))
            if pending:
                await asyncio.gather(*pending)
            self.metrics.events.inc(len(batch))
            self.last_event_at = time.time()

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
                await self._encode_new(batch, items)
                changed = self.recommender.catalog.upsert(items)
                log.info("catalog: %d items received, %d new or changed", len(items), changed)
            if pending:
                await asyncio.gather(*pending)

    async def _encode_new(self, batch: Any, items: list[Any]) -> None:
        """Encode new or changed item texts in one batch in an executor (a transformer takes
        seconds for a big batch; the event loop must keep heart-beating), then cache them. The
        catalog's upsert right after finds every vector in the cache."""
        latest = {item.item_id: item for item in items}  # an item twice in a batch: last wins
        todo = self.vector_cache.missing(list(latest.values()))
        if not todo:
            return
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(None, self.encoder.encode_items, todo)
        by_id = {e.key: e for e in batch if e.key is not None}
        for item, vec in zip(todo, vectors, strict=True):
            event = by_id.get(item.item_id.encode())
            if event is not None:  # table writes go to the partition of the item's own event
                _current_event.set(weakref.ref(event))
            self.vector_cache.put([item], vec[None, :])
        log.info("encoded %d new or changed item texts", len(todo))

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

    async def _requests_agent(self, stream: faust.StreamT) -> None:
        """Answer recommendation requests: the user's support set as it is (no event added, no
        table written) ranked in the requested domain by the same ``Recommender.rank`` as events.
        The ``requests`` topic is keyed by user id and co-partitioned with ``supports``, so the
        record read is this worker's own."""
        s = self.settings
        async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
            snaps, good, pending = [], [], []
            profiles: dict[str, dict[str, Any] | None] = {}
            for event in batch:
                _set_current_event(stream, event)  # table reads go to the user's partition
                try:
                    request = decode_request(event.value)
                    snap = self.recommender.request(request.user_id, request.domain,
                                                    self.supports, request.request_id)
                except SchemaError as exc:
                    pending.append(await self._dead_letter(event, exc.describe()))
                    continue
                except ValueError as exc:  # a domain no catalog item has
                    pending.append(await self._dead_letter(event, f"domain: {exc}"))
                    continue
                profiles[request.user_id] = self._profile_of(request.user_id)
                snaps.append(snap)
                good.append(event)
            _current_event.set(None)  # as in the interactions agent: ranking reads many users
            try:
                recs = self.recommender.rank(snaps, profiles.get, model=s.pipeline != "state")
            except Exception as exc:  # noqa: BLE001 - a model bug must not lose requests
                log.exception("ranking failed for a batch of %d requests", len(snaps))
                reason = f"internal error while ranking: {exc!r}"
                for e in good:
                    pending.append(await self._dead_letter(e, reason))
                recs = []
            if recs:
                self.online.remember(self.recommender, snaps, recs)
            pending.extend(await self._answer(
                dataclasses.replace(rec, domain=snap.event.domain)
                for snap, rec in zip(snaps, recs, strict=False)))
            if pending:
                await asyncio.gather(*pending)

    # ------------------------------------------------------------------ helpers
    def _online_hits(self, snaps: list[Any], recs: list[Recommendation],
                     profiles: dict[str, dict[str, Any] | None]) -> None:
        """Online hit@K for the batch just published (engine/online.py): a statistic, so a
        failure here is logged and never stops serving."""
        if not recs or not self.online.enabled:
            return
        _current_event.set(None)  # a prior's ranking may read tables of many users
        try:
            self.metrics.online(self.online.observe(self.recommender, snaps, recs, profiles.get))
        except Exception:  # noqa: BLE001
            log.exception("online hit@K bookkeeping failed for a batch of %d events", len(snaps))

    def _warn_offset_reset(self, event: EventT, watermark: int) -> None:
        """Once per partition: offsets far below a user's watermark mean the interactions topic
        was probably recreated; the watermark then drops its events as redeliveries."""
        msg = event.message
        if (msg.topic, msg.partition) in self._offset_reset_warned:
            return
        self._offset_reset_warned.add((msg.topic, msg.partition))
        log.warning("offset %s on %s[%s] is %d below a user's watermark %d: was the topic "
                    "recreated? Its events are dropped as redeliveries; restart with "
                    "KINDLING_OFFSET_DEDUP=false (or fresh state)", msg.offset, msg.topic,
                    msg.partition, watermark - msg.offset, watermark,
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})

    def _profile_of(self, user_id: str) -> dict[str, Any] | None:
        raw = self.profile_access.get(user_id.encode())
        return json.loads(raw) if raw else None

    async def _dead_letter(self, event: EventT, reason: str) -> Any:
        msg = event.message
        letter = DeadLetter(
            reason, msg.topic, msg.partition, msg.offset, event.value or b"", event.key
        )
        self.metrics.dlq.inc()
        user = None if event.key is None else event.key.decode("utf-8", "replace")
        log.warning("dead letter: %s (topic=%s partition=%s offset=%s user=%s)",
                    reason, msg.topic, msg.partition, msg.offset, user,
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                           "user": user, "reason": reason})
        return await self._publish(self.topics.dlq, event.key, encode(letter))

    def _producer(self) -> Any:
        """The app producer's aiokafka producer: a micro-batch's recommendations and changelog
        records go to it as one batch per partition (``streams.batches``)."""
        return self.app.producer._ensure_producer()  # noqa: SLF001 - Faust's accessor

    async def _answer(self, recs: Iterable[Recommendation]) -> list[Awaitable[Delivered]]:
        """Send a micro-batch's recommendations, keyed by user, as one producer batch per
        partition; returns the awaitables to gather before the batch is acked."""
        out = ProducerBatches(self._producer())
        topic = self.topics.recommendations
        for rec in recs:
            out.add(topic, rec.user_id.encode(), encode(rec))
        return await out.send()

    async def _publish(self, topic: str, key: bytes | None, value: bytes) -> Any:
        """Send one record now through the app's producer (dead letters; a micro-batch's
        answers go through :meth:`_answer`); returns the delivery
        future, which the agents await before their batch is acked. Faust's ``Topic.send`` does
        the same with a promise object, codecs and sensor callbacks around it per message (~10%
        of a serving worker's CPU in a profile); these topics are raw bytes, and the partition
        is the key's (the producer's default partitioner, as with ``Topic.send``)."""
        return await self.app.producer.send(topic, key, value, None, None, None)

    # ------------------------------------------------------------------ observability
    def health(self) -> HealthState:
        """Ready = table recovery done and interaction partitions assigned (workers.web)."""
        partitions, lag = consumer_lag(self.app, self.topics.interactions)
        reasons = []
        if not self.app.tables.recovery.completed.is_set():
            reasons.append("table recovery in progress")
        if not partitions:
            reasons.append("no interaction partitions assigned")
        return HealthState(not reasons, reasons, self.recommender.model_version, partitions,
                           event_age(self.last_event_at), lag)

    async def _serve_web(self) -> None:
        server = WebServer(self.metrics, self.health, self.settings.metrics_host,
                           self.settings.metrics_port)
        await server.start()
        try:
            await asyncio.Event().wait()  # until the worker stops (task cancelled)
        finally:
            await server.stop()

    async def _on_catalog_changelog(self, event: EventT) -> None:
        # Items written by another worker reach this one only through the global changelog.
        # A coroutine: Faust awaits the callback (a plain function raised TypeError in recovery
        # after running, once per record, and skipped the rest of that recovery step).
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
        candidate only if its held-out loss is not worse, or for a transfer learner its held-out
        cross-domain users' NDCG@10 not lower (``engine/retrain.py``)."""
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
            env=s.child_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        # Leave the child a core: torch's intra-op team waits for its slowest thread, and a
        # thread sharing a core with the child makes every ranking wait (2 cores, 2 serving
        # threads: p99 1.7 s -> 13 s during a round, `kindling bench retrain`). Restored after.
        serving_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(serving_threads, (os.cpu_count() or 1) - 1)))
        self._retraining = asyncio.ensure_future(
            self._finish_retrain(proc, directory, serving_threads))

    async def _finish_retrain(self, proc: asyncio.subprocess.Process, directory: Path,
                              serving_threads: int) -> None:
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:  # the worker is stopping: don't leave an orphan behind
            proc.kill()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            torch.set_num_threads(serving_threads)
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


def _partitions(events: list[EventT]) -> str:
    return ",".join(str(p) for p in sorted({e.message.partition for e in events}))


def _binder(stream: faust.StreamT, events: list[EventT]) -> Any:
    """``bind(i)`` for :meth:`Recommender.apply_batch`: table access for ``events[i]``'s user goes
    to that event's partition."""
    return lambda i: _set_current_event(stream, events[i])


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
