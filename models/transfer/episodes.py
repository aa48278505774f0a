"""Held-out transfer episodes and their NDCG: the serving situation of a cross-domain user.

A user with source events who starts on the target domain holds, in the worker's bounded support
set, their last ``capacity - k`` source events and their first ``k`` target events; what they do
next in the target domain is the query. :func:`transfer_episodes` builds those episodes from
:class:`~models.training.UserHistory` rows (bank rows), :func:`episode_ndcg` scores a ranking of
the target items minus the support. ``cd-graph`` chooses its hyper-parameters with them, and the
retrain agent compares a transfer candidate with the serving version on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.base import SupportBatch
from models.metrics import ndcg_at_k
from models.training import UserHistory, padded_support
from models.transfer.learners import TARGET


def split_by_domain(history: UserHistory, domain: Tensor) -> tuple[UserHistory, int, int]:
    """Reorder a history to [source events..., target events...] (time order kept inside each)
    and return it with the two counts. ``domain`` is the bank's (N,) code vector."""
    dom = domain[history.items]
    src = torch.nonzero(dom != TARGET).flatten()
    tgt = torch.nonzero(dom == TARGET).flatten()
    order = torch.cat([src, tgt])
    reordered = UserHistory(
        items=history.items[order],
        targets=history.targets[order],
        ratings=history.ratings[order],
        profile=history.profile,
        times=None if history.times is None else history.times[order],
    )
    return reordered, int(src.numel()), int(tgt.numel())


@dataclass
class TransferEpisodes:
    """Held-out users' transfer episodes at one ``k``: support = their last ``capacity - k``
    source events + first ``k`` target events, query = their later target events."""

    users: list[int]  # positions in the histories passed in
    support: SupportBatch
    query: list[Tensor]  # per user, bank rows
    query_ratings: list[Tensor]


def transfer_episodes(histories: Sequence[UserHistory], domain: Tensor, k: int, capacity: int,
                      *, users: Sequence[int] | None = None) -> TransferEpisodes:
    """Episodes of the histories (of ``users``, default all) with a source event and more than
    ``k`` target events. ``domain`` holds the bank's domain codes
    (:func:`~models.transfer.learners.domain_of`)."""
    picked, rows, tg, rt, query, q_r = [], [], [], [], [], []
    for u in range(len(histories)) if users is None else users:
        h, n_s, n_t = split_by_domain(histories[u], domain)
        if n_s == 0 or n_t <= k:
            continue
        start = max(0, n_s - max(capacity - k, 0)) if capacity > k else n_s
        cut = slice(start, n_s + k)
        picked.append(int(u))
        rows.append(h.items[cut])
        tg.append(h.targets[cut])
        rt.append(h.ratings[cut])
        query.append(h.items[n_s + k:])
        q_r.append(h.ratings[n_s + k:])
    return TransferEpisodes(picked, padded_support(rows, tg, rt), query, q_r)


def relevance(episodes: TransferEpisodes, n_items: int) -> Tensor:
    """(B, n_items) bool: the query items of each episode."""
    rel = torch.zeros(len(episodes.query), n_items, dtype=torch.bool)
    for i, q in enumerate(episodes.query):
        rel[i, q] = True
    return rel


def blocked(episodes: TransferEpisodes, target: Tensor) -> Tensor:
    """(B, N) bool: what a ranking of the ``target`` items may not show (support, other domains)."""
    seen = torch.zeros(len(episodes.query), target.shape[0]).scatter_add_(
        1, episodes.support.items, episodes.support.mask.float()) > 0
    return seen | ~target[None, :]


def episode_ndcg(scores: Tensor, episodes: TransferEpisodes, target: Tensor, k: int = 10,
                 *, relevant: Tensor | None = None, hidden: Tensor | None = None) -> Tensor:
    """Per-user NDCG@``k`` of ``scores`` (B, N) ranking the ``target`` items minus the support;
    ``relevant`` (:func:`relevance`) and ``hidden`` (:func:`blocked`) are computed when not
    given (pass them when scoring the same episodes many times)."""
    hide = blocked(episodes, target) if hidden is None else hidden
    top = torch.topk(scores.masked_fill(hide, -math.inf), k, dim=1).indices
    rel = relevance(episodes, scores.shape[1]) if relevant is None else relevant
    return ndcg_at_k(rel.gather(1, top), rel.sum(1), k)


__all__ = ["TransferEpisodes", "blocked", "episode_ndcg", "relevance", "split_by_domain",
           "transfer_episodes"]
