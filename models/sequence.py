"""Mecos-style sequence learner: a GRU reads the ordered support (oldest → newest).

The GRU's initial hidden state comes from the attribute prior ``u0``; each event feeds the item
vector concatenated with its target. Padded steps keep the previous hidden state, so padding
anywhere in the row is harmless. The user vector is ``u0 + W·h_last``: with an empty support
``h_last = h_0`` and ``W·h_0`` is a learned constant absorbed into the prior. The loop is over the
support *length* S (≤ a few tens), never over items.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import LearnerConfig, State, SupportBatch, register
from models.common import TowerLearner, shrunk_rating_offset, support_weights


@register
class SequenceLearner(TowerLearner):
    """GRU encoder over the support sequence; score ``H·u + b``."""

    name = "sequence"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        d = config.dim
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed + 2)  # deterministic init of the nn.GRUCell weights
        self.cell = nn.GRUCell(d + 1, d)
        self.out = nn.Linear(d, d, bias=False)
        with torch.no_grad():  # small: an untrained encoder nudges, not overrides, the prior
            self.out.weight.mul_(0.1)
        torch.random.set_rng_state(gen_state)

    def adapt_train(
        self, state: State, support: SupportBatch, prepared: State, *, first_order: bool = True
    ) -> State:
        if support.items.shape[1] == 0:
            return dict(state)
        u0 = state["u"]
        xs = prepared["H"][support.items]  # (B, S, d)
        w = support_weights(support).to(xs.dtype)
        h = torch.tanh(u0)
        h_start = h
        for t in range(xs.shape[1]):
            step = self.cell(torch.cat([xs[:, t], w[:, t : t + 1]], dim=1), h)
            h = torch.where(support.mask[:, t : t + 1], step, h)
        # rows with no events must keep exactly their prior
        any_ev = support.mask.any(1, keepdim=True)
        u = torch.where(any_ev, u0 + self.out(h) - self.out(h_start), u0)
        off = shrunk_rating_offset(support, prepared["rating_bias"], self.log_rating_shrink.exp())
        return {"u": u, "rate_off": off}
