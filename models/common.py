"""Building blocks shared by the built-in learners.

:class:`TowerLearner` splits every learner into a *differentiable* core (``prepare_train``,
``init_state_train``, ``adapt_train``, ``score_train``) used by :mod:`models.training`, and the
serving entry points of :class:`~models.base.Learner` (``prepare``/``init_state``/``adapt``/
``score``), which run the very same code under :func:`torch.inference_mode` so that the serve path
never records autograd history (faster, and it cannot leak graph memory across events).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from models.base import ItemBank, Learner, LearnerConfig, State, SupportBatch

#: Keys of the ``prepared`` dict every :class:`TowerLearner` produces.
PREPARED_KEYS = ("H", "b", "rating_bias")


class ItemTower(nn.Module):
    """Item representation ``H = E[id] + W·features`` and item bias ``b``.

    Items with ``id_index == -1`` (never seen in training) get only the content part, so a new item
    is still scorable. The bias is ``pop_weight * popularity + id_bias + feature_bias``: at
    initialisation (``pop_weight = 1``, learned parts zero) an un-adapted user ranks by popularity,
    which is the right zero-shot fallback.

    With ``config.extra["recency_half_life"]`` set (every trained bundle), the bias also gets
    ``recency_weight * bank.recency``: the log of the item's decayed count as of *now*, so the
    zero-shot ranking and the inner loop's starting point follow what is popular lately (new
    users favour recent items). The parameter exists only then, so checkpoints written before
    it load unchanged.
    """

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__()
        n, d, f = max(config.n_items, 1), config.dim, config.feature_dim
        gen = torch.Generator().manual_seed(config.seed)
        self.id_emb = nn.Parameter(torch.randn(n, d, generator=gen) * 0.05)
        self.feat_proj = nn.Parameter(torch.randn(f, d, generator=gen) * (0.05 / math.sqrt(f)))
        self.id_bias = nn.Parameter(torch.zeros(n))
        self.feat_bias = nn.Parameter(torch.zeros(f))
        self.pop_weight = nn.Parameter(torch.ones(()))
        if config.extra.get("recency_half_life"):
            self.recency_weight = nn.Parameter(torch.ones(()))
        # Per-item rating offsets (around the global mean) for the rating heads.
        self.id_rating_bias = nn.Parameter(torch.zeros(n))
        self.feat_rating_bias = nn.Parameter(torch.zeros(f))
        mid = 0.5 * (config.rating_min + config.rating_max)
        self.rating_mean = nn.Parameter(torch.tensor(float(mid) + 0.5))

    def forward(self, bank: ItemBank) -> State:
        """Return ``{"H": (N, d), "b": (N,), "rating_bias": (N,)}`` for the bank; ``b`` is
        (B, N) when the bank's recency is per episode (training)."""
        known = bank.id_index >= 0
        rows = bank.id_index.clamp(min=0)
        feats = bank.features.to(self.feat_proj.dtype)
        kf = known.to(feats.dtype)
        h = self.id_emb[rows] * kf[:, None] + feats @ self.feat_proj
        b = (
            self.pop_weight * bank.popularity.to(feats.dtype)
            + self.id_bias[rows] * kf
            + feats @ self.feat_bias
        )
        if bank.recency is not None and hasattr(self, "recency_weight"):
            b = b + self.recency_weight * bank.recency.to(feats.dtype)
        rb = self.rating_mean + self.id_rating_bias[rows] * kf + feats @ self.feat_rating_bias
        return {"H": h, "b": b, "rating_bias": rb}


class UserPrior(nn.Module):
    """Zero-shot user vector from attributes: ``u0 = base + MLP(profile)``.

    An all-zero profile ("no attributes") maps exactly to ``base`` because the MLP has no output
    bias and ``tanh(0) = 0``.
    """

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__()
        a, d = config.attribute_dim, config.dim
        gen = torch.Generator().manual_seed(config.seed + 1)
        self.base = nn.Parameter(torch.zeros(d))
        self.w1 = nn.Parameter(torch.randn(a, d, generator=gen) * (1.0 / math.sqrt(max(a, 1))))
        self.w2 = nn.Parameter(torch.zeros(d, d))

    def forward(self, profiles: Tensor) -> Tensor:
        p = profiles.to(self.base.dtype)
        return self.base + torch.tanh(p @ self.w1) @ self.w2


def bias_at(b: Tensor, items: Tensor) -> Tensor:
    """Item biases ``b`` (N,) or per-row (B, N) at bank rows ``items`` (B, S) -> (B, S)."""
    return b[items] if b.dim() == 1 else torch.gather(b, 1, items)


def support_weights(support: SupportBatch) -> Tensor:
    """Positive weight of each support event: its target where the mask is set, else 0."""
    return torch.where(support.mask, support.targets.clamp(0.0, 1.0), 0.0)


def rated(support: SupportBatch) -> Tensor:
    """Bool (B, S): support events that carry an explicit rating."""
    return support.mask & ~torch.isnan(support.ratings)


def shrunk_rating_offset(
    support: SupportBatch, rating_bias: Tensor, shrink: Tensor | float
) -> Tensor:
    """User rating offset = mean residual ``rating - item_rating_bias`` over rated support events,
    shrunk towards 0 by ``shrink`` pseudo-events (so 1 rating barely moves it). Shape (B,)."""
    r = rated(support)
    resid = torch.where(r, torch.nan_to_num(support.ratings) - rating_bias[support.items], 0.0)
    return resid.sum(1) / (r.sum(1).to(resid.dtype) + shrink)


class TowerLearner(Learner, abc.ABC):
    """A learner with an :class:`ItemTower` and a :class:`UserPrior`.

    Subclasses implement the differentiable ``*_train`` methods; the protocol methods of
    :class:`~models.base.Learner` are the same computations under ``torch.inference_mode``.
    """

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.tower = ItemTower(config)
        self.prior = UserPrior(config)
        # log of the pseudo-count that shrinks the per-user rating offset towards 0
        self.log_rating_shrink = nn.Parameter(torch.tensor(math.log(3.0)))

    # ---- differentiable core (training) -------------------------------------------------------
    def prepare_train(self, bank: ItemBank) -> State:
        return self.tower(bank)

    def init_state_train(self, profiles: Tensor) -> State:
        u0 = self.prior(profiles)
        return {"u": u0, "rate_off": torch.zeros(u0.shape[0], dtype=u0.dtype)}

    @abc.abstractmethod
    def adapt_train(
        self, state: State, support: SupportBatch, prepared: State, *, first_order: bool = True
    ) -> State:
        """Differentiable adaptation; ``first_order`` only matters to gradient-based learners."""

    def score_train(self, state: State, prepared: State) -> Tensor:
        return state["u"] @ prepared["H"].T + prepared["b"]

    def rating_train(self, state: State, prepared: State, items: Tensor) -> Tensor:
        """Raw rating predictions (B, Q) for bank rows ``items`` (B, Q), clamped to range."""
        pred = prepared["rating_bias"][items] + state["rate_off"][:, None]
        return pred.clamp(self.config.rating_min, self.config.rating_max)

    # ---- serving protocol ---------------------------------------------------------------------
    def prepare(self, bank: ItemBank) -> State:
        with torch.inference_mode():
            return self.prepare_train(bank)

    def init_state(self, profiles: Tensor) -> State:
        with torch.inference_mode():
            return self.init_state_train(profiles)

    def adapt(self, state: State, support: SupportBatch, prepared: State) -> State:
        with torch.inference_mode():
            return self.adapt_train(state, support, prepared, first_order=True)

    def score(self, state: State, prepared: State) -> Tensor:
        with torch.inference_mode():
            return self.score_train(state, prepared)

    def predict_rating(self, state: State, prepared: State, items: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.rating_train(state, prepared, items)
