"""EASE in closed form, the pruned neighbour table and its batched scoring."""

from __future__ import annotations

import math

import torch

from models.itemitem import (
    ease_vocabulary,
    ease_weights,
    gram,
    neighbour_scores,
    top_neighbours,
)


def _random_matrix(seed: int = 0, users: int = 60, items: int = 12) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(users, items, generator=g) < 0.3).float()
    u, i = x.nonzero(as_tuple=True)
    return x, u, i


def test_gram_counts_distinct_pairs_and_ignores_out_of_range_items() -> None:
    x, u, i = _random_matrix()
    # a repeated pair and an item outside the modelled range change nothing
    u2 = torch.cat([u, u[:3], torch.tensor([0])])
    i2 = torch.cat([i, i[:3], torch.tensor([-1])])
    torch.testing.assert_close(gram(u2, i2, x.shape[1]), x.T @ x)


def test_ease_solves_each_column_with_a_zero_diagonal() -> None:
    """EASE's closed form equals, column by column, ridge regression of item j on the others:
    ``B[-j, j] = (G[-j, -j] + λI)^-1 G[-j, j]``, ``B[j, j] = 0``."""
    x, u, i = _random_matrix(seed=1)
    lam = 3.0
    g = gram(u, i, x.shape[1]).double()
    b = ease_weights(g, lam).double()
    n = g.shape[0]
    for j in range(n):
        rest = torch.tensor([k for k in range(n) if k != j])
        a = g[rest][:, rest] + lam * torch.eye(n - 1, dtype=torch.float64)
        expected = torch.linalg.solve(a, g[rest, j])
        torch.testing.assert_close(b[rest, j], expected, atol=1e-5, rtol=1e-4)
        assert b[j, j] == 0


def test_ease_at_infinite_lambda_is_the_limit_of_growing_lambda() -> None:
    """``λ = inf`` is where the family ends: ``λ·B(λ)`` tends to ``G`` off the diagonal, which
    is what ``ease_weights(g, inf)`` returns (so a grid may end there)."""
    x, u, i = _random_matrix(seed=2)
    g = gram(u, i, x.shape[1])
    limit = ease_weights(g, math.inf)
    off = g.clone()
    off.diagonal().zero_()
    torch.testing.assert_close(limit, off)
    far = 1e4 * ease_weights(g.double(), 1e4).double()
    torch.testing.assert_close(far, off.double(), atol=0.05, rtol=0.01)
    near = 3.0 * ease_weights(g, 3.0)
    assert float((near - off).abs().max()) > 0.5  # a small λ is not the limit


def test_vocabulary_keeps_the_most_interacted_items_with_evidence() -> None:
    counts = torch.tensor([5, 1, 9, 2, 9, 0])
    assert ease_vocabulary(counts, 3).tolist() == [2, 4, 0]  # ties: lower index first
    assert ease_vocabulary(counts, 10).tolist() == [2, 4, 0, 3]  # count >= 2 only


def test_pruned_table_scores_like_the_dense_weights_restricted_to_the_top_k() -> None:
    x, u, i = _random_matrix(seed=2)
    b = ease_weights(gram(u, i, x.shape[1]), 1.0)
    idx, val = top_neighbours(b, 4)
    assert idx.shape == val.shape == (12, 4) and bool((val >= 0).all())
    dense = torch.zeros_like(b)
    dense.scatter_(1, idx, val)  # zero weights point at the row itself: adds nothing
    support = torch.tensor([[0, 3, 5], [7, 7, 1]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]])  # a padded event, a repeat
    scores = neighbour_scores(idx, val, support, weights, 12)
    expected = torch.stack([(dense[s] * w[:, None]).sum(0) for s, w in zip(support, weights,
                                                                              strict=True)])
    torch.testing.assert_close(scores, expected)
    for row in range(12):  # the kept weights are the row's largest positive ones
        kept = val[row][val[row] > 0]
        assert bool((b[row][b[row] > 0].sort(descending=True).values[: kept.numel()]
                     == kept.sort(descending=True).values).all())


def test_neighbour_scores_drop_the_sink_and_leave_unweighted_rows_zero() -> None:
    # Columns point into [0, n_items]; n_items (= 3 here) is the sink of absent neighbours.
    idx = torch.tensor([[1, 3], [3, 3], [0, 2]])
    val = torch.tensor([[0.5, 9.0], [9.0, 9.0], [0.25, 1.0]])
    items = torch.tensor([[0, 2, 1], [1, 1, 1], [2, 0, 0]])
    weights = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    scores = neighbour_scores(idx, val, items, weights, 3)
    torch.testing.assert_close(scores, torch.tensor([[0.5, 0.5, 2.0],  # 0.5·e1 + 2·(.25e0 + e2)
                                                     [0.0, 0.0, 0.0],
                                                     [0.25, 0.0, 1.0]]))
    assert neighbour_scores(idx, val, items[:, :0], weights[:, :0], 3).shape == (3, 3)
    assert not bool(neighbour_scores(idx, val, items, weights, 3)[1].any())
