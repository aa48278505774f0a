"""Shared fixtures for the models tests: a small planted-cluster recommendation problem."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.base import ItemBank, LearnerConfig, SupportBatch
from models.training import UserHistory

N_ITEMS = 240
N_CLUSTERS = 6
FEAT = 8
ATTR = 4


@dataclass
class Planted:
    bank: ItemBank
    train: list[UserHistory]
    test: list[UserHistory]
    cluster_of_item: np.ndarray
    counts: np.ndarray

    def config(self, **kw: object) -> LearnerConfig:
        base = dict(n_items=N_ITEMS, feature_dim=FEAT, attribute_dim=ATTR, dim=16, seed=0)
        base.update(kw)
        return LearnerConfig(**base)  # type: ignore[arg-type]


def make_planted(seed: int = 0, n_train: int = 240, n_test: int = 80, length: int = 30) -> Planted:
    """Users belong to one of ``N_CLUSTERS`` taste clusters and consume (90%) items of their
    cluster, popularity-weighted (Zipf). Item features are weak noise so ids must be learned;
    global popularity is deliberately skewed towards one cluster so that popularity ranking is
    a strong-but-beatable baseline for users of the other clusters."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(N_ITEMS) % N_CLUSTERS
    zipf = 1.0 / (1.0 + rng.permutation(N_ITEMS)) ** 0.7
    zipf[cluster == 0] *= 4.0  # a globally dominant cluster
    user_cluster_p = np.full(N_CLUSTERS, 1.0 / N_CLUSTERS)

    def user(c: int) -> UserHistory:
        own = np.where(cluster == c)[0]
        p_own = zipf[own] / zipf[own].sum()
        p_all = zipf / zipf.sum()
        items = np.where(
            rng.random(length) < 0.9,
            rng.choice(own, size=length, p=p_own),
            rng.choice(N_ITEMS, size=length, p=p_all),
        )
        ratings = np.where(rng.random(length) < 0.5, rng.integers(6, 11, length) / 2, math.nan)
        targets = np.where(np.isnan(ratings), 1.0, (ratings - 0.5) / 4.5)
        return UserHistory(
            items=torch.as_tensor(items, dtype=torch.long),
            targets=torch.as_tensor(targets, dtype=torch.float32),
            ratings=torch.as_tensor(ratings, dtype=torch.float32),
            profile=torch.zeros(ATTR),
        )

    train = [user(int(rng.choice(N_CLUSTERS, p=user_cluster_p))) for _ in range(n_train)]
    test = [user(int(rng.choice(N_CLUSTERS, p=user_cluster_p))) for _ in range(n_test)]
    counts = np.bincount(torch.cat([h.items for h in train]).numpy(), minlength=N_ITEMS)
    feats = torch.as_tensor(rng.normal(size=(N_ITEMS, FEAT)) * 0.1, dtype=torch.float32)
    bank = ItemBank(
        id_index=torch.arange(N_ITEMS),
        features=feats,
        popularity=torch.log1p(torch.as_tensor(counts, dtype=torch.float32)),
    )
    return Planted(bank, train, test, cluster, counts)


@pytest.fixture(scope="session")
def planted() -> Planted:
    return make_planted()


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """Helper functions (test modules cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(support_from=support_from, ndcg10=ndcg10, mask_support=mask_support)


def support_from(histories: list[UserHistory], n: int) -> SupportBatch:
    """First-``n``-events support of equal-length histories."""
    items = torch.stack([h.items[:n] for h in histories])
    return SupportBatch(
        items=items,
        targets=torch.stack([h.targets[:n] for h in histories]),
        ratings=torch.stack([h.ratings[:n] for h in histories]),
        mask=torch.ones_like(items, dtype=torch.bool),
    )


def ndcg10(scores: torch.Tensor, histories: list[UserHistory], n: int) -> float:
    """Mean binary NDCG@10 of ``scores`` (support already masked) against events after ``n``."""
    top = torch.topk(scores, 10, dim=1).indices
    disc = 1.0 / torch.log2(torch.arange(2, 12).float())
    vals = []
    for b, h in enumerate(histories):
        rel_set = torch.unique(h.items[n:])
        rel = torch.isin(top[b], rel_set).float()
        vals.append(float((rel * disc).sum() / disc[: min(10, rel_set.numel())].sum()))
    return float(np.mean(vals))


def mask_support(scores: torch.Tensor, support: SupportBatch) -> torch.Tensor:
    return scores.scatter(1, support.items, float("-inf"))
