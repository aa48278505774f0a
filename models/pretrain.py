"""Offline pretraining of the item tower before meta-training (pure torch).

Two initialisers, both training the tower of a :class:`~models.common.TowerLearner` in place so
meta-training starts from item vectors with a sensible geometry:

* :func:`autoencoder_pretrain` — a denoising user–item autoencoder whose *decoder is the item
  tower* (tied weights): a user's items are split at random, the input half is encoded as the
  mean of its item vectors times a square matrix, and the other half is reconstructed by scoring
  every item ``u·H + b``. The objective is selectable (:data:`OBJECTIVES`): CTR (``bce`` with
  sampled negatives), ranking (``bpr`` pairwise, ``softmax`` listwise over all items) or rating
  (``mse`` of ``lo + (hi - lo)·σ(score)`` against the held-out ratings).
* :func:`infonce_pretrain` — contrastive InfoNCE on item co-occurrence: items consumed one after
  the other by a user are positives, the rest of the batch negatives.

:func:`evaluate_objective` reports the metrics matching each objective on held-out users (AUC and
log-loss; NDCG@10 and MRR; RMSE and MAE). ``models/training.pretrain_items`` stays the quick
default inside ``train_bundle``; these are the heavier, selectable alternatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import ItemBank, Learner
from models.common import TowerLearner
from models.metrics import ndcg_at_k
from models.training import UserHistory

OBJECTIVES = ("bce", "bpr", "softmax", "mse")


def _core(learner: Learner) -> TowerLearner:
    if not isinstance(learner, TowerLearner):
        raise TypeError(f"{type(learner).__name__} has no item tower to pretrain")
    return learner


def _split(h: UserHistory, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(len(h))
    k = max(1, len(h) // 2)
    return perm[:k], perm[k:]


class _Encoder(torch.nn.Module):
    """User code = mean of the input items' vectors, through a square matrix (init identity)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(dim))

    def forward(self, h: Tensor, items: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(h.dtype)
        pooled = torch.einsum("bs,bsd->bd", m, h[items]) / m.sum(1, keepdim=True).clamp(min=1)
        return pooled @ self.w


def _batch(
    histories: Sequence[UserHistory], rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Padded (input items, input mask, target items, target mask, target ratings)."""
    ins, outs = [], []
    for h in histories:
        a, b = _split(h, rng)
        ins.append(h.items[a])
        outs.append((h.items[b], h.ratings[b]))
    si = max(len(x) for x in ins)
    so = max(len(x[0]) for x in outs)
    n = len(histories)
    xi, mi = torch.zeros(n, si, dtype=torch.long), torch.zeros(n, si, dtype=torch.bool)
    xo, mo = torch.zeros(n, so, dtype=torch.long), torch.zeros(n, so, dtype=torch.bool)
    ro = torch.full((n, so), float("nan"))
    for j, (x, (y, r)) in enumerate(zip(ins, outs, strict=True)):
        xi[j, : len(x)], mi[j, : len(x)] = x, True
        xo[j, : len(y)], mo[j, : len(y)], ro[j, : len(y)] = y, True, r
    return xi, mi, xo, mo, ro


def objective_loss(
    scores: Tensor, targets: Tensor, mask: Tensor, ratings: Tensor, objective: str,
    rng: torch.Generator, rating_range: tuple[float, float] = (0.5, 5.0),
) -> Tensor:
    """Loss of full score rows ``scores`` (B, N) against target items (B, T) under
    ``objective``; negatives for ``bce``/``bpr`` are uniform samples (one per positive)."""
    n = scores.shape[1]
    pos = scores.gather(1, targets)
    m = mask.to(scores.dtype)
    if objective == "softmax":
        return -((F.log_softmax(scores, dim=1).gather(1, targets)) * m).sum() / m.sum()
    if objective in ("bce", "bpr"):
        neg = scores.gather(1, torch.randint(0, n, targets.shape, generator=rng))
        if objective == "bpr":
            return -(F.logsigmoid(pos - neg) * m).sum() / m.sum()
        both = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
        both = both + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg),
                                                         reduction="none")
        return (both * m).sum() / m.sum()
    if objective == "mse":
        lo, hi = rating_range
        rated = mask & ~torch.isnan(ratings)
        pred = lo + (hi - lo) * torch.sigmoid(pos)
        err = torch.where(rated, pred - torch.nan_to_num(ratings), 0.0)
        return (err**2).sum() / rated.sum().clamp(min=1)
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def autoencoder_pretrain(
    learner: Learner,
    histories: Sequence[UserHistory],
    bank: ItemBank,
    *,
    objective: str = "softmax",
    epochs: int = 3,
    batch_users: int = 64,
    lr: float = 0.01,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``learner``'s tower (tied decoder) as a denoising autoencoder; see module doc."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    core = _core(learner)
    enc = _Encoder(core.config.dim)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([*core.tower.parameters(), *enc.parameters()], lr=lr)
    pool = [h for h in histories if len(h) >= 2]
    lo, hi = core.config.rating_min, core.config.rating_max
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(pool))
        for i in range(0, len(order), batch_users):
            xi, mi, xo, mo, ro = _batch([pool[j] for j in order[i : i + batch_users]], rng)
            prep = core.tower(bank)
            scores = enc(prep["H"], xi, mi) @ prep["H"].T + prep["b"]
            loss = objective_loss(scores, xo, mo, ro, objective, gen, (lo, hi))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    learner.__dict__["_pretrain_encoder"] = enc  # kept for evaluate_objective, not saved
    tenth = max(1, len(losses) // 10)
    return {"objective": objective, "loss_first": float(np.mean(losses[:tenth])),
            "loss_last": float(np.mean(losses[-tenth:])), "batches": float(len(losses))}


@torch.no_grad()
def evaluate_objective(
    learner: Learner, histories: Sequence[UserHistory], bank: ItemBank, *, seed: int = 0
) -> dict[str, float]:
    """Held-out users, random half in / half out, scored by the pretrained autoencoder: AUC and
    log-loss (positives vs uniform negatives), NDCG@10 and MRR (held-out items among all
    items, input items excluded), RMSE and MAE of ``lo + (hi - lo)·σ(score)`` on ratings."""
    core = _core(learner)
    enc = learner.__dict__.get("_pretrain_encoder") or _Encoder(core.config.dim)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pool = [h for h in histories if len(h) >= 2]
    xi, mi, xo, mo, ro = _batch(pool, rng)
    prep = core.tower(bank)
    scores = enc(prep["H"], xi, mi) @ prep["H"].T + prep["b"]
    pos = scores.gather(1, xo)
    neg = scores.gather(1, torch.randint(0, scores.shape[1], xo.shape, generator=gen))
    m = mo
    auc = float((pos[m] > neg[m]).float().mean() + 0.5 * (pos[m] == neg[m]).float().mean())
    logloss = float(-(F.logsigmoid(pos[m]).mean() + F.logsigmoid(-neg[m]).mean()) / 2)
    ex = scores.clone()
    ex.scatter_(1, torch.where(mi, xi, 0), -torch.inf)
    ex[~mi.any(1)] = scores[~mi.any(1)]
    ranks = (ex[:, None, :] > ex.gather(1, xo)[:, :, None]).sum(-1) + 1  # (B, T)
    inv = torch.where(m, 1.0 / ranks.float(), 0.0)
    mrr = float((inv.max(1).values).mean())
    # the top-10 positions the held-out items landed on, as a hit matrix
    top = m & (ranks <= 10)
    hits = torch.zeros(ranks.shape[0], 11, dtype=torch.bool)
    hits.scatter_(1, torch.where(top, ranks, 0), top)
    ndcg = float(ndcg_at_k(hits[:, 1:], m.sum(1), 10).mean())
    lo, hi = core.config.rating_min, core.config.rating_max
    rated = m & ~torch.isnan(ro)
    err = (lo + (hi - lo) * torch.sigmoid(pos) - torch.nan_to_num(ro))[rated]
    rmse = float(err.pow(2).mean().sqrt()) if err.numel() else float("nan")
    mae = float(err.abs().mean()) if err.numel() else float("nan")
    return {"auc": auc, "logloss": logloss, "ndcg@10": ndcg, "mrr": mrr, "rmse": rmse,
            "mae": mae, "users": float(len(pool))}


def infonce_pretrain(
    learner: Learner,
    histories: Sequence[UserHistory],
    bank: ItemBank,
    *,
    steps: int = 200,
    batch_pairs: int = 256,
    temperature: float = 0.1,
    lr: float = 0.01,
    seed: int = 0,
) -> dict[str, float]:
    """Contrastive pretraining of the item vectors ``H`` on co-occurrence: consecutive items of
    a user's history are positive pairs, the other items of the batch are negatives
    (symmetric InfoNCE on cosine similarities)."""
    core = _core(learner)
    pairs = np.array([(int(a), int(b)) for h in histories
                      for a, b in zip(h.items[:-1].tolist(), h.items[1:].tolist(), strict=True)
                      if a != b], dtype=np.int64).reshape(-1, 2)
    if len(pairs) < 2:
        return {"pairs": float(len(pairs))}
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(core.tower.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        batch = torch.from_numpy(pairs[rng.choice(len(pairs), size=batch_pairs)])
        h = F.normalize(core.tower(bank)["H"], dim=1)
        a, b = h[batch[:, 0]], h[batch[:, 1]]
        logits = a @ b.T / temperature
        same = batch[:, 0][:, None] == batch[:, 0][None, :]  # duplicate anchors: not negatives
        logits = torch.where(same & ~torch.eye(len(batch), dtype=torch.bool), -torch.inf, logits)
        target = torch.arange(len(batch))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tenth = max(1, len(losses) // 10)
    return {"pairs": float(len(pairs)), "loss_first": float(np.mean(losses[:tenth])),
            "loss_last": float(np.mean(losses[-tenth:]))}
