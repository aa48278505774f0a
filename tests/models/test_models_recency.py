"""Decayed item counts (models/recency.py) and the recency input of the item tower: online and
batch counts agree, training snapshots never see the future, per-episode biases are exact."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.base import ItemBank, LearnerConfig, create
from models.recency import DecayedCounts, RecencySnapshots, decayed_counts, recency_feature
from models.training import UserHistory, collate, episode_loss, sample_episodes


def brute_force(rows: np.ndarray, n: int, half_life: float) -> np.ndarray:
    out = np.zeros(n)
    for r in rows:
        out *= 2.0 ** (-1.0 / half_life)
        out[r] += 1.0
    return out


@pytest.mark.parametrize("half_life", [0.5, 3.0, 50.0])
def test_online_batch_and_brute_force_counts_agree(half_life: float) -> None:
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 7, size=400)
    online = DecayedCounts(3, half_life)  # grows as rows beyond 3 arrive
    for r in rows:
        online.add(int(r))
    expected = brute_force(rows, 7, half_life)
    # half_life 0.5 over 400 events rescales the lazy accumulator many times
    np.testing.assert_allclose(online.values(7), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(decayed_counts(rows, 7, half_life), expected, rtol=1e-9)
    assert online.events == 400


def test_online_counts_start_from_initial_and_total_mass_is_rate_free() -> None:
    c = DecayedCounts(2, half_life=10.0, initial=np.array([4.0, 0.0]))
    for _ in range(10):
        c.add(1)
    v = c.values()
    assert v[0] == pytest.approx(2.0)  # one half-life later
    # mass after k events is sum_{j<k} 2^{-j/h}, whatever the wall-clock rate of the events
    assert v[1] == pytest.approx(sum(2.0 ** (-j / 10.0) for j in range(10)))
    with pytest.raises(ValueError):
        DecayedCounts(1, half_life=0.0)


def test_snapshots_use_only_events_before_the_position() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 20, size=1000)
    snaps = RecencySnapshots(rows, 20, half_life=40.0, every=50)
    for pos in (0, 49, 50, 51, 499, 999, 1000, 5000):
        k = min(pos // 50, 20)
        np.testing.assert_allclose(snaps.at(torch.tensor([pos]))[0].numpy(),
                                   decayed_counts(rows[: k * 50], 20, 40.0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(snaps.counts_at(torch.tensor([pos]))[0].numpy(),
                                      np.bincount(rows[: k * 50], minlength=20))
    # rewriting the future changes nothing as of an earlier position
    poisoned = rows.copy()
    poisoned[600:] = 3
    other = RecencySnapshots(poisoned, 20, half_life=40.0, every=50)
    assert torch.equal(snaps.at(torch.tensor([600])), other.at(torch.tensor([600])))
    assert not torch.equal(snaps.at(torch.tensor([700])), other.at(torch.tensor([700])))


def bank_with(recency: torch.Tensor | None, n: int = 30, f: int = 4) -> ItemBank:
    g = torch.Generator().manual_seed(0)
    return ItemBank(id_index=torch.arange(n), features=torch.randn(n, f, generator=g),
                    popularity=torch.log1p(torch.rand(n, generator=g) * 50), recency=recency)


def learner(name: str = "fomaml", recency: bool = True):
    extra = {"recency_half_life": 100.0} if recency else {}
    torch.manual_seed(0)
    return create(name, LearnerConfig(n_items=30, feature_dim=4, attribute_dim=3, dim=6,
                                      extra=extra))


def test_recency_weight_exists_only_when_configured_and_moves_the_prior() -> None:
    assert "tower.recency_weight" not in dict(learner(recency=False).named_parameters())
    model = learner()
    rec = recency_feature(torch.zeros(30))
    rec[7] = 5.0
    plain = model.prepare(bank_with(None))
    hot = model.prepare(bank_with(rec))
    diff = hot["b"] - plain["b"]
    assert diff[7] == pytest.approx(5.0 * float(model.tower.recency_weight.detach()))
    assert torch.count_nonzero(diff) == 1
    # an un-adapted user ranks the recently hot item higher than without the signal
    state = model.init_state(torch.zeros(1, 3))
    rank = lambda prep: int((model.score(state, prep)[0] > model.score(state, prep)[0, 7]).sum())  # noqa: E731
    assert rank(hot) < rank(plain)


@pytest.mark.parametrize("name", ["fomaml", "proto", "sequence"])
def test_per_episode_recency_equals_one_bank_per_episode(name: str) -> None:
    """Training gives each episode its own as-of-then counts as a (B, N) bank input: identical to
    scoring each episode with its own (N,) bank, which is what serving does."""
    model = learner(name)
    g = torch.Generator().manual_seed(2)
    b = 3
    rec = recency_feature(torch.rand(b, 30, generator=g) * 20)
    items = torch.randint(0, 30, (b, 4), generator=g)
    hs = [UserHistory(items[i], torch.ones(4), torch.full((4,), math.nan), torch.zeros(3))
          for i in range(b)]
    batch = collate(hs, [(0, 2)] * b, [np.arange(2, 4)] * b)
    with torch.no_grad():
        prep = model.prepare_train(bank_with(rec))
        state = model.adapt_train(model.init_state_train(batch.profiles), batch.support, prep)
        joint = model.score_train(state, prep)
        for i in range(b):
            one = model.prepare_train(bank_with(rec[i]))
            sub = replace(batch.support, items=batch.support.items[i : i + 1],
                          targets=batch.support.targets[i : i + 1],
                          ratings=batch.support.ratings[i : i + 1],
                          mask=batch.support.mask[i : i + 1])
            s = model.adapt_train(model.init_state_train(batch.profiles[i : i + 1]), sub, one)
            torch.testing.assert_close(model.score_train(s, one)[0], joint[i])


def test_episodes_see_recency_as_of_their_support_end() -> None:
    times = torch.arange(6, dtype=torch.float64)
    h = UserHistory(torch.tensor([0, 1, 2, 3, 4, 5]), torch.ones(6), torch.full((6,), math.nan),
                    torch.zeros(3), times, positions=torch.tensor([3, 8, 9, 20, 21, 30]))
    batch = collate([h, h], [(0, 2), (2, 2)], [np.arange(2, 6), np.arange(2, 6)])
    # after the support's last event (position 8); an empty support: before its first query
    assert batch.as_of.tolist() == [9, 9]
    rng = np.random.default_rng(0)
    sampled = sample_episodes([h] * 4, 8, rng, support_range=(1, 3), p_first=1.0)
    n = sampled.support.mask.sum(1)
    assert sampled.as_of.tolist() == [int(h.positions[k - 1]) + 1 for k in n.tolist()]


def test_episode_loss_reads_the_episode_counts_not_the_bank() -> None:
    model = learner()
    rows = np.repeat(np.arange(30), 3)
    snaps = RecencySnapshots(rows, 30, half_life=10.0, every=10)
    hist = UserHistory(torch.tensor([1, 2, 3, 4]), torch.ones(4), torch.full((4,), math.nan),
                       torch.zeros(3), positions=torch.tensor([5, 40, 70, 85]))
    batch = collate([hist], [(0, 2)], [np.arange(2, 4)])
    base = bank_with(recency_feature(torch.zeros(30)))
    with torch.no_grad():
        own = episode_loss(model, base, batch, recency=snaps)
        explicit = episode_loss(model, replace(
            base, recency=recency_feature(snaps.at(batch.as_of)),
            popularity=torch.log1p(snaps.counts_at(batch.as_of))), batch)
        ignored = episode_loss(model, base, batch)
    assert float(own) == pytest.approx(float(explicit))
    assert float(own) != pytest.approx(float(ignored))
