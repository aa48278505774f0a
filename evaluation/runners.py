"""Adapters that let the replay protocols drive baselines and Kindling learners the same way.

A Kindling learner is driven only through the serving code path (:class:`engine.recommender.
Recommender`: ``apply`` per event, ``rank`` per micro-batch) on a model trained by
:func:`engine.trainer.train_bundle`. A baseline is driven through :class:`evaluation.baselines.
Ranker`. Both record per-recommendation latency samples (milliseconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from evaluation import baselines
from schemas import Interaction, Item

log = logging.getLogger(__name__)

History = Sequence[Interaction]


class Runner(Protocol):
    """What a replay protocol needs from a model, baseline or Kindling learner."""

    name: str
    latencies_ms: list[float]
    info: dict[str, Any]

    def fit(self, train: Sequence[Interaction]) -> None:
        """Train on ``train`` (time-ordered); the universe of rankable items is fixed here."""

    def cold_start(
        self, histories: Sequence[History], n: int | Sequence[int], k: int, *,
        ratings: bool = True,
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Per history: the top ``k`` after its first ``n`` events (support items excluded) and
        the predicted ratings of its remaining events (the query; empty arrays when
        ``ratings`` is false). ``n`` may be one support size per history."""

    def rank_among(
        self, histories: Sequence[History], candidates: Sequence[str], k: int
    ) -> list[list[str]]:
        """Per history (a warm user's training events): top ``k`` of ``candidates``."""

    def stream(
        self, warm: Sequence[Interaction], events: Sequence[Interaction], k: int
    ) -> Iterator[list[str]]:
        """Prequential: after warming up on ``warm``, yield for each of ``events`` the user's
        current top ``k`` *before* the event, then learn from it."""


def per_history(n: int | Sequence[int], histories: Sequence[History]) -> list[int]:
    """One support size per history (``n`` for all of them when it is an int)."""
    if isinstance(n, int):
        return [n] * len(histories)
    if len(n) != len(histories):
        raise ValueError(f"{len(n)} support sizes for {len(histories)} histories")
    return [int(m) for m in n]


def batches(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


# ------------------------------------------------------------------------------ baselines


class BaselineRunner:
    """Drives a :class:`~evaluation.baselines.Ranker`; each cold-start user gets a fork of the
    fitted ranker, so new users never see each other's events."""

    def __init__(
        self, name: str, universe: Sequence[str], seed: int = 0,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.universe = list(universe)
        self.model = baselines.create(name, seed=seed, **dict(params or {}))
        self.latencies_ms: list[float] = []
        self.info: dict[str, Any] = {"kind": "baseline", "params": dict(params or {})}

    def fit(self, train: Sequence[Interaction]) -> None:
        t0 = time.perf_counter()
        self.model.fit(train, self.universe)
        self.info["fit_seconds"] = time.perf_counter() - t0

    def _recommend(
        self,
        model: baselines.Ranker,
        user_id: str,
        k: int,
        exclude: set[str],
        candidates: Sequence[str] | None = None,
    ) -> list[str]:
        t0 = time.perf_counter()
        out = model.recommend(user_id, k, exclude, candidates)
        self.latencies_ms.append(1000.0 * (time.perf_counter() - t0))
        return out

    def cold_start(
        self, histories: Sequence[History], n: int | Sequence[int], k: int, *,
        ratings: bool = True,
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        ranked, predicted = [], []
        for h, m in zip(histories, per_history(n, histories), strict=True):
            model = self.model.fork()
            for e in h[:m]:
                model.observe(e)
            user = h[0].user_id
            ranked.append(self._recommend(model, user, k, {e.item_id for e in h[:m]}))
            predicted.append(np.array(
                [model.predict_rating(user, e.item_id) for e in h[m:]] if ratings else [],
                dtype=float))
        return ranked, predicted

    def rank_among(
        self, histories: Sequence[History], candidates: Sequence[str], k: int
    ) -> list[list[str]]:
        return [self._recommend(self.model, h[0].user_id, k, set(), candidates) for h in histories]

    def stream(
        self, warm: Sequence[Interaction], events: Sequence[Interaction], k: int
    ) -> Iterator[list[str]]:
        seen: dict[str, set[str]] = {}
        for e in warm:
            seen.setdefault(e.user_id, set()).add(e.item_id)
        for e in events:
            mine = seen.setdefault(e.user_id, set())
            yield self._recommend(self.model, e.user_id, k, mine)
            self.model.observe(e)
            mine.add(e.item_id)


# ------------------------------------------------------------------------------ Kindling


class KindlingRunner:
    """Drives a Kindling learner through :class:`~engine.recommender.Recommender`.

    The catalog holds every item of the log's item file (content known up front, as in
    production) plus the items of the training events; ``train_bundle`` trains on the training
    events only, so items first seen later have ``id_index == -1`` and are scored from content.
    """

    def __init__(
        self,
        name: str,
        items: Sequence[Item],
        profiles: Mapping[str, Mapping[str, Any]],
        *,
        settings: Any = None,
        steps: int = 300,
        seed: int = 0,
        batch_size: int = 64,
        encoder: Any = None,
    ) -> None:
        from engine.catalog import Catalog
        from engine.features import HashingFeaturizer
        from engine.settings import Settings

        self.name = name
        self.settings = (settings or Settings()).replace(seed=seed)
        self.featurizer = HashingFeaturizer(self.settings.feature_dim, self.settings.attribute_dim)
        # ``encoder``: any engine.catalog.ItemEncoder (e.g. MiniLM); default the hashing featurizer
        self.catalog = Catalog(encoder or self.featurizer)
        self.catalog.upsert(list(items))
        self.profiles = profiles
        self.steps, self.seed, self.batch_size = steps, seed, batch_size
        self.rec: Any = None
        self.latencies_ms: list[float] = []
        self.info: dict[str, Any] = {"kind": "kindling"}

    @classmethod
    def sharing_core(cls, donor: KindlingRunner, name: str) -> KindlingRunner:
        """A runner that serves ``donor``'s trained composite learner's core as learner ``name``
        (same catalog, settings and seed): ``fit`` builds no model, it wraps the core in a copy
        of the donor's bundle. Replay uses it so the quality matrix trains the hybrid's core
        once instead of training an identical ``fomaml`` a second time."""
        runner = cls.__new__(cls)
        runner.name = name
        runner.settings = donor.settings
        runner.featurizer, runner.catalog = donor.featurizer, donor.catalog
        runner.profiles = donor.profiles
        runner.steps, runner.seed, runner.batch_size = donor.steps, donor.seed, donor.batch_size
        runner.rec = None
        runner.latencies_ms = []
        runner.info = {"kind": "kindling", "core_of": donor.name}
        runner._donor = donor
        return runner

    def profile_of(self, user_id: str) -> Mapping[str, Any] | None:
        return self.profiles.get(user_id)

    def fit(self, train: Sequence[Interaction]) -> None:
        from engine.recommender import Recommender
        from engine.trainer import train_bundle

        donor = getattr(self, "_donor", None)
        if donor is not None:
            core = donor.rec.bundle.learner.core
            self.info.update(fit_seconds=0.0, train={
                k: v for k, v in donor.info.get("train", {}).items() if k != "hybrid"})
            self.rec = Recommender(self.settings, replace(donor.rec.bundle, learner=core),
                                   self.catalog, self.featurizer)
            return
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        bundle, report = train_bundle(
            self.settings,
            train,
            self.catalog,
            learner=self.name,
            steps=self.steps,
            profiles=self.profiles,
            seed=self.seed,
            # The protocol's new users are the held-out set; a promotion split (used by live
            # retraining) would only withhold training users here (measured: -3 to -9% NDCG).
            heldout_fraction=0.0,
        )
        self.info["fit_seconds"] = time.perf_counter() - t0
        self.info["train"] = {k: v for k, v in report.items()
                              if isinstance(v, int | float | str) or k in ("hybrid",
                                                                         "phase_seconds")}
        self.rec = Recommender(self.settings, bundle, self.catalog, self.featurizer)

    def with_top_k(self, k: int, capacity: int) -> None:
        """Serve ``k`` items per recommendation and keep at least ``capacity`` support events."""
        self.settings = self.settings.replace(
            top_k=k, support_capacity=max(capacity, self.settings.support_capacity)
        )
        if self.rec is not None:
            self.rec.settings = self.settings

    def _rank(self, snaps: Sequence[Any]) -> list[list[str]]:
        t0 = time.perf_counter()
        recs = self.rec.rank(snaps, self.profile_of)
        per = 1000.0 * (time.perf_counter() - t0) / max(len(snaps), 1)
        self.latencies_ms.extend([per] * len(snaps))
        return [r.item_ids() for r in recs]

    def _adapted(self, snaps: Sequence[Any]) -> tuple[Any, dict, dict]:
        """The learner's per-user state after adaptation, computed exactly as
        :meth:`Recommender.rank` does (same support batch, profiles, prepared bank)."""
        rec = self.rec
        learner = rec.bundle.learner
        prepared = rec.prepared()
        with torch.inference_mode():
            state = learner.init_state(rec._profiles(snaps, self.profile_of))
            state = learner.adapt(state, rec._support_batch(snaps), prepared)
        return learner, state, prepared

    def _predict(self, snaps: Sequence[Any], queries: Sequence[History]) -> list[np.ndarray]:
        rows = [[self.catalog.row(e.item_id) for e in q] for q in queries]
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            return [np.zeros(0) for _ in queries]
        idx = np.zeros((len(rows), width), dtype=np.int64)
        for b, r in enumerate(rows):
            idx[b, : len(r)] = [0 if x is None else x for x in r]
        learner, state, prepared = self._adapted(snaps)
        with torch.inference_mode():
            pred = learner.predict_rating(state, prepared, torch.from_numpy(idx)).numpy()
        return [
            np.where([x is None for x in r], np.nan, pred[b, : len(r)]) for b, r in enumerate(rows)
        ]

    def cold_start(
        self, histories: Sequence[History], n: int | Sequence[int], k: int, *,
        ratings: bool = True,
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        supports: dict[str, bytes] = {}  # a fresh support store per call
        ranked: list[list[str]] = []
        predicted: list[np.ndarray] = []
        sizes = per_history(n, histories)
        for start in range(0, len(histories), self.batch_size):
            chunk = histories[start : start + self.batch_size]
            cut = sizes[start : start + self.batch_size]
            snaps = [[self.rec.apply(e, supports) for e in h[:m]][-1]
                     for h, m in zip(chunk, cut, strict=True)]
            ranked.extend(row[:k] for row in self._rank(snaps))
            if ratings:
                queries = [h[m:] for h, m in zip(chunk, cut, strict=True)]
                predicted.extend(self._predict(snaps, queries))
            else:
                predicted.extend(np.zeros(0) for _ in chunk)
        return ranked, predicted

    def _warm_snapshots(self, histories: Sequence[History]) -> list[Any]:
        supports: dict[str, bytes] = {}
        return [[self.rec.apply(e, supports) for e in h][-1] for h in histories]

    def rank_among(
        self, histories: Sequence[History], candidates: Sequence[str], k: int
    ) -> list[list[str]]:
        rows = np.array([self.catalog.row(c) for c in candidates], dtype=np.int64)
        ids = np.asarray(candidates)
        out: list[list[str]] = []
        for chunk in batches(histories, self.batch_size):
            snaps = self._warm_snapshots(chunk)
            t0 = time.perf_counter()
            learner, state, prepared = self._adapted(snaps)
            with torch.inference_mode():
                scores = learner.score(state, prepared)[:, torch.from_numpy(rows)]
                top = torch.topk(scores, min(k, len(rows)), dim=1).indices.numpy()
            per = 1000.0 * (time.perf_counter() - t0) / len(snaps)
            self.latencies_ms.extend([per] * len(snaps))
            out.extend(ids[t].tolist() for t in top)
        return out

    def stream(
        self, warm: Sequence[Interaction], events: Sequence[Interaction], k: int
    ) -> Iterator[list[str]]:
        from engine.support import UserSupport

        supports: dict[str, bytes] = {}
        active = {e.user_id for e in events}
        for e in warm:
            if e.user_id in active:
                self.rec.apply(e, supports)
        current: dict[str, list[str]] = {}
        for chunk in _distinct_user_batches(events, self.batch_size):
            missing = [e for e in chunk if e.user_id not in current]
            if missing:
                # first time in the stream: the recommendation the user's state serves now
                pre = [
                    self.rec.snapshot(e, UserSupport.from_bytes(supports.get(e.user_id)), False)
                    for e in missing
                ]
                for e, items in zip(missing, self._rank(pre), strict=True):
                    current[e.user_id] = items
            for e in chunk:
                yield current[e.user_id][:k]
            snaps = [self.rec.apply(e, supports) for e in chunk]
            for e, items in zip(chunk, self._rank(snaps), strict=True):
                current[e.user_id] = items


def _distinct_user_batches(events: Sequence[Interaction], size: int) -> Iterator[list[Interaction]]:
    """Consecutive micro-batches in which each user appears at most once (a user's second event
    must be scored against the recommendation made after the first)."""
    batch: list[Interaction] = []
    users: set[str] = set()
    for e in events:
        if len(batch) >= size or e.user_id in users:
            yield batch
            batch, users = [], set()
        batch.append(e)
        users.add(e.user_id)
    if batch:
        yield batch
