"""Non-meta-learned baselines behind one small :class:`Ranker` protocol, selectable by name.

=====================  ========================================================================
``random``             uniformly random ranking (seeded); ratings uniform in the seen range
``popularity``         global interaction counts; ratings = item mean (shrunk to global mean)
``popularity-recent``  counts over a sliding window of the last ``window`` events
``river-biasedmf``     :class:`river.reco.BiasedMF`, ``learn_one`` per event, ranked by the
                       predicted rating computed from river's weights as one matrix product
``river-funkmf``       :class:`river.reco.FunkMF`, same
``itemknn``            item-item asymmetric cosine on binary co-occurrence (scipy sparse),
                       user score = sum of similarities to the user's history
``ease``               EASE (Steck 2019): closed-form item-item regression, user score = sum of
                       the weights from the user's items (:mod:`models.itemitem`)
``sasrec``             SASRec (Kang & McAuley 2018), CPU-sized, next-item softmax training on
                       the training users (:mod:`models.sasrec`); user score = next-item scores
                       after the user's sequence
=====================  ========================================================================

Every ranker scores all candidate items in a vectorised way (no per-item Python loop). Unseen
users get the ranker's fallback (popularity order for the count-based ones, biases for MF).

Each ranker class names its main hyper-parameter and the values worth trying in ``TUNING``
(``{"param": (value, ...)}``); :mod:`evaluation.tuning` picks one on training users only.
"""

from __future__ import annotations

import copy
import math
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import sparse

from schemas import Interaction

_SHRINK = 5.0  # pseudo-ratings pulling an item's mean rating towards the global mean


@runtime_checkable
class Ranker(Protocol):
    """What the replay harness needs from a baseline."""

    name: str

    def fit(self, events: Sequence[Interaction], catalog: Sequence[str] = ()) -> None:
        """Train on ``events`` (time-ordered); ``catalog`` adds items that may be ranked."""

    def observe(self, event: Interaction) -> None:
        """Online update with one event (the user's history grows too)."""

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude: Iterable[str] = (),
        candidates: Sequence[str] | None = None,
    ) -> list[str]:
        """Top ``k`` item ids for ``user_id``, never one in ``exclude``; among ``candidates``
        when given (default: every known item)."""

    def predict_rating(self, user_id: str, item_id: str) -> float:
        """Predicted rating of ``item_id`` by ``user_id``."""

    def fork(self) -> Ranker:
        """A copy whose updates never reach this ranker (cheap: fitted state is shared)."""


class _Base:
    """Item vocabulary, per-user histories, rating statistics and the top-k selection."""

    name = "base"
    #: the main hyper-parameter and the values :mod:`evaluation.tuning` tries (none: nothing)
    TUNING: dict[str, tuple[Any, ...]] = {}
    #: ends of the grid that are the parameter's own limits (a best value there is not a sign
    #: that the grid stops too early), e.g. ``{"alpha": (None, 1.0)}``
    TUNING_LIMITS: dict[str, tuple[Any, Any]] = {}
    #: an ordered grid stops after this many values in a row below the best (0: try them all)
    TUNING_PATIENCE: int = 0
    #: per-key tables a fork shares copy-on-write (a fork costs O(keys), not O(events))
    _cow_tables: tuple[str, ...] = ("history", "rated")

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.history: dict[str, list[int]] = defaultdict(list)
        self.rated: dict[str, dict[int, float]] = defaultdict(dict)
        self.rating_sum = np.zeros(0)
        self.rating_n = np.zeros(0)
        self.rating_lo, self.rating_hi = math.inf, -math.inf
        # keys of per-user/per-item tables still shared with a fork (copied on first write)
        self._shared: dict[str, set] = {}

    # ---- vocabulary --------------------------------------------------------------------------
    def _row(self, item_id: str) -> int:
        row = self.index.get(item_id)
        if row is None:
            row = len(self.ids)
            self.ids.append(item_id)
            self.index[item_id] = row
            self._grow(row + 1)
        return row

    def _grow(self, n: int) -> None:
        if n > self.rating_sum.shape[0]:
            cap = max(n, 2 * self.rating_sum.shape[0], 256)
            self.rating_sum = _resized(self.rating_sum, cap)
            self.rating_n = _resized(self.rating_n, cap)

    # ---- training ----------------------------------------------------------------------------
    def fit(self, events: Sequence[Interaction], catalog: Sequence[str] = ()) -> None:
        for item_id in catalog:
            self._row(item_id)
        for event in events:
            self.observe(event)

    def _own(self, table: str, key: Any) -> None:
        """Copy ``getattr(self, table)[key]`` before writing to it if a fork shares it."""
        shared = self._shared.get(table)
        if shared and key in shared:
            shared.discard(key)
            values = getattr(self, table)
            values[key] = copy.copy(values[key])

    def _share(self, clone: _Base, table: str) -> None:
        """Give ``clone`` a shallow copy of a per-key table; both copy a value on write."""
        values = getattr(self, table)
        setattr(clone, table, defaultdict(values.default_factory, values))
        keys = set(values)
        self._shared[table] = self._shared.get(table, set()) | keys
        clone._shared[table] = set(keys)

    def observe(self, event: Interaction) -> None:
        row = self._row(event.item_id)
        self._own("history", event.user_id)
        self._own("rated", event.user_id)
        self.history[event.user_id].append(row)
        if event.kind == "rate":
            self.rated[event.user_id][row] = event.value
            self.rating_sum[row] += event.value
            self.rating_n[row] += 1
            self.rating_lo = min(self.rating_lo, event.value)
            self.rating_hi = max(self.rating_hi, event.value)

    def fork(self) -> _Base:
        clone = copy.copy(self)
        clone._shared = {}
        clone.ids = list(self.ids)
        clone.index = dict(self.index)
        for table in self._cow_tables:
            self._share(clone, table)
        clone.rating_sum = self.rating_sum.copy()
        clone.rating_n = self.rating_n.copy()
        return clone

    # ---- ranking -----------------------------------------------------------------------------
    def scores(self, user_id: str) -> np.ndarray:
        """Scores of every known item (length ``len(self.ids)``), higher is better."""
        raise NotImplementedError

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude: Iterable[str] = (),
        candidates: Sequence[str] | None = None,
    ) -> list[str]:
        for item_id in candidates or ():
            self._row(item_id)
        s = np.asarray(self.scores(user_id), dtype=np.float64)[: len(self.ids)].copy()
        if candidates is not None:
            allowed = np.full(s.shape, -np.inf)
            rows = np.fromiter((self.index[i] for i in candidates), dtype=np.int64)
            allowed[rows] = s[rows]
            s = allowed
        rows = [self.index[i] for i in exclude if i in self.index]
        s[rows] = -np.inf
        return [self.ids[r] for r in top_k(s, k)]

    # ---- ratings -----------------------------------------------------------------------------
    def global_mean(self) -> float:
        n = self.rating_n.sum()
        return float(self.rating_sum.sum() / n) if n else 3.0

    def item_mean(self, item_id: str) -> float:
        row = self.index.get(item_id)
        g = self.global_mean()
        if row is None:
            return g
        return float((self.rating_sum[row] + _SHRINK * g) / (self.rating_n[row] + _SHRINK))

    def predict_rating(self, user_id: str, item_id: str) -> float:
        return self.item_mean(item_id)


def _resized(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best finite scores, best first; ties broken by lower row (stable)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0 or k <= 0:
        return finite[:0]
    s = scores[finite]
    if finite.size > k:
        # the k-th best value; keep everything >= it, then sort stably
        kth = np.partition(s, finite.size - k)[finite.size - k]
        keep = s >= kth
        finite, s = finite[keep], s[keep]
    order = np.lexsort((finite, -s))[:k]
    return finite[order]


# -------------------------------------------------------------------------------- count-based


class RandomRanker(_Base):
    """Uniform random ranking, seeded; ratings uniform on the observed rating range."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.rng = np.random.default_rng(seed)

    def scores(self, user_id: str) -> np.ndarray:
        return self.rng.random(len(self.ids))

    def predict_rating(self, user_id: str, item_id: str) -> float:
        lo, hi = (self.rating_lo, self.rating_hi) if self.rating_lo <= self.rating_hi else (0, 5)
        return float(self.rng.uniform(lo, hi))

    def fork(self) -> RandomRanker:
        clone = super().fork()
        clone.rng = np.random.default_rng(self.rng.integers(2**63))
        return clone  # type: ignore[return-value]


class PopularityRanker(_Base):
    """Most-interacted items first (global counts since ``fit``)."""

    name = "popularity"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.counts = np.zeros(0)

    def _grow(self, n: int) -> None:
        super()._grow(n)
        if n > self.counts.shape[0]:
            self.counts = _resized(self.counts, max(n, 2 * self.counts.shape[0], 256))

    def observe(self, event: Interaction) -> None:
        super().observe(event)
        self.counts[self.index[event.item_id]] += 1

    def scores(self, user_id: str) -> np.ndarray:
        return self.counts[: len(self.ids)]

    def fork(self) -> PopularityRanker:
        clone = super().fork()
        clone.counts = self.counts.copy()
        return clone  # type: ignore[return-value]


class RecentPopularityRanker(PopularityRanker):
    """Counts over the last ``window`` events only (a sliding window)."""

    name = "popularity-recent"
    TUNING = {"window": (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)}

    def __init__(self, seed: int = 0, window: int = 5000) -> None:
        super().__init__(seed)
        self.window = window
        self.recent: deque[int] = deque()

    def observe(self, event: Interaction) -> None:
        super().observe(event)
        self.recent.append(self.index[event.item_id])
        if len(self.recent) > self.window:
            self.counts[self.recent.popleft()] -= 1

    def fork(self) -> RecentPopularityRanker:
        clone = super().fork()
        clone.recent = deque(self.recent)
        return clone  # type: ignore[return-value]


# -------------------------------------------------------------------------------- item-kNN


class ItemKNNRanker(PopularityRanker):
    """Item-item asymmetric cosine of binary co-occurrence (Aiolli 2013),
    ``sim(j → i) = C_ij / (n_j^α · n_i^(1-α))``; ``α = 0.5`` is the cosine, a larger ``α``
    favours popular candidates.

    ``fit`` builds the co-occurrence matrix ``C = XᵀX`` once (sparse); ``observe`` records new
    co-occurrences in a small per-item delta so online updates stay cheap. A user's score vector
    is ``Σ_{j ∈ history} sim(j, ·)``; users without history fall back to popularity.
    """

    name = "itemknn"
    _cow_tables = ("history", "rated", "delta", "seen")
    # α = 1 is the family's end: the conditional probability C_ij / n_j (no candidate
    # normalisation at all)
    TUNING = {"alpha": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)}
    TUNING_LIMITS = {"alpha": (None, 1.0)}

    def __init__(self, seed: int = 0, alpha: float = 0.5) -> None:
        super().__init__(seed)
        self.alpha = alpha
        self.cooc: sparse.csr_matrix = sparse.csr_matrix((0, 0))
        self.delta: dict[int, Counter[int]] = defaultdict(Counter)
        self.seen: dict[str, set[int]] = defaultdict(set)

    def fit(self, events: Sequence[Interaction], catalog: Sequence[str] = ()) -> None:
        for item_id in catalog:
            self._row(item_id)
        for event in events:
            _Base.observe(self, event)
            row = self.index[event.item_id]
            if row not in self.seen[event.user_id]:
                self.seen[event.user_id].add(row)
                self.counts[row] += 1
        self.cooc = self._cooccurrence()

    def _cooccurrence(self) -> sparse.csr_matrix:
        users = list(self.seen)
        lengths = [len(self.seen[u]) for u in users]
        cols = np.fromiter((i for u in users for i in self.seen[u]), dtype=np.int64)
        rows = np.repeat(np.arange(len(users)), lengths)
        x = sparse.csr_matrix(
            (np.ones(cols.size, dtype=np.float32), (rows, cols)),
            shape=(len(users), len(self.ids)),
        )
        c = (x.T @ x).tocsr()
        c.setdiag(0)
        c.eliminate_zeros()
        return c

    def observe(self, event: Interaction) -> None:
        _Base.observe(self, event)
        row = self.index[event.item_id]
        self._own("seen", event.user_id)
        mine = self.seen[event.user_id]
        if row in mine:
            return
        self._own("delta", row)
        for other in mine:
            self._own("delta", other)
            self.delta[row][other] += 1
            self.delta[other][row] += 1
        mine.add(row)
        self.counts[row] += 1

    def _similarity_sum(self, rows: Sequence[int]) -> np.ndarray:
        """``Σ_{j ∈ rows} sim(j, ·)`` as one sparse product: ``(C[rows]ᵀ w) / n^(1-α)`` with
        ``w_j = n_j^-α``, plus the online co-occurrence deltas."""
        n = len(self.ids)
        counts = np.maximum(self.counts[:n], 1.0)
        norms = counts ** (1.0 - self.alpha)
        idx = np.asarray(rows, dtype=np.int64)
        weights = counts[idx] ** -self.alpha
        total = np.zeros(n)
        inside = idx < self.cooc.shape[0]
        if inside.any():
            part = self.cooc[idx[inside]].T @ weights[inside]
            total[: part.shape[0]] += part
        for r, w in zip(idx.tolist(), weights.tolist(), strict=True):
            extra = self.delta.get(r)
            if extra:
                cols = np.fromiter(extra.keys(), dtype=np.int64, count=len(extra))
                total[cols] += w * np.fromiter(extra.values(), dtype=np.float64, count=len(extra))
        return total / norms

    def scores(self, user_id: str) -> np.ndarray:
        rows = sorted(self.seen.get(user_id, ()))
        pop = self.counts[: len(self.ids)]
        if not rows:
            return pop
        # popularity as a tiny tie-breaker for items with no co-occurrence at all
        return self._similarity_sum(rows) + 1e-9 * pop / max(pop.max(initial=0.0), 1.0)

    def predict_rating(self, user_id: str, item_id: str) -> float:
        """Similarity-weighted mean of the user's ratings on co-occurring items, else item mean."""
        row = self.index.get(item_id)
        rated = self.rated.get(user_id)
        if row is None or not rated:
            return self.item_mean(item_id)
        rows = np.fromiter(rated.keys(), dtype=np.int64)
        sims = self._similarity_sum([row])[rows]
        if sims.sum() <= 0:
            return self.item_mean(item_id)
        values = np.fromiter(rated.values(), dtype=np.float64)
        return float(np.dot(sims, values) / sims.sum())


# -------------------------------------------------------------------------------- EASE


class EASERanker(PopularityRanker):
    """EASE (Steck 2019): ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹`` on the binary matrix of the
    training users (:mod:`models.itemitem`, the same code as the ``hybrid`` learner's channel).

    A user scores item ``j`` as ``Σ_{i ∈ history} B[i, j]``; EASE is a batch model, so ``observe``
    grows the user's history (and the popularity fallback) but never refits ``B``. Only the
    ``max_items`` most interacted items (with at least 2 users) get weights: rarer items have no
    co-occurrence evidence and rank by popularity below every weighted item's tie-break.
    """

    name = "ease"
    _cow_tables = ("history", "rated", "seen")
    # as λ grows, B_ij -> G_ij / λ: λ = inf is the family's end, the co-occurrence counts
    # themselves (:func:`models.itemitem.ease_weights`; ``null`` in JSON reports)
    TUNING = {"lam": (20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 1e4, 2e4, 5e4,
                      1e5, 3e5, 1e6, math.inf)}
    TUNING_LIMITS = {"lam": (None, math.inf)}

    def __init__(self, seed: int = 0, lam: float = 500.0, max_items: int = 6000) -> None:
        super().__init__(seed)
        self.lam, self.max_items = lam, max_items
        self.seen: dict[str, set[int]] = defaultdict(set)
        self.weights = np.zeros((0, 0), dtype=np.float32)
        self.modelled = np.zeros(0, dtype=np.int64)  # item rows EASE has weights for
        self.position = np.zeros(0, dtype=np.int64)  # item row -> index in ``weights`` or -1

    def fit(self, events: Sequence[Interaction], catalog: Sequence[str] = ()) -> None:
        import torch

        from models.itemitem import ease_vocabulary, ease_weights, gram

        for item_id in catalog:
            self._row(item_id)
        for event in events:
            self.observe(event)
        n = len(self.ids)
        users = {u: k for k, u in enumerate(self.seen)}
        pairs = [(users[u], r) for u, rows in self.seen.items() for r in rows]
        u_idx = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        i_idx = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        counts = np.bincount(i_idx, minlength=n)
        self.modelled = ease_vocabulary(torch.from_numpy(counts), self.max_items).numpy()
        self.position = np.full(n, -1, dtype=np.int64)
        self.position[self.modelled] = np.arange(self.modelled.size)
        g = gram(torch.from_numpy(u_idx), torch.from_numpy(self.position[i_idx]),
                 self.modelled.size)
        self.weights = ease_weights(g, self.lam).numpy()

    def observe(self, event: Interaction) -> None:
        super().observe(event)
        self._own("seen", event.user_id)
        self.seen[event.user_id].add(self.index[event.item_id])

    def scores(self, user_id: str) -> np.ndarray:
        n = len(self.ids)
        pop = self.counts[:n]
        rows = np.fromiter(self.seen.get(user_id, ()), dtype=np.int64)
        pos = self.position[rows[rows < self.position.size]] if rows.size else rows
        pos = pos[pos >= 0]
        if pos.size == 0:
            return pop
        out = np.zeros(n)
        out[self.modelled] = self.weights[pos].sum(axis=0)
        return out + 1e-9 * pop / max(pop.max(initial=0.0), 1.0)


# -------------------------------------------------------------------------------- SASRec


class SASRecRanker(PopularityRanker):
    """SASRec (:mod:`models.sasrec`) trained on the training users' sequences; a user's scores
    are the next-item scores after the user's sequence (its last ``max_len`` items). Ratings:
    the item mean, as popularity. ``epochs`` is the tuned training length.

    Fitting the same events again with more epochs resumes the last run instead of starting over
    (exactly the same model: :class:`models.sasrec.Trainer`), so tuning the epochs costs one run
    of the longest value."""

    name = "sasrec"
    TUNING = {"epochs": (2, 4, 6, 8, 12, 16, 24, 32)}
    TUNING_PATIENCE = 2  # the trainer resumes, so a value costs its extra epochs only
    #: the last training run: (events fingerprint, settings) -> Trainer; one entry at most
    _resumable: dict[tuple, Any] = {}

    def __init__(self, seed: int = 0, epochs: int = 6, dim: int = 32, max_len: int = 30) -> None:
        super().__init__(seed)
        self.epochs, self.dim, self.max_len = epochs, dim, max_len
        self.model: Any = None
        self.report: dict[str, float] = {}

    def fit(self, events: Sequence[Interaction], catalog: Sequence[str] = ()) -> None:
        import copy as _copy

        import torch

        from models.sasrec import SASRec, Trainer

        super().fit(events, catalog)
        key = (id(events), len(events), events[0].event_id if events else "",
               events[-1].event_id if events else "", len(self.ids), self.seed, self.dim,
               self.max_len)
        trainer = self._resumable.get(key)
        if trainer is None or trainer.epochs > self.epochs:
            sequences = [torch.tensor(h, dtype=torch.long) for h in self.history.values()]
            model = SASRec(len(self.ids), dim=self.dim, max_len=self.max_len, seed=self.seed)
            trainer = Trainer(model, sequences, seed=self.seed)
            SASRecRanker._resumable.clear()
            SASRecRanker._resumable[key] = trainer
        self.report = trainer.train_to(self.epochs)
        # a copy: the cached run trains on, this ranker keeps the model of its own epochs
        self.model = _copy.deepcopy(trainer.model)

    def scores(self, user_id: str) -> np.ndarray:
        import torch

        history = self.history.get(user_id)
        if not history or self.model is None:
            return self.counts[: len(self.ids)]
        known = [r for r in history if r < self.model.n_items]
        out = np.full(len(self.ids), -1e9)  # items unknown to the model rank last
        if known:
            out[: self.model.n_items] = self.model.scores([torch.tensor(known)])[0].numpy()
        return out


# -------------------------------------------------------------------------------- river MF


class RiverMFRanker(_Base):
    """River's online matrix factorisation (``learn_one`` per event, one pass in ``fit``).

    Ranking never calls ``predict_one`` per item: the item latents and biases river learns are
    mirrored into numpy arrays as they change (one row per ``learn_one``), so a user's scores are
    ``global_mean + b_u + b_i + Q p_u`` (BiasedMF) or ``Q p_u`` (FunkMF) in one product. Items and
    users river has not seen score with zero latents and biases (river itself would draw random
    latents for them and mutate its tables; we read with ``dict.get`` instead).
    """

    name = "river-biasedmf"
    biased = True
    TUNING = {"lr": (0.001, 0.002, 0.005, 0.02, 0.05)}

    def __init__(
        self, seed: int = 0, n_factors: int = 16, lr: float = 0.05, l2: float = 0.01
    ) -> None:
        from river import optim, reco

        super().__init__(seed)
        self.n_factors = n_factors
        if self.biased:
            self.model = reco.BiasedMF(
                n_factors,
                bias_optimizer=optim.SGD(lr),
                latent_optimizer=optim.SGD(lr),
                l2_bias=l2,
                l2_latent=l2,
                seed=seed,
            )
        else:
            self.model = reco.FunkMF(n_factors, optimizer=optim.SGD(lr), l2=l2, seed=seed)
        self.item_latents = np.zeros((0, n_factors))
        self.item_biases = np.zeros(0)
        self._forked = False

    def _grow(self, n: int) -> None:
        super()._grow(n)
        if n > self.item_biases.shape[0]:
            cap = max(n, 2 * self.item_biases.shape[0], 256)
            grown = np.zeros((cap, self.n_factors))
            grown[: self.item_latents.shape[0]] = self.item_latents
            self.item_latents = grown
            self.item_biases = _resized(self.item_biases, cap)

    def observe(self, event: Interaction) -> None:
        super().observe(event)
        y = event.value if event.kind == "rate" else 5.0 * event.reward()
        if self._forked:
            # river's SGD updates latent arrays in place and a fork shares them: own them first
            owned = ((self.model.u_latents, event.user_id), (self.model.i_latents, event.item_id))
            for table, key in owned:
                if key in table:
                    table[key] = table[key].copy()
        self.model.learn_one(event.user_id, event.item_id, y)
        row = self.index[event.item_id]
        self.item_latents[row] = self.model.i_latents[event.item_id]
        if self.biased:
            self.item_biases[row] = self.model.i_biases[event.item_id]

    def _user(self, user_id: str) -> tuple[np.ndarray, float]:
        p = self.model.u_latents.get(user_id)
        p = np.zeros(self.n_factors) if p is None else np.asarray(p, dtype=np.float64)
        if not self.biased:
            return p, 0.0
        return p, float(self.model.global_mean.get()) + float(self.model.u_biases.get(user_id, 0))

    def scores(self, user_id: str) -> np.ndarray:
        p, offset = self._user(user_id)
        n = len(self.ids)
        return offset + self.item_biases[:n] + self.item_latents[:n] @ p

    def predict_rating(self, user_id: str, item_id: str) -> float:
        row = self.index.get(item_id)
        p, offset = self._user(user_id)
        if row is None:
            return offset if self.biased else self.global_mean()
        return float(offset + self.item_biases[row] + self.item_latents[row] @ p)

    def fork(self) -> RiverMFRanker:
        clone = super().fork()
        clone.model = _fork_river(self.model)
        self._forked = clone._forked = True
        clone.item_latents = self.item_latents.copy()
        clone.item_biases = self.item_biases.copy()
        return clone  # type: ignore[return-value]


def _fork_river(model: Any) -> Any:
    """Shallow-copy river's weight tables (values are copied on write by the ranker), deep-copy
    the small stateful parts (running mean, optimisers)."""
    clone = copy.copy(model)
    for name in ("u_latents", "i_latents", "u_biases", "i_biases"):
        table = getattr(model, name, None)
        if table is not None:
            setattr(clone, name, defaultdict(table.default_factory, table))
    for name, value in vars(model).items():
        if name.endswith("optimizer") or name == "global_mean":
            setattr(clone, name, copy.deepcopy(value))
    return clone


class RiverFunkMFRanker(RiverMFRanker):
    """:class:`river.reco.FunkMF`: latent factors only, no biases."""

    name = "river-funkmf"
    biased = False


# -------------------------------------------------------------------------------- registry

REGISTRY: dict[str, Callable[..., Ranker]] = {
    "random": RandomRanker,
    "popularity": PopularityRanker,
    "popularity-recent": RecentPopularityRanker,
    "river-biasedmf": RiverMFRanker,
    "river-funkmf": RiverFunkMFRanker,
    "itemknn": ItemKNNRanker,
    "ease": EASERanker,
    "sasrec": SASRecRanker,
}


def create(name: str, seed: int = 0, **kwargs: Any) -> Ranker:
    """Build a baseline by registry name (``kwargs`` go to its constructor)."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(REGISTRY)}") from None
    return factory(seed=seed, **kwargs)
