"""The harness recovers the synthetic log's planted structure, deterministically."""

from __future__ import annotations

import math
from typing import Any

import pytest

from evaluation.replay import replay, split_new_items, split_new_users
from evaluation.synthetic import generate

KINDLING = "fomaml"
MARGIN = 1.5  # required NDCG@10 ratio to popularity at n = 5


@pytest.fixture(scope="module")
def log() -> Any:
    return generate(300, 400, 6, (8, 40), seed=0)


@pytest.fixture(scope="module")
def few_shot(log: Any) -> dict[str, Any]:
    return replay(
        log,
        protocol="few-shot",
        models=["random", "popularity", "itemknn", "river-funkmf", KINDLING],
        support_sizes=(1, 5),
        seed=0,
        train_steps=30,
        progress=False,
    )


def ndcg(report: dict[str, Any], model: str, key: str = "5") -> float:
    return report["results"][model][key]["ndcg@10"]


def test_split_keeps_new_users_out_of_training(log: Any) -> None:
    train, new = split_new_users(log.events, 0.2)
    assert new and not {e.user_id for e in train} & set(new)
    cut = min(h[0].ts for h in new.values())
    assert all(h[0].ts >= cut for h in new.values())
    assert len(train) + sum(len(h) for h in new.values()) == len(log.events)


def test_itemknn_recovers_structure(few_shot: dict[str, Any]) -> None:
    pop, rnd = ndcg(few_shot, "popularity"), ndcg(few_shot, "random")
    assert ndcg(few_shot, "itemknn") >= MARGIN * pop
    assert pop > 2 * rnd


def test_kindling_learner_recovers_structure(few_shot: dict[str, Any]) -> None:
    pop = ndcg(few_shot, "popularity")
    assert ndcg(few_shot, KINDLING) >= MARGIN * pop
    assert ndcg(few_shot, KINDLING, "1") >= MARGIN * ndcg(few_shot, "popularity", "1")
    # ratings: the learner's MAE beats random guessing
    assert few_shot["results"][KINDLING]["5"]["mae"] < few_shot["results"]["random"]["5"]["mae"]
    success = few_shot["meta"]["first_recommendation_success"]
    assert success[KINDLING] > success["random"]


def test_report_covers_every_metric(few_shot: dict[str, Any]) -> None:
    row = few_shot["results"]["popularity"]["5"]
    for k in (5, 10, 20):
        for m in ("precision", "recall", "hr", "ndcg"):
            assert 0.0 <= row[f"{m}@{k}"] <= 1.0
    assert row["mrr"] > 0 and row["mae"] > 0 and row["rmse"] >= row["mae"]
    assert few_shot["latency_ms"][KINDLING]["p50"] > 0
    assert few_shot["meta"]["models"][KINDLING]["train"]["learner"] == KINDLING


def test_seed_determinism() -> None:
    small = generate(120, 150, 4, (5, 20), seed=3)
    kwargs: dict[str, Any] = dict(
        protocol="few-shot",
        models=["random", "river-biasedmf", "itemknn", KINDLING],
        support_sizes=(1, 3),
        train_steps=3,
        progress=False,
    )
    a, b = replay(small, seed=5, **kwargs), replay(small, seed=5, **kwargs)
    assert a["results"] == b["results"]
    c = replay(small, seed=6, **kwargs)
    assert c["results"]["random"] != a["results"]["random"]


def test_prequential_buckets(log: Any) -> None:
    report = replay(
        log,
        protocol="prequential",
        models=["random", "popularity", "itemknn"],
        seed=0,
        progress=False,
        max_stream_events=1500,
    )
    res = report["results"]
    assert report["meta"]["stream_events"] == 1500
    assert res["itemknn"]["all"]["events"] == 1500
    assert sum(res["itemknn"][k]["events"] for k in res["itemknn"] if k != "all") == 1500
    assert {"0", "1", "3", "5", "10+"} >= set(res["itemknn"]) - {"all"}
    assert res["itemknn"]["all"]["ndcg@10"] > 1.5 * res["popularity"]["all"]["ndcg@10"]
    assert res["popularity"]["all"]["hr@10"] > res["random"]["all"]["hr@10"]


def test_prequential_kindling_runs_through_the_serving_path() -> None:
    small = generate(120, 150, 4, (5, 20), seed=2)
    report = replay(
        small,
        protocol="prequential",
        models=["random", KINDLING],
        seed=0,
        train_steps=5,
        progress=False,
        max_stream_events=300,
    )
    row = report["results"][KINDLING]["all"]
    assert row["events"] == 300 and row["hr@20"] > report["results"]["random"]["all"]["hr@20"]


def test_new_items_content_only(log: Any) -> None:
    train, new_items, targets = split_new_items(log.events, 0.2)
    assert not set(new_items) & {e.item_id for e in train}
    assert targets and all(t <= set(new_items) for t in targets.values())
    report = replay(
        log,
        protocol="new-items",
        models=["random", "popularity", KINDLING],
        seed=0,
        train_steps=30,
        progress=False,
    )
    res = report["results"]
    assert report["meta"]["new_items"] == len(new_items)
    assert res[KINDLING]["all"]["ndcg@10"] > res["random"]["all"]["ndcg@10"]
    assert not math.isnan(res["popularity"]["all"]["ndcg@10"])


def test_unknown_model_and_protocol(log: Any) -> None:
    with pytest.raises(KeyError):
        replay(log, models=["nope"], progress=False)
    with pytest.raises(ValueError):
        replay(log, protocol="nope", models=["random"], progress=False)


def test_fomaml_is_served_from_the_hybrids_core_and_equals_a_separate_training() -> None:
    """The matrix trains ``hybrid`` and reports its core as ``fomaml`` instead of training the
    same model twice: that is only honest if a separately trained ``fomaml`` gives the same
    results, which this checks."""
    small = generate(120, 150, 4, (5, 20), seed=3)
    kwargs: dict[str, Any] = dict(protocol="few-shot", support_sizes=(1, 3), train_steps=20,
                                  progress=False, seed=2)
    shared = replay(small, models=["hybrid", "fomaml"], **kwargs)
    alone = replay(small, models=["fomaml"], **kwargs)
    assert shared["meta"]["models"]["fomaml"]["core_of"] == "hybrid"
    assert shared["meta"]["models"]["fomaml"]["fit_seconds"] == 0.0
    assert shared["results"]["fomaml"] == alone["results"]["fomaml"]
    assert shared["results"]["fomaml"] != shared["results"]["hybrid"]
