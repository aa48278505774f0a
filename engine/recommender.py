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
from typing import Any

import numpy as np
import torch

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.exploration import Explorer, checked_reward
from engine.features import HashingFeaturizer
from engine.settings import Settings
from engine.support import UserSupport
from models.base import SupportBatch
from schemas import Interaction, RatingScale, RecItem, Recommendation

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
        self._prepared_key: tuple[int, str] | None = None
        self._prepared: dict[str, torch.Tensor] = {}
        self._domain_codes: np.ndarray = np.zeros(0, dtype=np.int64)
        self._domain_names: dict[str, int] = {}
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

    def prepared(self) -> dict[str, torch.Tensor]:
        key = (self.catalog.version, self.bundle.version)
        if self._prepared_key != key:
            with torch.inference_mode():
                self._prepared = self.bundle.learner.prepare(self.bundle.bank(self.catalog))
            self._domain_codes, self._domain_names = self.catalog.domain_codes()
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
        if self.explorer is not None:
            checked_reward(event, self.scale)  # a bad reward changes no state at all
        stored = supports.get(event.user_id)
        support = UserSupport.from_bytes(stored)
        watermark = support.last_offset
        redelivered = offset is not None and offset <= watermark
        # Ids still count above the watermark: a producer may send one event at two offsets.
        fresh = not redelivered and support.add(
            event, self.settings.support_capacity, self.settings.dedup_window
        )
        if offset is not None and not redelivered:
            support.last_offset = offset  # processed (applied, or a duplicate by id)
        if fresh or support.last_offset != watermark:
            supports[event.user_id] = support.to_bytes()
        elif stored:
            # Same bytes again, on purpose: after a crash the worker's local store can hold an
            # effect whose changelog record died in the producer's buffer; the redelivered event
            # is the last chance to put it in the changelog before its offset is committed
            # (seen with `kindling chaos`: users' last effects missing from the changelog).
            supports[event.user_id] = stored
        self.catalog.ensure(event.item_id, event.domain)
        snap = self.snapshot(event, support, duplicate=not fresh)
        snap.watermark = watermark
        if self.explorer is not None:
            snap.explore_seq = self.explorer.observe(event, fresh)
        return snap

    def snapshot(self, event: Interaction, support: UserSupport, duplicate: bool) -> Snapshot:
        rows, targets, ratings, exclude = [], [], [], []
        for e in support.events:
            row = self.catalog.ensure(e.item_id, event.domain)
            exclude.append(row)
            if not self._representable(row):
                # Neither content nor a trained id embedding: nothing to learn from yet.
                self.skipped_unknown += 1
                log.debug("support item %s skipped: no content and unknown to model %s",
                          e.item_id, self.bundle.version)
                continue
            rows.append(row)
            targets.append(e.target(self.scale))
            ratings.append(e.rating())
        return Snapshot(event, duplicate, rows, targets, ratings, exclude, support)

    def _representable(self, row: int) -> bool:
        return self.catalog.has_content[row] or self.catalog.ids[row] in self.bundle.vocab_index

    # ---------------------------------------------------------------- per micro-batch
    def rank(
        self, snapshots: Sequence[Snapshot], profile_of: ProfileLookup | None = None
    ) -> list[Recommendation]:
        if not snapshots:
            return []
        prepared = self.prepared()
        learner = self.bundle.learner
        n_items = len(self.catalog)
        support = self._support_batch(snapshots)
        profiles = self._profiles(snapshots, profile_of)
        with torch.inference_mode():
            state = learner.init_state(profiles)
            state = learner.adapt(state, support, prepared)
            scores = learner.score(state, prepared)[:, :n_items].clone()
            if self.settings.blend != "none":
                scores = self._blend(scores, support, snapshots)
            support_scores = scores.gather(1, support.items).numpy() if self.explorer else None
            self._exclude(scores, snapshots)
            k = min(self.settings.top_k, n_items)
            depth = self.explorer.depth(k, n_items) if self.explorer else k
            top_scores, top_rows = torch.topk(scores, depth, dim=1)
        now = time.time()
        out = []
        top_scores_np, top_rows_np = top_scores.numpy(), top_rows.numpy()
        slates = None
        if self.explorer is not None and self.explorer.active:
            slates = self.explorer.slates(snapshots, top_scores_np, top_rows_np, k, support,
                                          support_scores, self._why)
        for b, snap in enumerate(snapshots):
            personal = bool(snap.rows)
            if slates is not None:
                items = tuple(RecItem(self.catalog.ids[row], score, why, propensity)
                              for row, score, why, propensity in slates[b]
                              if math.isfinite(score))
                out.append(self._recommendation(snap, items, now))
                continue
            items = tuple(
                RecItem(
                    item_id=self.catalog.ids[row],
                    score=float(score),
                    why=self._why(row, personal),
                )
                for score, row in zip(top_scores_np[b], top_rows_np[b], strict=True)
                if math.isfinite(score)
            )
            out.append(
                Recommendation(
                    user_id=snap.event.user_id,
                    items=items,
                    model_version=self.bundle.version,
                    source_event_id=snap.event.event_id,
                    produced_at=now,
                )
            )
        return out

    def process(
        self,
        events: Sequence[Interaction],
        supports: MutableMapping[str, bytes],
        profile_of: ProfileLookup | None = None,
    ) -> list[Recommendation]:
        """apply + rank for a micro-batch (what replay runs in-process)."""
        return self.rank([self.apply(e, supports) for e in events], profile_of)

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
        s = max((len(x.rows) for x in snapshots), default=0)
        items = np.zeros((b, s), dtype=np.int64)
        targets = np.zeros((b, s), dtype=np.float32)
        ratings = np.full((b, s), np.nan, dtype=np.float32)
        mask = np.zeros((b, s), dtype=bool)
        for i, snap in enumerate(snapshots):
            n = len(snap.rows)
            if n:
                # Right-aligned would change GRU semantics; left-aligned + mask, oldest first.
                items[i, :n] = snap.rows
                targets[i, :n] = snap.targets
                ratings[i, :n] = snap.ratings
                mask[i, :n] = True
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
        """Items already seen (support + Bloom of evicted) and items of other domains: -inf."""
        n_items = scores.shape[1]
        multi_domain = len(self._domain_names) > 1
        domain_codes = torch.from_numpy(self._domain_codes[:n_items]) if multi_domain else None
        bloom = self.catalog.bloom
        for i, snap in enumerate(snapshots):
            if snap.exclude:
                scores[i, snap.exclude] = -math.inf
            seen = snap.support.seen_mask(bloom)
            if seen is not None:
                scores[i, torch.from_numpy(seen)] = -math.inf
            if domain_codes is not None:
                code = self._domain_names.get(snap.event.domain)
                if code is not None:
                    scores[i, domain_codes != code] = -math.inf
