"""Ranking and rating metrics, vectorised over users.

Definitions (binary relevance: an item is relevant iff it is one of the user's query items)
-----------------------------------------------------------------------------------------
For one user with ranked list ``r_1..r_K``, relevant set ``R`` (``|R| ≥ 1``) and
``hit_i = [r_i ∈ R]``:

* ``Precision@K = Σ_{i≤K} hit_i / K``
* ``Recall@K    = Σ_{i≤K} hit_i / |R|``
* ``HR@K        = 1 if Σ_{i≤K} hit_i > 0 else 0``
* ``NDCG@K      = DCG@K / IDCG@K``, ``DCG@K = Σ_{i≤K} hit_i / log2(i + 1)``,
  ``IDCG@K = Σ_{i≤min(K, |R|)} 1 / log2(i + 1)``
* ``MRR@K       = 1 / (first i with hit_i) or 0`` (reciprocal rank, truncated at the list length)
* ``MAE = mean |ŷ - y|``, ``RMSE = sqrt(mean (ŷ - y)²)`` over rated query events.

Each ranking metric returns one value per user; average them (macro) for a report. A ranked list
shorter than ``K`` counts its missing positions as misses (precision still divides by ``K``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from models import metrics as models_metrics

_PAD = -1


def _encode(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Collection[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Map item ids to ints shared by both sides; pad rows with ``-1`` (never equal: ranked pads
    are ``-1`` and relevant pads are ``-2``)."""
    codes: dict[str, int] = {}
    width = max((len(r) for r in ranked), default=0)
    rel_width = max((len(r) for r in relevant), default=0)
    rk = np.full((len(ranked), width), _PAD, dtype=np.int64)
    rl = np.full((len(relevant), rel_width), _PAD - 1, dtype=np.int64)
    for b, row in enumerate(ranked):
        rk[b, : len(row)] = [codes.setdefault(i, len(codes)) for i in row]
    for b, row in enumerate(relevant):
        rl[b, : len(row)] = [codes.setdefault(i, len(codes)) for i in row]
    return rk, rl


def hit_matrix(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Collection[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Hits and relevant-set sizes.

    Parameters
    ----------
    ranked : sequence of sequences of str
        Per user, recommended item ids, best first.
    relevant : sequence of collections of str
        Per user, the relevant (query) item ids.

    Returns
    -------
    hits : ndarray of bool, shape (B, K)
        ``hits[b, i]``: the ``i``-th recommendation of user ``b`` is relevant.
    n_relevant : ndarray of int, shape (B,)
        Number of distinct relevant items per user.
    """
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} ranked lists but {len(relevant)} relevant sets")
    relevant = [set(r) for r in relevant]
    rk, rl = _encode(ranked, relevant)
    if rk.shape[1] == 0 or rl.shape[1] == 0:
        hits = np.zeros(rk.shape, dtype=bool)
    else:
        hits = (rk[:, :, None] == rl[:, None, :]).any(axis=2)
    return hits, np.array([len(r) for r in relevant], dtype=np.int64)


def _at(hits: np.ndarray, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError("k must be >= 1")
    h = hits[:, :k]
    if h.shape[1] < k:
        h = np.pad(h, ((0, 0), (0, k - h.shape[1])))
    return h


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user Precision@K from a (B, K') hit matrix."""
    return _at(hits, k).sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@K; users with no relevant item get 0."""
    return _at(hits, k).sum(axis=1) / np.maximum(n_relevant, 1)


def hr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user hit rate @K (1 if any of the top K is relevant)."""
    return _at(hits, k).any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@K with binary gains; users with no relevant item get 0
    (:func:`models.metrics.ndcg_at_k`, the project's one implementation)."""
    per_user = models_metrics.ndcg_at_k(
        torch.from_numpy(np.ascontiguousarray(_at(hits, k))),
        torch.from_numpy(np.asarray(n_relevant, dtype=np.int64)), k)
    return per_user.numpy()


def mrr(hits: np.ndarray) -> np.ndarray:
    """Per-user reciprocal rank of the first hit (0 when there is none)."""
    if hits.shape[1] == 0:
        return np.zeros(hits.shape[0])
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error (NaN for empty input)."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    return float(np.abs(p - a).mean()) if p.size else float("nan")


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error (NaN for empty input)."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    return float(np.sqrt(((p - a) ** 2).mean())) if p.size else float("nan")


def ranking_metrics(
    ranked: Sequence[Sequence[str]],
    relevant: Sequence[Collection[str]],
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, np.ndarray]:
    """All per-user ranking metrics: ``precision@k``, ``recall@k``, ``hr@k``, ``ndcg@k`` for
    each ``k`` in ``ks``, and ``mrr``."""
    hits, n_rel = hit_matrix(ranked, relevant)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"precision@{k}"] = precision_at_k(hits, k)
        out[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
        out[f"hr@{k}"] = hr_at_k(hits, k)
        out[f"ndcg@{k}"] = ndcg_at_k(hits, n_rel, k)
    out["mrr"] = mrr(hits)
    return out


def single_target_metrics(
    ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = (5, 10, 20)
) -> dict[str, np.ndarray]:
    """Per-event ``hr@k``, ``ndcg@k`` and ``mrr`` when each list has exactly one relevant item
    (the prequential protocol: the next event's item)."""
    hits, n_rel = hit_matrix(ranked, [(t,) for t in targets])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hr@{k}"] = hr_at_k(hits, k)
        out[f"ndcg@{k}"] = ndcg_at_k(hits, n_rel, k)
    out["mrr"] = mrr(hits)
    return out


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Macro average of per-user metrics (NaN when there are no users)."""
    return {
        name: float(values.mean()) if values.size else float("nan")
        for name, values in per_user.items()
    }
