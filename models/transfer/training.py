"""Training the cross-domain learners: episodic, with the target domain as the query.

An episode for a user with both domains is exactly the serving situation the models exist for:
support = the user's last ``max_source - k`` source-domain events plus their *first* ``k``
target events (``k`` drawn from ``target_shots``, 0 included), query = the user's *later* target
events. Users with too few target events still teach the shared tower through within-source
episodes (first ``n`` source events → later source events). The loss is a full softmax over the
query domain's items (support items masked: they are excluded at ranking time too) plus a rating
MSE on rated query events, plus the learner's auxiliary loss (the adversarial discriminator).

Inputs are :class:`~models.training.UserHistory` rows of an :class:`~models.base.ItemBank` whose
``domains`` are the learner's codes (0 source, 1 target, see :mod:`models.transfer`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.base import ItemBank, LearnerConfig, create
from models.training import UserHistory, collate, pretrain_items
from models.transfer.episodes import split_by_domain
from models.transfer.graph import GraphTransferLearner, fit_graph
from models.transfer.learners import SOURCE, TARGET, CrossDomainLearner, domain_of
from models.transfer.lightgcn import LightGCNLearner


def graph_edges(histories: Sequence[UserHistory], bank: ItemBank) -> tuple[Tensor, Tensor]:
    """(user, id-embedding row) edges of the training interactions with a trained item."""
    users, items = [], []
    for u, h in enumerate(histories):
        rows = bank.id_index[h.items]
        rows = torch.unique(rows[rows >= 0])
        users.append(torch.full_like(rows, u))
        items.append(rows)
    if not items:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(users), torch.cat(items)


def _episodes(
    split: Sequence[tuple[UserHistory, int, int]],
    picks: np.ndarray,
    rng: np.random.Generator,
    target_shots: Sequence[int],
    max_source: int,
    max_query: int,
):
    hs, cuts, queries, query_domain = [], [], [], []
    for i in picks:
        h, n_s, n_t = split[i]
        if n_t >= 2:
            if n_s:
                k = int(rng.choice([s for s in target_shots if s < n_t] or [0]))
            else:  # no source events: a plain few-shot episode, k uniform in 0..10
                k = int(rng.integers(0, min(10, n_t - 1) + 1))
            start, stop = max(0, n_s - max(max_source - k, 1)), n_s + k
            pool = np.arange(stop, n_s + n_t)
            query_domain.append(TARGET)
        else:
            n = int(rng.integers(1, min(10, n_s - 1) + 1))
            start, stop = 0, n
            pool = np.arange(n, n_s)
            query_domain.append(SOURCE)
        if pool.size > max_query:
            pool = np.sort(rng.choice(pool, max_query, replace=False))
        hs.append(h)
        cuts.append((start, stop))
        queries.append(pool)
    return collate(hs, cuts, queries), torch.tensor(query_domain)


def episode_loss(
    learner: CrossDomainLearner,
    prepared: dict[str, Tensor],
    batch,
    query_domain: Tensor,
    *,
    rating_weight: float = 0.5,
) -> Tensor:
    """Softmax loss over the query domain's items + rating MSE (+ the learner's auxiliary)."""
    state = learner.init_state_train(batch.profiles)
    state = learner.adapt_train(state, batch.support, prepared)
    scores = learner.score_train(state, prepared)  # (B, N)
    item_dom = prepared["domain"]
    allowed = (item_dom[None, :] == TARGET) == (query_domain[:, None] == TARGET)
    block = torch.zeros_like(scores, dtype=torch.bool)
    block.scatter_(1, batch.support.items, batch.support.mask)
    scores = scores.masked_fill(~allowed | block, -math.inf)
    logp = torch.log_softmax(scores, dim=1)
    q_logp = torch.gather(logp, 1, batch.query_items)
    qm = batch.query_mask & torch.isfinite(q_logp)
    ce = -(torch.where(qm, q_logp, 0.0).sum() / qm.sum().clamp(min=1))
    loss = ce + learner.auxiliary_loss(prepared, state)
    has_r = batch.query_mask & ~torch.isnan(batch.query_ratings)
    if rating_weight and bool(has_r.any()):
        pred = learner.rating_train(state, prepared, batch.query_items)
        err = torch.where(has_r, pred - torch.nan_to_num(batch.query_ratings), 0.0)
        loss = loss + rating_weight * (err**2).sum() / has_r.sum()
    return loss


def fit_transfer(
    name: str,
    histories: Sequence[UserHistory],
    bank: ItemBank,
    config: LearnerConfig,
    *,
    steps: int = 300,
    batch_users: int = 64,
    lr: float = 0.01,
    seed: int = 0,
    target_shots: Sequence[int] = (0, 0, 1, 2, 3, 5),
    max_source: int = 20,
    max_query: int = 32,
    pretrain_epochs: int = 2,
) -> tuple[CrossDomainLearner | GraphTransferLearner, dict[str, Any]]:
    """Create learner ``name`` from ``config`` and train it on ``histories``.

    ``cd-graph`` is not trained by gradient: :func:`models.transfer.graph.fit_graph` builds its
    graph and chooses its hyper-parameters on held-out training users (``max_source`` is the
    support capacity it assumes; the other training arguments do not apply to it).

    ``histories`` mix both domains (rows of ``bank``; ``bank.domains`` tell them apart) and must
    not contain any event of a user held out for evaluation. ``target_shots`` repeats 0 on
    purpose: zero-target-event transfer is the case the models exist for. ``pretrain_epochs`` of
    :func:`models.training.pretrain_items` (co-occurrence over whole mixed-domain histories) give
    the item tower its geometry first, as the single-domain pipeline does. Returns the learner
    (eval mode) and a small report.
    """
    if name == GraphTransferLearner.name:  # no gradient training: a graph + chosen hyper-params
        return fit_graph(histories, bank, config, seed=seed, capacity=max_source)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    domain = domain_of(bank)
    if name == LightGCNLearner.name:
        eu, ei = graph_edges(histories, bank)
        config = LearnerConfig(**{**config.__dict__,
                                  "extra": LightGCNLearner.graph_config(config.extra, eu, ei)})
        learner = create(name, config)
        learner.set_graph(eu, ei)  # type: ignore[attr-defined]
    else:
        learner = create(name, config)
    if not isinstance(learner, CrossDomainLearner):
        raise TypeError(f"{name!r} is not a cross-domain learner")
    split = [split_by_domain(h, domain) for h in histories]
    usable = np.array([i for i, (_, n_s, n_t) in enumerate(split) if n_t >= 2 or n_s >= 2])
    report: dict[str, Any] = {"learner": name, "train_users": int(usable.size), "steps": steps,
                              "cross_users": sum(1 for _, n_s, n_t in split if n_s and n_t >= 2)}
    if usable.size == 0 or steps <= 0:
        learner.eval()
        return learner, report
    if pretrain_epochs:
        report["pretrain"] = pretrain_items(learner, [histories[i] for i in usable], bank,
                                            epochs=pretrain_epochs, seed=seed)
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    losses = []
    t0 = time.perf_counter()
    learner.train()
    for _ in range(steps):
        picks = rng.choice(usable, min(batch_users, usable.size), replace=False)
        batch, qdom = _episodes(split, picks, rng, target_shots, max_source, max_query)
        prepared = learner.prepare_train(bank)
        loss = episode_loss(learner, prepared, batch, qdom)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    learner.eval()
    tail = losses[-max(1, steps // 10):]
    report.update({"final_loss": float(np.mean(tail)), "first_loss": losses[0],
                   "seconds": round(time.perf_counter() - t0, 2)})
    return learner, report


def transfer_domains(domain_counts: Mapping[str, int]) -> list[str]:
    """``[source, target]`` for a log with these per-domain event counts: the two largest
    domains, the larger one as source (transfer helps the sparser domain). A single-domain log
    gives ``["", domain]``: everything is target and the learners act as single-domain ones."""
    top = sorted(domain_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    if len(top) < 2:
        return ["", top[0][0] if top else "default"]
    return [top[0][0], top[1][0]]


__all__ = ["episode_loss", "fit_transfer", "graph_edges", "split_by_domain", "transfer_domains"]
