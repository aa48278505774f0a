"""Prototypical-network learner: the user is the (weighted) mean of their support items.

No gradient steps at serve time: the prototype is a weighted mean of the support item vectors,
blended with the attribute prior ``u0`` through a learned pseudo-count, so one event moves the
user only part of the way and an empty support is exactly the prior.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.base import LearnerConfig, State, SupportBatch, register
from models.common import TowerLearner, shrunk_rating_offset, support_weights


@register
class ProtoLearner(TowerLearner):
    """``u = (λ·u0 + α·Σ_s w_s h_s) / (λ + Σ_s w_s)``; score ``H·u + b``.

    ``w_s`` is the event target (1 for a click, rescaled rating) so disliked items count less;
    ``α`` is a learned scale (the prototype lives in item space, the score needs a user-space
    magnitude) and ``λ`` a learned prior strength.
    """

    name = "proto"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.log_prior_strength = nn.Parameter(torch.tensor(0.0))
        self.log_scale = nn.Parameter(torch.tensor(math.log(4.0)))

    def adapt_train(
        self, state: State, support: SupportBatch, prepared: State, *, first_order: bool = True
    ) -> State:
        if support.items.shape[1] == 0:
            return dict(state)
        w = support_weights(support).to(prepared["H"].dtype)  # (B, S)
        hs = prepared["H"][support.items]  # (B, S, d)
        lam = self.log_prior_strength.exp()
        proto_sum = torch.einsum("bs,bsd->bd", w, hs) * self.log_scale.exp()
        u = (lam * state["u"] + proto_sum) / (lam + w.sum(1, keepdim=True))
        off = shrunk_rating_offset(support, prepared["rating_bias"], self.log_rating_shrink.exp())
        return {"u": u, "rate_off": off}
