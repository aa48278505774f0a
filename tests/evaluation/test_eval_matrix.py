"""The quality matrix: intervals over users, the best baseline per n, paired ratios, the files;
tuning on training users; the query-rank protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from evaluation import tuning
from evaluation.matrix import aggregate, render, run_matrix
from evaluation.replay import _graded_ndcg, replay, split_latest_users
from evaluation.synthetic import generate
from schemas import Interaction


def _per_user(values: dict[str, np.ndarray], users: list[str]) -> dict:
    return {"users": users, "ndcg@10": values["ndcg@10"], "hr@10": values["ndcg@10"] > 0,
            "abs_err": values.get("abs_err", np.ones(len(users))),
            "sq_err": values.get("sq_err", np.ones(len(users))), "rated": np.ones(len(users))}


def test_aggregate_averages_seeds_per_user_and_pairs_the_ratio() -> None:
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(300)]
    base = rng.uniform(0.1, 0.5, 300)
    runs = {
        "popularity": [{"1": _per_user({"ndcg@10": base}, users)}] * 2,
        "itemknn": [{"1": _per_user({"ndcg@10": base * 0.9}, users)}] * 2,
        # the learner: 10% above popularity for every user, noise that averages out over seeds
        "hybrid": [{"1": _per_user({"ndcg@10": base * 1.1 + d}, users)} for d in (0.02, -0.02)],
    }
    out = aggregate(runs, "ndcg@10", resamples=500)["1"]
    assert out["best_baseline"] == "popularity" and out["users"] == 300
    hybrid = out["models"]["hybrid"]
    assert hybrid["mean"]["ndcg@10"] == pytest.approx(base.mean() * 1.1)
    lo, hi = hybrid["ci95"]["ndcg@10"]
    assert lo < hybrid["mean"]["ndcg@10"] < hi
    ratio = hybrid["vs_best"]
    assert ratio["ratio"] == pytest.approx(1.1)
    # paired: every user is exactly 1.1x, so the paired interval is tight around 1.1
    assert ratio["ci95"][0] == pytest.approx(1.1, abs=1e-9)
    assert ratio["ci95"][1] == pytest.approx(1.1, abs=1e-9)
    assert out["models"]["popularity"]["mean"]["mae"] == 1.0


def test_aggregate_refuses_different_users_across_seeds() -> None:
    a = {"1": _per_user({"ndcg@10": np.ones(2)}, ["a", "b"])}
    b = {"1": _per_user({"ndcg@10": np.ones(2)}, ["a", "c"])}
    with pytest.raises(ValueError, match="users differ"):
        aggregate({"popularity": [a, b]}, "ndcg@10")


def test_graded_ndcg_uses_the_ratings_as_gains() -> None:
    gains = np.array([5.0, 3.0, 1.0, 4.0])
    assert _graded_ndcg(np.array([0.9, 0.5, 0.1, 0.7]), gains, 3) == pytest.approx(1.0)
    worst = _graded_ndcg(np.array([0.1, 0.5, 0.9, 0.2]), gains, 1)
    assert worst == pytest.approx(1.0 / 5.0)


def _events(pairs: list[tuple[str, str]]) -> list[Interaction]:
    return [Interaction(f"e{n}", u, i, "rate", 3.0, float(n)) for n, (u, i) in enumerate(pairs)]


def test_latest_users_split_holds_out_the_last_arrivals_entirely() -> None:
    events = _events([(f"u{k % 10}", f"i{k}") for k in range(100)])
    rest, held = split_latest_users(events, 0.2, minimum=2)
    assert sorted(held) == ["u8", "u9"]
    assert not {e.user_id for e in rest} & set(held)
    assert len(rest) + sum(len(h) for h in held.values()) == len(events)


def test_tuning_sees_training_users_only_and_keeps_the_best_value() -> None:
    seen: list[set[str]] = []

    def split(train):
        return split_latest_users(train, 0.5, minimum=1)

    def score(params, inner, validation):
        seen.append({e.user_id for e in inner} | set(validation))
        return -abs(params["alpha"] - 0.7)

    train = _events([(f"w{k % 30}", f"i{k % 7}") for k in range(300)])
    out = tuning.tune("itemknn", train, split, score)
    assert out["params"] == {"alpha": 0.7} and out["users"] == 15
    assert all(users <= {e.user_id for e in train} for users in seen)
    assert tuning.tune("popularity", train, split, score)["params"] == {}


def test_tuning_flags_a_best_value_at_an_end_of_its_grid_unless_it_is_a_limit() -> None:
    def split(train):
        return split_latest_users(train, 0.5, minimum=1)

    def best_at(param, target):
        return lambda params, inner, validation: -abs(math.log(params[param] / target))

    train = _events([(f"w{k % 30}", f"i{k % 7}") for k in range(300)])
    lams = tuning.grid("ease")[1]
    assert tuning.tune("ease", train, split, best_at("lam", 1e-3))["edge"] == "low"
    assert tuning.tune("ease", train, split, best_at("lam", lams[3]))["edge"] is None
    assert tuning.tune("itemknn", train, split, best_at("alpha", 0.1))["edge"] == "low"
    # α = 1 is where the asymmetric cosine's family ends, not where the grid stops short
    out = tuning.tune("itemknn", train, split, best_at("alpha", 3.0))
    assert out["params"] == {"alpha": 1.0} and out["edge"] is None
    # λ = inf (co-occurrence counts) is EASE's end: the best there is not an edge either
    rising = tuning.tune("ease", train, split, lambda p, i, v: -1.0 / p["lam"])
    assert rising["params"] == {"lam": math.inf} and rising["edge"] is None


def test_tuning_an_ordered_grid_stops_once_it_is_past_the_optimum() -> None:
    """SASRec's epochs: after ``TUNING_PATIENCE`` values in a row below the best, the rest of
    the grid is not scored (early stopping); the best is kept."""
    scored: list[int] = []

    def split(train):
        return split_latest_users(train, 0.5, minimum=1)

    def score(params, inner, validation):
        scored.append(params["epochs"])
        return -abs(params["epochs"] - 6)

    train = _events([(f"w{k % 30}", f"i{k % 7}") for k in range(300)])
    out = tuning.tune("sasrec", train, split, score)
    epochs = tuning.grid("sasrec")[1]
    assert out["params"] == {"epochs": 6} and out["edge"] is None
    assert scored == [e for e in epochs if e <= 12]  # 8 and 12 fell below 6: stop there
    assert set(out["scores"]) == {str(e) for e in scored}
    scored.clear()
    rising = tuning.tune("sasrec", train, split, lambda p, i, v: float(p["epochs"]))
    assert rising["edge"] == "high" and len(rising["scores"]) == len(epochs)


def test_matrix_table_names_baselines_tuned_at_an_end_of_their_grid() -> None:
    result = {"protocol": "few-shot", "seeds": [0], "seconds": 1.0, "default_learner": None,
              "results": {"log-a": {}, "log-b": {}},
              "runs": [{"log": "log-a", "seed": 0, "meta": {"tuning": {
                  "ease": {"params": {"lam": 1e6}, "edge": "high"},
                  "itemknn": {"params": {"alpha": 1.0}, "edge": None}}}},
                       {"log": "log-b", "seed": 0, "meta": {"tuning": {
                           "ease": {"params": {"lam": 500.0}, "edge": None}}}}]}
    table = render(result)
    a, b = table.split("## log-b")
    assert "Tuned at an end of its grid" in a and "ease {'lam': 1000000.0}" in a
    assert "itemknn" not in a and "Tuned at an end" not in b


def test_tuning_with_per_size_scores_also_chooses_a_value_per_size() -> None:
    def split(train):
        return split_latest_users(train, 0.5, minimum=1)

    def score(params, inner, validation):  # n=1 wants α=0.5, n=10 wants α=0.9
        a = params["alpha"]
        return {"1": -abs(a - 0.5), "10": -abs(a - 0.9)}

    train = _events([(f"w{k % 30}", f"i{k % 7}") for k in range(300)])
    out = tuning.tune("itemknn", train, split, score)
    assert out["per_key"] == {"1": {"alpha": 0.5}, "10": {"alpha": 0.9}}
    assert out["key_edges"] == {"1": "low"}  # 0.5 is the first value of the grid
    assert out["scores"]["0.7"] == pytest.approx(-0.2)  # overall: the mean over the sizes


def test_few_shot_serves_each_support_size_with_its_own_tuned_value(small_log, monkeypatch
                                                                   ) -> None:
    """A baseline whose tuning chose different values per support size is fitted once per
    value, and each size's figures are those of its own value's fit."""
    import evaluation.replay as replay_module

    def tuned_as(per_key, overall):
        def fake(name, *args, **kwargs):
            return {"params": {"alpha": overall}, "per_key": per_key, "scores": {}, "users": 9}
        return fake

    def run(per_key, overall):
        monkeypatch.setattr(replay_module, "tune_baseline", tuned_as(per_key, overall))
        return replay(small_log, protocol="few-shot", models=["itemknn"], support_sizes=(1, 3),
                      k_list=(10,), progress=False)

    mixed = run({"1": {"alpha": 0.5}, "3": {"alpha": 0.9}}, 0.9)
    assert mixed["meta"]["models"]["itemknn"]["per_support_size"] == {
        "1": {"alpha": 0.5}, "3": {"alpha": 0.9}}
    low, high = run({}, 0.5), run({}, 0.9)
    assert low["results"]["itemknn"]["1"]["ndcg@10"] != high["results"]["itemknn"]["1"]["ndcg@10"]
    for n, alone in (("1", low), ("3", high)):
        assert mixed["results"]["itemknn"][n] == pytest.approx(alone["results"]["itemknn"][n])
        assert list(mixed["_per_user"]["itemknn"][n]["users"]) == list(
            alone["_per_user"]["itemknn"][n]["users"])
        np.testing.assert_allclose(mixed["_per_user"]["itemknn"][n]["ndcg@10"],
                                   alone["_per_user"]["itemknn"][n]["ndcg@10"])
    assert list(mixed["results"]["itemknn"]) == ["1", "3"]
    assert mixed["meta"]["first_recommendation_success"]["itemknn"] == pytest.approx(
        low["results"]["itemknn"]["1"]["hr@10"])


@pytest.fixture(scope="module")
def small_log():
    return generate(120, 150, 4, (8, 25), seed=3)


def test_query_rank_protocol_reports_the_literature_metrics(small_log) -> None:
    report = replay(small_log, protocol="query-rank", models=["popularity", "itemknn"],
                    support_sizes=(1, 3), progress=False)
    for model in ("popularity", "itemknn"):
        rows = report["results"][model]
        assert set(rows) == {"1", "3", "all"}
        for row in rows.values():
            assert {"mae", "rmse", "ndcg@1", "ndcg@3", "users"} <= set(row)
            assert 0 < row["ndcg@3"] <= 1 and math.isfinite(row["mae"])
    assert report["meta"]["tuning"]["itemknn"]["params"]  # tuned on training users


def test_matrix_command_writes_tables_plot_and_intervals(small_log, tmp_path: Path) -> None:
    log_path = tmp_path / "log.jsonl"
    log_path.write_text("\n".join(json.dumps(
        {"user_id": e.user_id, "item_id": e.item_id, "value": e.value, "ts": e.ts,
         "kind": e.kind}) for e in small_log.events))
    result = run_matrix([str(log_path)], seeds=[0, 1], models=["popularity", "itemknn",
                                                               "fomaml"],
                        out_dir=tmp_path / "m", support_sizes=(1, 3), train_steps=20, jobs=2)
    table = (tmp_path / "m" / "table.md").read_text()
    assert "fomaml / best" in table and "best baseline" in table
    assert (tmp_path / "m" / "ndcg.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "m" / "results.json").read_text())
    assert saved["logs"] == [f"{tmp_path.name}/log"]
    per_key = saved["results"][f"{tmp_path.name}/log"]
    assert set(per_key) == {"1", "3"}
    assert per_key["3"]["best_baseline"] in ("popularity", "itemknn")
    assert "vs_best" in per_key["3"]["models"]["fomaml"]
    # seed-free baselines ran once per log, the learner once per seed
    assert [r["models"] for r in result["runs"]] == [["popularity", "itemknn", "fomaml"],
                                                      ["fomaml"]]
