"""Matching-network learner: every candidate item attends over the user's support set.

``score_i = b_i + α · Σ_s a_is · w_s`` with ``a_i· = softmax([cos(h_i, h_s)/τ]_s ∪ [null])``. The
learned *null* logit is a "none of the support is like me" slot carrying target 0: without it the
attention weights sum to 1 and, with all-positive targets, every candidate would get the same
score. Vectorised over all N items as one (B, N, S) tensor; no per-item loops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import LearnerConfig, State, SupportBatch, register
from models.common import TowerLearner, shrunk_rating_offset, support_weights


@register
class MatchingLearner(TowerLearner):
    """Attention-over-support scorer. The prior (empty support) is ``H·u0 + b``.

    The state stores the normalised support vectors and their weights (fixed shape per batch), so
    scoring is a batched ``(B, N, d) x (B, d, S)`` product.
    """

    name = "matching"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.log_inv_temp = nn.Parameter(torch.tensor(math.log(10.0)))
        self.null_logit = nn.Parameter(torch.tensor(5.0))
        self.log_alpha = nn.Parameter(torch.tensor(math.log(2.0)))

    def init_state_train(self, profiles: Tensor) -> State:
        st = super().init_state_train(profiles)
        b, d = st["u"].shape
        st["keys"] = st["u"].new_zeros(b, 0, d)
        st["weights"] = st["u"].new_zeros(b, 0)
        return st

    def adapt_train(
        self, state: State, support: SupportBatch, prepared: State, *, first_order: bool = True
    ) -> State:
        if support.items.shape[1] == 0:
            return dict(state)
        keys = F.normalize(prepared["H"][support.items], dim=-1)  # (B, S, d)
        w = support_weights(support).to(keys.dtype)
        keys = torch.where(support.mask[..., None], keys, 0.0)
        off = shrunk_rating_offset(support, prepared["rating_bias"], self.log_rating_shrink.exp())
        # masked positions are excluded from the softmax via -inf logits (see score_train)
        return {
            "u": state["u"],
            "rate_off": off,
            "keys": keys,
            "weights": w,
            "valid": support.mask.to(keys.dtype),
        }

    def score_train(self, state: State, prepared: State) -> Tensor:
        base = state["u"] @ prepared["H"].T + prepared["b"]  # (B, N)
        keys = state["keys"]
        if keys.shape[1] == 0:
            return base
        hn = F.normalize(prepared["H"], dim=-1)  # (N, d)
        logits = torch.einsum("nd,bsd->bns", hn, keys) * self.log_inv_temp.exp()  # (B, N, S)
        valid = state["valid"][:, None, :] > 0
        logits = torch.where(valid, logits, float("-inf"))
        null = self.null_logit.expand(logits.shape[0], logits.shape[1], 1)
        att = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1]  # (B, N, S)
        match = torch.einsum("bns,bs->bn", att, state["weights"])
        return base + self.log_alpha.exp() * match
