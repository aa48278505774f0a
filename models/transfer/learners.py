"""Cross-domain learners built on one adaptation rule with a pluggable *bridge*.

Every learner keeps two user vectors in its state: ``u_src`` (source space, from source-domain
support items) and ``u`` (target space). ``u`` starts from the bridge's mapping of ``u_src`` when
the user has source evidence (from the attribute prior otherwise) and is then moved towards the
user's target-domain support items by a prototype update, so 0 target events = pure transfer and
many target events = mostly the user's own target behaviour. Items of the target domain are
scored with ``u``, all other items with ``u_src``.

The adaptation is closed-form (weighted means), not gradient steps: it is vectorised over the
batch, cheap at serve time and makes "transfer vs none" the only difference between learners.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.base import ItemBank, LearnerConfig, State, SupportBatch, register
from models.common import TowerLearner, rated, support_weights

SOURCE, TARGET = 0, 1


def domain_of(bank: ItemBank) -> Tensor:
    """(N,) long domain codes; a bank without domains is all target (single-domain serving)."""
    if bank.domains is None:
        return torch.full((bank.size,), TARGET, dtype=torch.long)
    return bank.domains.to(torch.long)


class CrossDomainLearner(TowerLearner):
    """Shared adaptation rule; subclasses override :meth:`bridge` (and maybe the item tower).

    ``use_source`` False turns the learner into the target-only baseline (source events are
    ignored for the user vector and the rating offset).
    """

    use_source: bool = True

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.log_prior_strength = nn.Parameter(torch.tensor(0.0))
        self.log_target_strength = nn.Parameter(torch.tensor(0.0))
        self.log_scale = nn.Parameter(torch.tensor(math.log(4.0)))
        self.use_features = bool(config.extra.get("features", True))
        # weight of the user·item affinity in the rating head (0 at init: item bias + offset)
        self.rating_affinity = nn.Parameter(torch.tensor(0.0))

    # ---- item side ----------------------------------------------------------------------------
    def item_vectors(self, bank: ItemBank) -> State:
        """Item tower output; subclasses (LightGCN) replace the id part."""
        return self.tower(bank)

    def prepare_train(self, bank: ItemBank) -> State:
        if not self.use_features:
            bank = ItemBank(bank.id_index, torch.zeros_like(bank.features), bank.popularity,
                            bank.domains)
        out = dict(self.item_vectors(bank))
        out["domain"] = domain_of(bank)
        return out

    # ---- user side ----------------------------------------------------------------------------
    def init_state_train(self, profiles: Tensor) -> State:
        u0 = self.prior(profiles)
        zeros = torch.zeros(u0.shape[0], dtype=u0.dtype)
        return {"u": u0, "u_src": u0, "rate_off": zeros}

    def bridge(self, u_src: Tensor, hs: Tensor, src_w: Tensor) -> Tensor:
        """Map source vectors (B, d) into the target space; ``hs`` (B, S, d) are the support item
        vectors and ``src_w`` (B, S) the weights of the source ones (0 elsewhere)."""
        return u_src

    def adapt_train(
        self, state: State, support: SupportBatch, prepared: State, *, first_order: bool = True
    ) -> State:
        if support.items.shape[1] == 0:
            return dict(state)
        h_all = prepared["H"]
        dom = prepared["domain"][support.items]  # (B, S)
        w = support_weights(support).to(h_all.dtype)
        is_tgt = support.mask & (dom == TARGET)
        is_src = support.mask & ~is_tgt
        w_t = torch.where(is_tgt, w, 0.0)
        w_s = torch.where(is_src, w, 0.0) if self.use_source else torch.zeros_like(w)
        hs = h_all[support.items]  # (B, S, d)
        scale = self.log_scale.exp()
        lam = self.log_prior_strength.exp()
        u0 = state["u"]
        u_src = (lam * state["u_src"] + scale * torch.einsum("bs,bsd->bd", w_s, hs)) / (
            lam + w_s.sum(1, keepdim=True)
        )
        has_src = (w_s.sum(1, keepdim=True) > 0) if self.use_source else None
        prior_t = u0 if has_src is None else torch.where(has_src, self.bridge(u_src, hs, w_s), u0)
        lam_t = self.log_target_strength.exp()
        u_t = (lam_t * prior_t + scale * torch.einsum("bs,bsd->bd", w_t, hs)) / (
            lam_t + w_t.sum(1, keepdim=True)
        )
        off = self._rating_offset(support, prepared, is_tgt)
        return {"u": u_t, "u_src": u_src, "rate_off": off}

    def _rating_offset(self, support: SupportBatch, prepared: State, is_tgt: Tensor) -> Tensor:
        """Shrunk mean rating residual; a transfer learner also counts source ratings (a generous
        rater in one domain tends to be generous in the other), the baseline only target ones."""
        r = rated(support) & (is_tgt if not self.use_source else support.mask)
        rb = prepared["rating_bias"][support.items]
        resid = torch.where(r, torch.nan_to_num(support.ratings) - rb, 0.0)
        return resid.sum(1) / (r.sum(1).to(resid.dtype) + self.log_rating_shrink.exp())

    def score_train(self, state: State, prepared: State) -> Tensor:
        h = prepared["H"]
        tgt = prepared["domain"] == TARGET
        s = torch.where(tgt[None, :], state["u"] @ h.T, state["u_src"] @ h.T)
        return s + prepared["b"]

    def rating_train(self, state: State, prepared: State, items: Tensor) -> Tensor:
        """Item rating bias + the user's rating offset + a learned multiple of the user·item
        affinity, so the transferred user vector informs ratings too, not only the ranking."""
        h = prepared["H"][items]  # (B, Q, d)
        tgt = (prepared["domain"][items] == TARGET)[..., None]
        u = torch.where(tgt, state["u"][:, None, :], state["u_src"][:, None, :])
        affinity = (u * h).sum(-1)
        pred = prepared["rating_bias"][items] + state["rate_off"][:, None]
        pred = pred + self.rating_affinity * affinity
        return pred.clamp(self.config.rating_min, self.config.rating_max)

    def auxiliary_loss(self, prepared: State, state: State) -> Tensor:
        """Extra training loss (adversarial alignment); 0 for most learners."""
        return prepared["H"].new_zeros(())


@register
class TargetOnlyLearner(CrossDomainLearner):
    """Baseline: the target state comes from target events only (popularity + prior at 0)."""

    name = "cd-target"
    use_source = False


@register
class SharedLearner(CrossDomainLearner):
    """Parameter transfer: one item tower and one user space trained jointly on both domains;
    the bridge is the identity, so source items place the user directly in the target space."""

    name = "cd-shared"


@register
class EMCDRLearner(CrossDomainLearner):
    """EMCDR (Man et al., 2017): ``u_t = MLP(u_s)``, a 2-layer tanh MLP with a linear skip.

    The skip (initialised to the identity) lets the map start as "same space" and learn only the
    difference, which trains stably from few overlapping users.
    """

    name = "emcdr"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        d = config.dim
        gen = torch.Generator().manual_seed(config.seed + 7)
        self.map_w1 = nn.Parameter(torch.randn(d, 2 * d, generator=gen) / math.sqrt(d))
        self.map_b1 = nn.Parameter(torch.zeros(2 * d))
        self.map_w2 = nn.Parameter(torch.zeros(2 * d, d))
        self.map_skip = nn.Parameter(torch.eye(d))

    def bridge(self, u_src: Tensor, hs: Tensor, src_w: Tensor) -> Tensor:
        return u_src @ self.map_skip + torch.tanh(u_src @ self.map_w1 + self.map_b1) @ self.map_w2


@register
class PTUPCDRLearner(CrossDomainLearner):
    """PTUPCDR (Zhu et al., 2022): a meta network reads the user's source items (attention
    pooling = the "characteristic encoder") and emits a personal bridge ``W_u`` (d × d);
    ``u_t = u_s · (I + W_u)``."""

    name = "ptupcdr"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        d = config.dim
        gen = torch.Generator().manual_seed(config.seed + 11)
        self.att_q = nn.Parameter(torch.randn(d, generator=gen) * 0.1)
        self.meta_w1 = nn.Parameter(torch.randn(d, d, generator=gen) / math.sqrt(d))
        self.meta_b1 = nn.Parameter(torch.zeros(d))
        self.meta_w2 = nn.Parameter(torch.zeros(d, d * d))

    def bridge(self, u_src: Tensor, hs: Tensor, src_w: Tensor) -> Tensor:
        logits = (hs @ self.att_q).masked_fill(src_w <= 0, -math.inf)
        att = torch.nan_to_num(torch.softmax(logits, dim=1))  # all-masked rows -> 0
        char = torch.einsum("bs,bsd->bd", att, hs)
        d = u_src.shape[1]
        w_u = (torch.tanh(char @ self.meta_w1 + self.meta_b1) @ self.meta_w2).view(-1, d, d)
        return u_src + torch.einsum("bd,bde->be", u_src, w_u)


class _GradReverse(torch.autograd.Function):
    """Identity forward, ``-λ·grad`` backward (Ganin & Lempitsky, 2015). torch has no built-in."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    return _GradReverse.apply(x, lam)


@register
class AdversarialLearner(CrossDomainLearner):
    """Shared space aligned adversarially: a domain discriminator sees item vectors through a
    gradient-reversal layer, so the tower learns item vectors whose domain it cannot tell apart;
    a user vector built from source items then lands where target items live."""

    name = "cd-adversarial"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        d = config.dim
        gen = torch.Generator().manual_seed(config.seed + 13)
        self.disc_w1 = nn.Parameter(torch.randn(d, d, generator=gen) / math.sqrt(d))
        self.disc_b1 = nn.Parameter(torch.zeros(d))
        self.disc_w2 = nn.Parameter(torch.randn(d, generator=gen) / math.sqrt(d))
        self.adv_weight = float(config.extra.get("adversarial_weight", 0.1))

    def auxiliary_loss(self, prepared: State, state: State) -> Tensor:
        dom = prepared["domain"]
        keep = dom >= 0
        if not bool(keep.any()):
            return prepared["H"].new_zeros(())
        h = grad_reverse(prepared["H"][keep])
        logit = torch.relu(h @ self.disc_w1 + self.disc_b1) @ self.disc_w2
        label = (dom[keep] == TARGET).to(logit.dtype)
        # balance the two domains so the larger one does not dominate the discriminator
        pos = label.mean().clamp(1e-3, 1 - 1e-3)
        weight = torch.where(label > 0, 0.5 / pos, 0.5 / (1 - pos))
        bce = nn.functional.binary_cross_entropy_with_logits(logit, label, weight=weight)
        return self.adv_weight * bce
