"""FOMAML/MAML specifics: closed-form inner gradient, adaptation direction, second order."""

from __future__ import annotations

import math

import torch

from models.base import SupportBatch, create
from models.fomaml import inner_gradients
from models.training import episode_loss, sample_episodes


def test_closed_form_matches_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    b, s, k, d = 3, 4, 6, 5
    u = torch.randn(b, d, generator=g, requires_grad=True)
    r = torch.randn(b, d, generator=g, requires_grad=True)
    c = torch.randn(b, generator=g, requires_grad=True)
    hs, bs = torch.randn(b, s, d, generator=g), torch.randn(b, s, generator=g)
    hn, bn = torch.randn(k, d, generator=g), torch.randn(k, generator=g)
    w = torch.rand(b, s, generator=g)
    w[0, -1] = 0.0
    rmask = torch.rand(b, s, generator=g) < 0.6
    resid = torch.randn(b, s, generator=g)
    lam = 0.7
    z = torch.einsum("bsd,bd->bs", hs, u) + bs
    neg = u @ hn.T + bn
    lse = torch.logsumexp(torch.cat([z[..., None], neg[:, None, :].expand(b, s, k)], -1), -1)
    rank = (w * (lse - z)).sum(1) / (w.sum(1) + lam)
    err = (torch.einsum("bsd,bd->bs", hs, r) + c[:, None] - resid) * rmask
    mse = (err**2).sum(1) / rmask.sum(1).clamp(min=1)
    gu, gr, gc = torch.autograd.grad((rank + mse).sum(), [u, r, c])
    cu, cr, cc = inner_gradients(u, r, c, hs, bs, hn, bn, w, rmask, resid, lam)
    torch.testing.assert_close(cu, gu)
    torch.testing.assert_close(cr, gr)
    torch.testing.assert_close(cc, gc)


def test_adaptation_moves_towards_support(planted) -> None:
    """Even untrained, adapting on items of one cluster lifts that cluster's items."""
    learner = create("fomaml", planted.config(inner_steps=2, inner_lr=2.0))
    with torch.no_grad():  # planted geometry: one embedding direction per cluster
        emb = torch.zeros_like(learner.tower.id_emb)
        emb[torch.arange(planted.bank.size), torch.as_tensor(planted.cluster_of_item)] = 1.0
        learner.tower.id_emb.copy_(emb)
    prep = learner.prepare(planted.bank)
    cl = torch.as_tensor(planted.cluster_of_item)
    items = torch.where(cl == 3)[0][:3][None]
    sup = SupportBatch(
        items, torch.ones(1, 3), torch.full((1, 3), math.nan), torch.ones(1, 3, dtype=torch.bool)
    )
    prior = learner.init_state(torch.zeros(1, 4))
    s0 = learner.score(prior, prep)[0]
    s1 = learner.score(learner.adapt(prior, sup, prep), prep)[0]
    gain = s1 - s0
    assert gain[cl == 3].mean() > gain[cl != 3].mean() + 0.1
    top0 = torch.topk(s0, 20).indices
    top1 = torch.topk(s1, 20).indices
    assert (cl[top1] == 3).sum() > (cl[top0] == 3).sum()


def test_rating_head_adapts(planted) -> None:
    learner = create("fomaml", planted.config(inner_steps=3))
    prep = learner.prepare(planted.bank)
    items = torch.tensor([[1, 2, 3]])
    sup = SupportBatch(
        items, torch.ones(1, 3), torch.full((1, 3), 5.0), torch.ones(1, 3, dtype=torch.bool)
    )
    prior = learner.init_state(torch.zeros(1, 4))
    r0 = learner.predict_rating(prior, prep, items)
    r1 = learner.predict_rating(learner.adapt(prior, sup, prep), prep, items)
    assert (r1 > r0).all()


def _grads(name: str, planted, first_order: bool) -> dict[str, torch.Tensor]:
    import numpy as np

    learner = create(name, planted.config(inner_steps=2, inner_lr=1.0))
    batch = sample_episodes(planted.train, 16, np.random.default_rng(0))
    loss = episode_loss(learner, planted.bank, batch, first_order=first_order)
    loss.backward()
    return {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}


def test_second_order_gradients_differ(planted) -> None:
    fo = _grads("fomaml", planted, True)
    so = _grads("maml", planted, False)
    fo2 = _grads("fomaml", planted, True)
    for k in fo:  # determinism: same seed, same gradients
        torch.testing.assert_close(fo[k], fo2[k])
    # the second-order term flows into the item embeddings through the inner gradient
    diff = (fo["tower.id_emb"] - so["tower.id_emb"]).abs().max()
    assert diff > 1e-6
    # and into the prior/user network only via the Hessian of the inner loss
    assert not torch.allclose(fo["prior.base"], so["prior.base"])


def test_serve_path_records_no_graph(planted, tools) -> None:
    learner = create("fomaml", planted.config())
    prep = learner.prepare(planted.bank)
    st = learner.adapt(
        learner.init_state(torch.zeros(2, 4)), tools.support_from(planted.test[:2], 3), prep
    )
    s = learner.score(st, prep)
    assert not s.requires_grad and s.is_inference()
