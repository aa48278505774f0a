"""Zero-shot items from content: text vectors mapped into a trained learner's item space.

Pure torch. Two variants, both usable with every :class:`~models.common.TowerLearner` (all
built-in learners share :class:`~models.common.ItemTower`, whose item vector is
``H = E[id]·known + features @ feat_proj``):

* :func:`fold_projection` — the *attribute-based zero-shot recommender*. A ridge regression from
  text vectors to the full trained item vector ``H`` (and the item biases) of the warm items is
  folded into the tower: ``feat_proj`` becomes the fitted projection and each warm item's id
  embedding becomes its residual ``H - f·W``. Warm items score exactly as before, while a new item
  (``id_index == -1``) is scored from ``f·W``, the best linear guess of where the model would have
  put it. Folding (rather than a separate head) keeps the checkpoint format and serve path
  unchanged, so every learner and the worker get it for free. Ridge in closed form because the
  map is linear and ``F`` is only a few hundred wide: an exact solve beats SGD here.
* :class:`PrototypeItems` — the prototype variant: a new item's vector and biases are the mean of
  those of its ``k`` nearest warm items by cosine similarity in text space.

Also the hybrid bootstrap weights (:func:`fixed_content_weight`, :func:`blend_scores`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import ItemBank, Learner, State, SupportBatch
from models.common import TowerLearner

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _ridge(x: Tensor, y: Tensor, lam: float) -> Tensor:
    """``argmin_W |xW - y|² + lam·tr(xᵀx)/F·|W|²`` (lam is relative to the mean feature power)."""
    f = x.shape[1]
    gram = x.T @ x
    scale = gram.diagonal().mean().clamp(min=1e-12)
    return torch.linalg.solve(gram + lam * scale * torch.eye(f, dtype=x.dtype), x.T @ y)


def _warm_targets(tower: Any, bank: ItemBank) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of warm items with content, their features and the targets ``[H | b | rb]`` without
    the popularity term (a new item's popularity is unknown; the tower adds it separately)."""
    known = (bank.id_index >= 0) & (bank.features.abs().sum(1) > 0)
    rows = torch.nonzero(known).squeeze(1)
    ids = bank.id_index[rows]
    f = bank.features[rows].double()
    h = tower.id_emb[ids].double() + f @ tower.feat_proj.double()
    b = tower.id_bias[ids].double() + f @ tower.feat_bias.double()
    rb = tower.id_rating_bias[ids].double() + f @ tower.feat_rating_bias.double()
    return ids, f, torch.cat([h, b[:, None], rb[:, None]], dim=1)


def fit_projection(
    f: Tensor, y: Tensor, *, grid: tuple[float, ...] = RIDGE_GRID, seed: int = 0
) -> tuple[Tensor, dict[str, float]]:
    """Ridge ``f -> y`` with the penalty picked on a 20 % hold-out of the warm items (R²), then
    refit on all of them. Returns ``(W (F, T), {"lambda", "heldout_r2"})``."""
    n = f.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, n // 5) if n >= 10 else 0
    best, best_r2 = grid[0], -float("inf")
    if n_val:
        val, fit = perm[:n_val], perm[n_val:]
        var = ((y[val] - y[fit].mean(0)) ** 2).sum().clamp(min=1e-12)
        for lam in grid:
            w = _ridge(f[fit], y[fit], lam)
            r2 = float(1.0 - ((f[val] @ w - y[val]) ** 2).sum() / var)
            if r2 > best_r2:
                best, best_r2 = lam, r2
    return _ridge(f, y, best), {"lambda": best, "heldout_r2": best_r2}


@torch.no_grad()
def fold_projection(learner: Learner, bank: ItemBank, *, seed: int = 0) -> dict[str, float]:
    """Fit text → item space on the warm items of ``bank`` and fold it into ``learner``'s tower
    in place (see the module docstring). Warm items' vectors and biases are unchanged up to
    float32 rounding. Returns the fit report (``lambda``, ``heldout_r2``, ``warm_items``)."""
    if not isinstance(learner, TowerLearner):
        raise TypeError(f"{type(learner).__name__} has no ItemTower to fold a projection into")
    tower = learner.tower
    ids, f, y = _warm_targets(tower, bank)
    if ids.numel() < 2:
        nan = float("nan")
        return {"lambda": nan, "heldout_r2": nan, "warm_items": float(ids.numel())}
    w, report = fit_projection(f, y, seed=seed)
    d = tower.feat_proj.shape[1]
    resid = y - f @ w
    dtype = tower.feat_proj.dtype
    tower.feat_proj.copy_(w[:, :d].to(dtype))
    tower.feat_bias.copy_(w[:, d].to(dtype))
    tower.feat_rating_bias.copy_(w[:, d + 1].to(dtype))
    tower.id_emb[ids] = resid[:, :d].to(dtype)
    tower.id_bias[ids] = resid[:, d].to(dtype)
    tower.id_rating_bias[ids] = resid[:, d + 1].to(dtype)
    return {**report, "warm_items": float(ids.numel())}


def prototype_rows(
    features: Tensor, warm: Tensor, cold: Tensor, k: int, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """For each ``cold`` row, the indices (into ``warm``) of its ``k`` nearest warm rows by cosine
    similarity of ``features`` and their softmax-free uniform weights. Chunked over cold rows so
    memory stays ``chunk × |warm|``."""
    fw = F.normalize(features[warm].float(), dim=1)
    out = []
    k = min(k, int(warm.numel()))
    for i in range(0, int(cold.numel()), chunk):
        fc = F.normalize(features[cold[i : i + chunk]].float(), dim=1)
        out.append(torch.topk(fc @ fw.T, k, dim=1).indices)
    idx = torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)
    return idx, torch.full(idx.shape, 1.0 / max(k, 1))


class PrototypeItems(Learner):
    """Wraps a :class:`TowerLearner`: new items with content take the mean vector, bias and
    rating bias of their ``k`` nearest warm items in text space; everything else delegates."""

    def __init__(self, inner: TowerLearner, k: int = 10) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.k = k
        self.name = f"{inner.name}+proto-items"  # type: ignore[misc]

    def prepare(self, bank: ItemBank) -> State:
        with torch.inference_mode():
            out = dict(self.inner.prepare(bank))
            warm = torch.nonzero(bank.id_index >= 0).squeeze(1)
            cold = torch.nonzero((bank.id_index < 0) & (bank.features.abs().sum(1) > 0)).squeeze(1)
            if warm.numel() == 0 or cold.numel() == 0:
                return out
            nn_idx, _ = prototype_rows(bank.features, warm, cold, self.k)
            nbr = warm[nn_idx]  # (C, k) bank rows
            pop = self.inner.tower.pop_weight * bank.popularity.to(out["b"].dtype)
            h, b = out["H"].clone(), out["b"].clone()
            h[cold] = h[nbr].mean(1)
            b[cold] = (b[nbr] - pop[nbr]).mean(1) + pop[cold]
            out["H"], out["b"] = h, b
            if "rating_bias" in out:
                rb = out["rating_bias"].clone()
                rb[cold] = rb[nbr].mean(1)
                out["rating_bias"] = rb
            if "neg_idx" in out:  # FOMAML's sampled negatives are rows of H
                out["Hn"], out["bn"] = h[out["neg_idx"]], b[out["neg_idx"]]
            return out

    def init_state(self, profiles: Tensor) -> State:
        return self.inner.init_state(profiles)

    def adapt(self, state: State, support: SupportBatch, prepared: State) -> State:
        return self.inner.adapt(state, support, prepared)

    def score(self, state: State, prepared: State) -> Tensor:
        return self.inner.score(state, prepared)

    def predict_rating(self, state: State, prepared: State, items: Tensor) -> Tensor:
        return self.inner.predict_rating(state, prepared, items)


# ------------------------------------------------------------------------------ hybrid blend
#: (upper bound on the user's interaction count, content weight): < 5 → 0.8, 5–20 → 0.5, > 20 → 0.2
FIXED_SCHEDULE = ((5, 0.8), (21, 0.5))
FIXED_TAIL = 0.2


def count_bucket(counts: Tensor) -> Tensor:
    """Bucket index 0 (< 5 events), 1 (5–20), 2 (> 20) per user."""
    return (counts >= 5).long() + (counts > 20).long()


def fixed_content_weight(counts: Tensor) -> Tensor:
    """The fixed schedule's content weight per user, from the user's interaction count."""
    table = torch.tensor([w for _, w in FIXED_SCHEDULE] + [FIXED_TAIL])
    return table[count_bucket(counts)]


def _standardise(scores: Tensor) -> Tensor:
    """Per-user z-scores over the finite entries (content and collaborative scores live on
    different scales; -inf exclusions stay -inf)."""
    finite = torch.isfinite(scores)
    x = torch.where(finite, scores, 0.0)
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    var = (torch.where(finite, x - mean, 0.0) ** 2).sum(1, keepdim=True) / n
    return torch.where(finite, (x - mean) / var.sqrt().clamp(min=1e-6), -torch.inf)


def content_scores(support: SupportBatch, features: Tensor) -> Tensor:
    """Pure content score (B, N): cosine of each item's text vector with the target-weighted
    mean text vector of the user's support items (zeros for an empty support)."""
    fn = F.normalize(features.float(), dim=1)
    w = torch.where(support.mask, support.targets.clamp(0, 1), 0.0)
    profile = torch.einsum("bs,bsf->bf", w, fn[support.items])
    return F.normalize(profile, dim=1) @ fn.T


def blend_scores(collab: Tensor, content: Tensor, content_weight: Tensor) -> Tensor:
    """``w·z(content) + (1 - w)·z(collab)`` per user; ``content_weight`` is (B,)."""
    w = content_weight.to(collab.dtype)[:, None]
    zc, zf = _standardise(content), _standardise(collab)
    excluded = torch.isinf(zc) | torch.isinf(zf)  # 0·(-inf) would be NaN: keep exclusions
    mixed = w * torch.where(excluded, 0.0, zc) + (1.0 - w) * torch.where(excluded, 0.0, zf)
    return torch.where(excluded, -torch.inf, mixed)
