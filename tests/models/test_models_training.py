"""Meta-training on the planted-cluster problem, held-out loss and the promotion rule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.base import create
from models.training import (
    calibrate_recency,
    first_n_episodes,
    first_n_ndcg,
    heldout_loss,
    meta_train,
    rescale_recency,
    sample_episodes,
    should_promote,
)


def test_episodes_do_not_leak_query(planted) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = sample_episodes(planted.train, 32, rng, support_range=(1, 10), max_query=8)
        n = batch.support.mask.sum(1)
        assert int(n.min()) >= 1 and int(n.max()) <= 10
        assert batch.query_mask.any(1).all()
    # first-n episodes: support is exactly the first n events, query exactly the rest
    ep = first_n_episodes(planted.test[:4], 3)
    for b, h in enumerate(planted.test[:4]):
        assert torch.equal(ep.support.items[b], h.items[:3])
        assert torch.equal(ep.query_items[b][ep.query_mask[b]], h.items[3:])


def _pop_ndcg(planted, tools, n: int) -> float:
    hs = planted.test
    sup = tools.support_from(hs, n)
    s = torch.as_tensor(planted.counts, dtype=torch.float32)[None].expand(len(hs), -1)
    return tools.ndcg10(tools.mask_support(s.clone(), sup), hs, n)


def _learner_ndcg(learner, planted, tools, n: int) -> float:
    hs = planted.test
    prep = learner.prepare(planted.bank)
    sup = tools.support_from(hs, n)
    st = learner.adapt(learner.init_state(torch.zeros(len(hs), 4)), sup, prep)
    return tools.ndcg10(tools.mask_support(learner.score(st, prep), sup), hs, n)


@pytest.mark.parametrize(
    ("name", "steps"),
    [("fomaml", 150), ("maml", 60), ("proto", 150), ("matching", 150), ("sequence", 150)],
)
def test_meta_training_helps_new_users(name: str, steps: int, planted, tools) -> None:
    learner = create(name, planted.config(inner_steps=2))
    before = heldout_loss(learner, planted.test, planted.bank, support_sizes=(1, 3, 5))
    report = meta_train(
        learner,
        planted.train,
        planted.bank,
        steps=steps,
        batch_users=32,
        lr=0.03,
        first_order=None,
        seed=0,
    )
    after = heldout_loss(learner, planted.test, planted.bank, support_sizes=(1, 3, 5))
    assert report["loss_last"] < report["loss_first"]
    assert report["first_order"] is (name != "maml")
    assert after < before - 0.05, (before, after)
    if name == "maml":
        return  # fewer steps: only checks that second-order training trains
    for n in (1, 3, 5):
        pop, ours = _pop_ndcg(planted, tools, n), _learner_ndcg(learner, planted, tools, n)
        assert ours > 1.1 * pop, (n, ours, pop)


def test_meta_train_is_deterministic(planted) -> None:
    def run() -> list[float]:
        learner = create("fomaml", planted.config())
        return meta_train(learner, planted.train, planted.bank, steps=5, seed=3)["losses"]

    assert run() == run()


def test_should_promote() -> None:
    assert should_promote(1.0, 1.1)
    assert should_promote(1.0, 1.0)
    assert not should_promote(1.2, 1.1)
    assert should_promote(1.105, 1.1, tolerance=0.01)
    assert should_promote(3.0, None)
    assert not should_promote(math.nan, 1.0)
    assert not should_promote(math.inf, 1.0)


def test_first_n_ndcg_scores_like_the_replay_harness(planted) -> None:
    """Same number as evaluation.metrics.ndcg_at_k on the same top-10 (support masked)."""
    from evaluation.metrics import hit_matrix, ndcg_at_k

    learner = create("fomaml", planted.config(inner_steps=2))
    meta_train(learner, planted.train, planted.bank, steps=30, batch_users=32, seed=0)
    hs = planted.test
    for n in (1, 3):
        sup = first_n_episodes(hs, n).support
        prep = learner.prepare(planted.bank)
        st = learner.adapt(learner.init_state(torch.stack([h.profile for h in hs])), sup, prep)
        scores = learner.score(st, prep).scatter(1, sup.items, float("-inf"))
        ranked = [[str(int(i)) for i in row] for row in scores.topk(10, dim=1).indices]
        relevant = [{str(int(i)) for i in h.items[n:]} for h in hs]
        hits, n_rel = hit_matrix(ranked, relevant)
        expected = float(ndcg_at_k(hits, n_rel, 10).mean())
        got = first_n_ndcg(learner, hs, planted.bank, support_sizes=(n,))[n]
        assert got == pytest.approx(expected, abs=1e-6), n
        assert 0.0 < got < 1.0


def test_calibrate_recency_leaves_the_weight_and_ignores_learners_without_one(planted) -> None:
    plain = create("fomaml", planted.config())
    assert calibrate_recency(plain, planted.test, planted.bank)["scale"] == 1.0
    rescale_recency(plain, 3.0)  # no recency weight: nothing to scale, no error

    config = planted.config()
    config.extra["recency_half_life"] = 100.0
    learner = create("fomaml", config)
    bank = replace(planted.bank, recency=torch.rand(planted.bank.features.shape[0]))
    before = learner.tower.recency_weight.detach().clone()
    out = calibrate_recency(learner, planted.test, bank, scales=(1.0, 2.0, 4.0))
    assert set(out["ndcg"]) == {1.0, 2.0, 4.0} and out["scale"] in out["ndcg"]
    torch.testing.assert_close(learner.tower.recency_weight.detach(), before)  # restored
    rescale_recency(learner, out["scale"])
    torch.testing.assert_close(learner.tower.recency_weight.detach(), before * out["scale"])


def test_latest_users_are_the_last_to_arrive_within_bounds() -> None:
    from models.training import UserHistory, latest_users

    def user(first: float, n: int = 3) -> UserHistory:
        return UserHistory(items=torch.zeros(n, dtype=torch.long), targets=torch.ones(n),
                           ratings=torch.full((n,), math.nan), profile=torch.zeros(4),
                           times=torch.arange(n, dtype=torch.float64) + first)

    users = [user(float(t)) for t in (50, 10, 40, 30, 20)] + [user(99.0, n=1)]
    got = latest_users(users, 0.4, minimum=1)
    assert [float(h.times[0]) for h in got] == [40.0, 50.0]  # one-event user never picked
    assert len(latest_users(users, 0.01, minimum=3)) == 3
    assert len(latest_users(users, 1.0, minimum=1, maximum=2)) == 2
    assert latest_users([replace(h, times=None) for h in users], 0.5) == []
