"""The serving core: apply events to support sets, adapt users in a batch, rank the catalog.

This is the one code path. The Faust worker and the replay harness both call
:meth:`Recommender.apply` per event and :meth:`Recommender.rank` per micro-batch. A recommendation
depends only on the model version, the catalog and the user's own state after the event, never on
how events were grouped into micro-batches, so in-process replay and the worker agree exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.exploration import Explorer, checked_reward
from engine.features import HashingFeaturizer
from engine.settings import Settings
from engine.support import BLOOM_BYTES, UserSupport, rating_of, target_of
from models.base import SupportBatch
from models.recency import DecayedCounts
from schemas import Interaction, RankedItems, RatingScale, RecItem, Recommendation

log = logging.getLogger(__name__)

ProfileLookup = Callable[[str], Mapping[str, Any] | None]


@dataclass(slots=True)
class Snapshot:
    """A user's support set right after one event, frozen for batched ranking."""

    event: Interaction
    duplicate: bool
    rows: list[int]
    targets: list[float]
    ratings: list[float]
    exclude: list[int]
    support: UserSupport
    explore_seq: int = -1  # position in the explorer's batch log right after this event
    watermark: int = -1  # the record's last_offset before this event (offset-reset check)


@dataclass(slots=True)
class _Record:
    """One user's support-set record while a micro-batch is applied (see ``apply_batch``)."""

    stored: bytes | None
    support: UserSupport
    changed: bool = False


class Recommender:
    def __init__(
        self,
        settings: Settings,
        bundle: ModelBundle,
        catalog: Catalog | None = None,
        featurizer: HashingFeaturizer | None = None,
    ) -> None:
        self.settings = settings
        self.featurizer = featurizer or HashingFeaturizer(
            settings.feature_dim, settings.attribute_dim
        )
        # ``is None``, not ``or``: an empty Catalog is falsy (``__len__``) and must be kept.
        self.catalog = catalog if catalog is not None else Catalog(self.featurizer)
        self.scale = RatingScale(settings.rating_low, settings.rating_high)
        self.bundle = bundle
        self._prepared_key: tuple[int, str, int] | None = None
        self._prepared: dict[str, torch.Tensor] = {}
        self._domain_codes: np.ndarray = np.zeros(0, dtype=np.int64)
        self._domain_names: dict[str, int] = {}
        self._in_vocab: np.ndarray = np.zeros(0, dtype=bool)  # per catalog row: id in the model
        self._ids: np.ndarray = np.zeros(0, dtype=object)  # catalog ids, for fancy indexing
        # Online decayed item counts (settings.recency_online), built lazily from the bundle's.
        self._recency: DecayedCounts | None = None
        self.skipped_unknown = 0
        self.explorer = Explorer(settings, self.catalog) if settings.policy != "none" else None

    # ---------------------------------------------------------------- model versions
    @property
    def model_version(self) -> str:
        return self.bundle.version

    def swap(self, bundle: ModelBundle) -> None:
        """Hot-swap the model; the next :meth:`rank` uses it."""
        log.info("model swapped: %s -> %s", self.bundle.version, bundle.version)
        self.bundle = bundle
        self._prepared_key = None
        self._recency = None  # restart from the new version's train-end counts

    def prepared(self) -> dict[str, torch.Tensor]:
        recency = self._online_recency()
        epoch = -1 if recency is None else recency.events // self.RECENCY_REFRESH_EVENTS
        key = (self.catalog.version, self.bundle.version, epoch)
        if self._prepared_key != key:
            counts = None if recency is None else recency.values(len(self.catalog))
            with torch.inference_mode():
                self._prepared = self.bundle.learner.prepare(self.bundle.bank(self.catalog,
                                                                              counts))
            self._domain_codes, self._domain_names = self.catalog.domain_codes()
            vocab = self.bundle.vocab_index
            self._in_vocab = np.fromiter((i in vocab for i in self.catalog.ids), dtype=bool,
                                         count=len(self.catalog))
            self._ids = np.array(self.catalog.ids, dtype=object)
            self._prepared_key = key
        return self._prepared

    # ---------------------------------------------------------------- per event
    def apply(
        self, event: Interaction, supports: MutableMapping[str, bytes], offset: int | None = None
    ) -> Snapshot:
        """De-duplicate and append ``event`` to its user's support set, write it back to
        ``supports`` and return the snapshot to rank. A duplicate changes nothing.

        ``offset`` (the worker passes the event's interactions-topic offset) makes de-duplication
        exact: an offset at or below the record's ``last_offset`` is a redelivery, however many
        events ago (ids alone cover only capacity + dedup_window). Replay passes none."""
        return self.apply_batch([event], supports, [offset])[0]

    def apply_batch(
        self,
        events: Sequence[Interaction],
        supports: MutableMapping[str, bytes],
        offsets: Sequence[int | None] | None = None,
        bind: Callable[[int], None] | None = None,
    ) -> list[Snapshot]:
        """:meth:`apply` for a micro-batch, in event order, with one read and at most one write
        of ``supports`` per user: a user's record is read at their first event, updated in memory
        by each of their events, and written once after the batch (the table's changelog gets one
        record per user, not one per event). Each snapshot is the user's state right after its
        own event, exactly as :meth:`apply` one event at a time gives.

        ``bind(i)`` is called before the table is read or written for the user of ``events[i]``
        (the worker points Faust's table access at that event's partition)."""
        if offsets is None:
            offsets = [None] * len(events)
        if self.explorer is not None:
            for event in events:  # a bad reward changes no state at all, not even a neighbour's
                checked_reward(event, self.scale)
        last_of: dict[str, int] = {event.user_id: i for i, event in enumerate(events)}
        records: dict[str, _Record] = {}
        capacity, window = self.settings.support_capacity, self.settings.dedup_window
        snaps = []
        for i, (event, offset) in enumerate(zip(events, offsets, strict=True)):
            record = records.get(event.user_id)
            if record is None:
                if bind is not None:
                    bind(i)
                stored = supports.get(event.user_id)
                record = records[event.user_id] = _Record(stored, UserSupport.from_bytes(stored))
            support = record.support
            watermark = support.last_offset
            redelivered = offset is not None and offset <= watermark
            # Ids still count above the watermark: a producer may send one event at two offsets.
            fresh = not redelivered and support.add(event, capacity, window)
            if offset is not None and not redelivered:
                support.last_offset = offset  # processed (applied, or a duplicate by id)
            if fresh or support.last_offset != watermark:
                record.changed = True
            row = self.catalog.ensure(event.item_id, event.domain)
            if fresh and self.settings.recency_online:
                recency = self._online_recency()
                if recency is not None:
                    recency.add(row)
            # The user's later events in this batch change ``support`` in place: freeze a copy.
            frozen = support if last_of[event.user_id] == i else support.copy()
            snap = self.snapshot(event, frozen, duplicate=not fresh)
            snap.watermark = watermark
            if self.explorer is not None:
                if bind is not None:
                    bind(i)  # the bandit tables are written for this event, in its partition
                snap.explore_seq = self.explorer.observe(event, fresh)
            snaps.append(snap)
        for user_id, record in records.items():
            if record.changed:
                if bind is not None:
                    bind(last_of[user_id])
                supports[user_id] = record.support.to_bytes()
            elif record.stored:
                # Same bytes again, on purpose: after a crash the worker's local store can hold
                # an effect whose changelog record died in the producer's buffer; the redelivered
                # event is the last chance to put it in the changelog before its offset is
                # committed (seen with `kindling chaos`: users' last effects missing from the
                # changelog).
                if bind is not None:
                    bind(last_of[user_id])
                supports[user_id] = record.stored
        return snaps

    #: With ``settings.recency_online``, the item bank is re-prepared once per this many events.
    RECENCY_REFRESH_EVENTS = 64

    def _online_recency(self) -> DecayedCounts | None:
        """The per-process online recency counts (``settings.recency_online``): they start from
        the model version's train-end counts and decay/add per fresh event this process applies.
        They live only in this process: a restarted worker starts again from the bundle's, and
        each worker counts only its own partitions (per-event decay keeps the *shares* right,
        see :mod:`models.recency`). Off (the default), the bundle's counts are served as they are,
        so a recommendation stays a function of the model, the catalog and the user's own state
        (the worker and the replay agree exactly; with it on they agree only event-for-event)."""
        half_life = self.bundle.recency_half_life
        if not self.settings.recency_online or half_life is None:
            return None
        if self._recency is None:
            self._recency = DecayedCounts(len(self.catalog), half_life,
                                          self.bundle.recency_counts(self.catalog))
        return self._recency

    def snapshot(self, event: Interaction, support: UserSupport, duplicate: bool) -> Snapshot:
        rows, targets, ratings, exclude = [], [], [], []
        catalog = self.catalog
        index, ids, has_content = catalog.index, catalog.ids, catalog.has_content
        vocab = self.bundle.vocab_index
        scale = self.scale
        # the support's columns, not an object per event: this runs for every event
        for item_id, kind, value in zip(support.ids, support.kinds, support.values, strict=True):
            row = index.get(item_id)
            if row is None:
                row = catalog.ensure(item_id, event.domain)
            exclude.append(row)
            if not (has_content[row] or ids[row] in vocab):
                # Neither content nor a trained id embedding: nothing to learn from yet.
                self.skipped_unknown += 1
                log.debug("support item %s skipped: no content and unknown to model %s",
                          item_id, self.bundle.version)
                continue
            rows.append(row)
            targets.append(target_of(kind, value, scale))
            ratings.append(rating_of(kind, value))
        return Snapshot(event, duplicate, rows, targets, ratings, exclude, support)

    def request(
        self, user_id: str, domain: str, supports: Mapping[str, bytes], request_id: str = "",
        at: float | None = None,
    ) -> Snapshot:
        """The snapshot to rank for a recommendation *request*: ``user_id``'s support set as it
        is (nothing added, nothing written back), ranked in ``domain``.

        Event-driven rankings follow the triggering event's domain, so this is how a user whose
        events are all in a source domain is served a mapped target-domain list (a transfer
        learner's ``adapt`` bridges the source events); a user with no record gets the prior.
        Raises ``ValueError`` for a domain no catalog item has: there is nothing to rank."""
        self.prepared()  # refreshes the domain names when the catalog or the model changed
        if domain not in self._domain_names:
            known = ", ".join(sorted(self._domain_names)[:20]) or "none: the catalog is empty"
            raise ValueError(f"unknown domain {domain!r} (catalog domains: {known})")
        support = UserSupport.from_bytes(supports.get(user_id))
        # A view of no item stands for the request: ranking reads only its ids and domain.
        probe = Interaction(request_id or f"request:{user_id}", user_id, "", "view", 1.0,
                            time.time() if at is None else at, domain)
        return self.snapshot(probe, support, duplicate=True)

    # ---------------------------------------------------------------- per micro-batch
    def rank(
        self, snapshots: Sequence[Snapshot], profile_of: ProfileLookup | None = None,
        model: bool = True,
    ) -> list[Recommendation]:
        """One recommendation per snapshot. ``model=False`` (the worker's ``pipeline="state"``,
        a benchmark) skips the model: no adaptation, scoring, exclusions or exploration, every
        user gets the catalog's first ``top_k`` rows with score 0, built into answers as served."""
        if not snapshots:
            return []
        prepared = self.prepared()
        learner = self.bundle.learner
        n_items = len(self.catalog)
        k = min(self.settings.top_k, n_items)
        explorer = self.explorer if model else None
        if model:
            support = self._support_batch(snapshots)
            profiles = self._profiles(snapshots, profile_of)
            with torch.inference_mode():
                state = learner.init_state(profiles)
                state = learner.adapt(state, support, prepared)
                scores = learner.score(state, prepared)[:, :n_items].clone()
                if self.settings.blend != "none":
                    scores = self._blend(scores, support, snapshots)
                support_scores = scores.gather(1, support.items).numpy() if explorer else None
                self._exclude(scores, snapshots)
                depth = explorer.depth(k, n_items) if explorer else k
                top_scores, top_rows = torch.topk(scores, depth, dim=1)
        else:
            top_rows = torch.arange(k).expand(len(snapshots), k)
            top_scores = torch.zeros(len(snapshots), k)
        now = time.time()
        out = []
        top_scores_np, top_rows_np = top_scores.numpy(), top_rows.numpy()
        slates = None
        if explorer is not None and explorer.active:
            slates = explorer.slates(snapshots, top_scores_np, top_rows_np, k, support,
                                     support_scores, self._why)
        if slates is not None:
            ids = self.catalog.ids
            for b, snap in enumerate(snapshots):
                items = tuple(RecItem(ids[row], score, why, propensity)
                              for row, score, why, propensity in slates[b]
                              if math.isfinite(score))
                out.append(self._recommendation(snap, items, now))
            return out
        # The whole batch's outputs from its arrays: ids, scores and whys as columns, no object
        # per item (RankedItems; the encoder reads the columns).
        personal = np.fromiter((bool(s.rows) for s in snapshots), dtype=bool,
                               count=len(snapshots))
        known = self._in_vocab[top_rows_np]  # the model knows the item by id
        whys = np.where(known, np.where(personal[:, None], "exploit", "popular"), "content")
        ids_l = self._ids[top_rows_np].tolist()
        # Rounded here for the whole batch (the wire carries 6 decimals), so the encoder writes
        # each score as it is instead of rounding it item by item.
        scores_l = np.round(top_scores_np.astype(np.float64), 6).tolist()
        whys_l = whys.tolist()
        finite = np.isfinite(top_scores_np)
        ragged = not finite.all()  # fewer unmasked items than k for some user
        version = self.bundle.version
        for b, snap in enumerate(snapshots):
            ids_b, scores_b, whys_b = ids_l[b], scores_l[b], whys_l[b]
            if ragged and not finite[b].all():
                n = int(finite[b].sum())  # top-k is sorted: the -inf entries are last
                ids_b, scores_b, whys_b = ids_b[:n], scores_b[:n], whys_b[:n]
            event = snap.event
            out.append(Recommendation(event.user_id,
                                      RankedItems(ids_b, scores_b, whys_b, rounded=True),
                                      version, event.event_id, now))
        return out

    def process(
        self,
        events: Sequence[Interaction],
        supports: MutableMapping[str, bytes],
        profile_of: ProfileLookup | None = None,
    ) -> list[Recommendation]:
        """apply + rank for a micro-batch (what replay runs in-process)."""
        return self.rank(self.apply_batch(events, supports), profile_of)

    # ---------------------------------------------------------------- helpers
    def _blend(
        self, scores: torch.Tensor, support: SupportBatch, snapshots: Sequence[Snapshot]
    ) -> torch.Tensor:
        """Hybrid bootstrap: mix a pure content score (text similarity to the user's support)
        into the model score with a weight set by the user's interaction count: the fixed
        schedule, or per-bucket weights learned on warm users (``bundle.metadata["blend"]``)."""
        from models.content import blend_scores, content_scores, count_bucket, fixed_content_weight

        counts = torch.tensor([s.support.n_total for s in snapshots])
        # In memory the bundle's metadata is flat; loaded from disk it sits under "metadata".
        learned = self.bundle.metadata.get("blend") or self.bundle.metadata.get(
            "metadata", {}).get("blend")
        if self.settings.blend == "learned" and learned:
            weights = torch.tensor(learned, dtype=torch.float32)[count_bucket(counts)]
        else:
            weights = fixed_content_weight(counts)
        features = torch.from_numpy(self.catalog.features)
        return blend_scores(scores, content_scores(support, features), weights)

    def _recommendation(
        self, snap: Snapshot, items: tuple[RecItem, ...], now: float
    ) -> Recommendation:
        return Recommendation(
            user_id=snap.event.user_id,
            items=items,
            model_version=self.bundle.version,
            source_event_id=snap.event.event_id,
            produced_at=now,
        )

    def _why(self, row: int, personal: bool) -> str:
        if self.catalog.ids[row] not in self.bundle.vocab_index:
            return "content"
        return "exploit" if personal else "popular"

    def _support_batch(self, snapshots: Sequence[Snapshot]) -> SupportBatch:
        b = len(snapshots)
        lengths = np.fromiter((len(x.rows) for x in snapshots), dtype=np.int64, count=b)
        s = int(lengths.max(initial=0))
        items = np.zeros((b, s), dtype=np.int64)
        targets = np.zeros((b, s), dtype=np.float32)
        ratings = np.full((b, s), np.nan, dtype=np.float32)
        # Right-aligned would change GRU semantics; left-aligned + mask, oldest first. A boolean
        # mask fills in row-major order, i.e. each user's events in order: one assignment per
        # array for the whole batch.
        mask = np.arange(s)[None, :] < lengths[:, None]
        if s:
            items[mask] = list(chain.from_iterable(x.rows for x in snapshots))
            targets[mask] = list(chain.from_iterable(x.targets for x in snapshots))
            ratings[mask] = list(chain.from_iterable(x.ratings for x in snapshots))
        return SupportBatch(
            torch.from_numpy(items),
            torch.from_numpy(targets),
            torch.from_numpy(ratings),
            torch.from_numpy(mask),
        )

    def _profiles(
        self, snapshots: Sequence[Snapshot], profile_of: ProfileLookup | None
    ) -> torch.Tensor:
        out = np.zeros((len(snapshots), self.settings.attribute_dim), dtype=np.float32)
        if profile_of is not None:
            for i, snap in enumerate(snapshots):
                attrs = profile_of(snap.event.user_id)
                if attrs:
                    out[i] = self.featurizer.encode_user(dict(attrs))
        return torch.from_numpy(out)

    def _exclude(self, scores: torch.Tensor, snapshots: Sequence[Snapshot]) -> None:
        """Items already seen (support + Bloom of evicted) and items of other domains: -inf,
        through one (batch, items) mask built with array operations and applied once."""
        scores.masked_fill_(torch.from_numpy(self._exclusion_mask(snapshots, scores.shape[1])),
                            -math.inf)

    def _exclusion_mask(self, snapshots: Sequence[Snapshot], n_items: int) -> np.ndarray:
        mask = np.zeros((len(snapshots), n_items), dtype=bool)
        if len(self._domain_names) > 1:
            # A user's event domain unknown to the catalog masks nothing (code -1 matches none
            # of the rows' codes, so the comparison is skipped for it).
            codes = np.fromiter((self._domain_names.get(s.event.domain, -1) for s in snapshots),
                                dtype=np.int64, count=len(snapshots))
            known = codes >= 0
            mask[known] = self._domain_codes[None, :n_items] != codes[known, None]
        users = [i for i, s in enumerate(snapshots) if s.exclude]
        if users:
            rows = np.repeat(users, [len(snapshots[i].exclude) for i in users])
            mask[rows, np.concatenate([snapshots[i].exclude for i in users])] = True
        positions = self.catalog.bloom[:n_items]  # (items, hashes)
        evicted = [i for i, s in enumerate(snapshots) if len(s.support.bloom) == BLOOM_BYTES]
        if evicted:
            blooms = np.frombuffer(b"".join(snapshots[i].support.bloom for i in evicted),
                                   dtype=np.uint8).reshape(len(evicted), BLOOM_BYTES)
            bits = np.unpackbits(blooms, axis=1, bitorder="little")  # (users, bloom bits)
            # bit-major, so each hash's look-up gathers whole rows: ~4x faster than
            # ``bits[:, positions].all(axis=2)`` (100 users x 2,000 items)
            by_bit = np.ascontiguousarray(bits.T)
            hit = by_bit[positions[:, 0]]
            for h in range(1, positions.shape[1]):
                hit &= by_bit[positions[:, h]]
            mask[evicted] |= hit.T.astype(bool)
        for i, snap in enumerate(snapshots):  # a Bloom of another size: one user at a time
            if snap.support.bloom and len(snap.support.bloom) != BLOOM_BYTES:
                mask[i] |= snap.support.seen_mask(positions)
        return mask
