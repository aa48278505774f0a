"""Pretraining the item tower: each autoencoder objective improves its own held-out metric over
the untrained tower; InfoNCE pulls co-consumed items together."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.settings import Settings
from engine.trainer import histories_from_events, learner_config
from evaluation.synthetic import generate
from models.base import ItemBank, create
from models.pretrain import OBJECTIVES, autoencoder_pretrain, evaluate_objective, infonce_pretrain


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, list, list, ItemBank, dict]:
    s = Settings()
    data = generate(n_users=300, n_items=200, seed=5)
    catalog = Catalog(HashingFeaturizer(s.feature_dim, s.attribute_dim))
    catalog.upsert(data.items)
    hist = histories_from_events(data.events, catalog, s)
    users = sorted(hist)
    train, held = [hist[u] for u in users[:240]], [hist[u] for u in users[240:]]
    bank = ItemBank(torch.arange(len(catalog)), torch.from_numpy(catalog.features.copy()),
                    torch.zeros(len(catalog)))
    torch.manual_seed(0)
    learner = create("fomaml", learner_config(s, len(catalog)))
    cluster = torch.tensor([data.item_cluster[i] for i in catalog.ids])
    return learner, train, held, bank, {"cluster": cluster}


METRIC = {"bce": ("auc", 1), "bpr": ("ndcg@10", 1), "softmax": ("ndcg@10", 1), "mse": ("rmse", -1)}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_autoencoder_objective_improves_its_metric(setup, objective: str) -> None:
    base, train, held, bank, _ = setup
    learner = copy.deepcopy(base)
    before = evaluate_objective(learner, held, bank)
    report = autoencoder_pretrain(learner, train, bank, objective=objective, epochs=3)
    after = evaluate_objective(learner, held, bank)
    metric, sign = METRIC[objective]
    assert report["loss_last"] < report["loss_first"]
    assert sign * (after[metric] - before[metric]) > 0.02, (objective, before, after)


def test_infonce_groups_items_by_planted_cluster(setup) -> None:
    base, train, _, bank, truth = setup
    learner = copy.deepcopy(base)

    def cluster_gap() -> float:
        h = F.normalize(learner.prepare(bank)["H"], dim=1)
        sims = h @ h.T
        same = truth["cluster"][:, None] == truth["cluster"][None, :]
        return float(sims[same].mean() - sims[~same].mean())

    before = cluster_gap()
    report = infonce_pretrain(learner, train, bank, steps=40, batch_pairs=128)
    assert report["loss_last"] < report["loss_first"]
    assert cluster_gap() > before + 0.05
