"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import metrics


def test_hand_computed_ranking_metrics() -> None:
    ranked = [["a", "b", "c", "d"], ["x", "y"]]
    relevant = [{"b", "d", "z"}, {"q"}]
    m = metrics.ranking_metrics(ranked, relevant, ks=(2, 4))
    # user 0: hits at ranks 2 and 4, |R| = 3
    assert m["precision@2"][0] == pytest.approx(1 / 2)
    assert m["precision@4"][0] == pytest.approx(2 / 4)
    assert m["recall@4"][0] == pytest.approx(2 / 3)
    assert m["hr@2"][0] == 1.0
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"][0] == pytest.approx(dcg / idcg)
    assert m["ndcg@2"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["mrr"][0] == pytest.approx(1 / 2)
    # user 1: no hit; a 2-item list evaluated @4 counts missing positions as misses
    assert m["precision@4"][1] == 0.0 and m["ndcg@4"][1] == 0.0 and m["mrr"][1] == 0.0
    assert metrics.mean_metrics(m)["hr@2"] == pytest.approx(0.5)


def test_perfect_ranking_scores_one() -> None:
    m = metrics.ranking_metrics([["a", "b", "c"]], [{"a", "b"}], ks=(3,))
    assert m["ndcg@3"][0] == pytest.approx(1.0)
    assert m["recall@3"][0] == pytest.approx(1.0)
    assert m["precision@3"][0] == pytest.approx(2 / 3)


def test_single_target_metrics() -> None:
    m = metrics.single_target_metrics([["a", "b"], ["a", "b"], []], ["b", "c", "a"], ks=(1, 2))
    assert m["hr@1"].tolist() == [0.0, 0.0, 0.0]
    assert m["hr@2"].tolist() == [1.0, 0.0, 0.0]
    assert m["ndcg@2"][0] == pytest.approx(1 / math.log2(3))
    assert m["mrr"].tolist() == [0.5, 0.0, 0.0]


def test_rating_errors() -> None:
    assert metrics.mae(np.array([1.0, 3.0]), np.array([2.0, 5.0])) == pytest.approx(1.5)
    assert metrics.rmse(np.array([1.0, 3.0]), np.array([2.0, 5.0])) == pytest.approx(math.sqrt(2.5))
    assert math.isnan(metrics.mae(np.array([]), np.array([])))


def test_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValueError):
        metrics.hit_matrix([["a"]], [])
