"""Cross-domain evaluation: no leakage of test users, episode construction, the side-by-side run
on a planted two-domain log, and the ``kindling transfer`` command."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluation.crossdomain as cd
from engine.settings import Settings
from schemas import Interaction

GROUPS, PER_GROUP = 4, 12


def planted(n_users: int = 150, seed: int = 0) -> list[Interaction]:
    """Group-g users rate 8 group-g books and 7 group-g movies 4-5 stars, times interleaved."""
    rng = random.Random(seed)
    events, t = [], 0.0
    for u in range(n_users):
        g = u % GROUPS
        picks = [("books", f"b{g}-{j}") for j in rng.sample(range(PER_GROUP), 8)]
        picks += [("movies", f"m{g}-{j}") for j in rng.sample(range(PER_GROUP), 7)]
        rng.shuffle(picks)
        for domain, item in picks:
            t += 1.0
            events.append(Interaction(f"e{len(events)}", f"u{u}", item, "rate",
                                      float(rng.choice([4, 5])), t, domain))
    return events


def test_split_holds_out_every_event_of_test_users() -> None:
    events = planted()
    split = cd.split_users(events, "books", "movies", test_fraction=0.2, seed=3)
    test_users = set(split.test_events)
    assert len(test_users) == 30
    assert not {e.user_id for e in split.train_events} & test_users
    assert sum(len(v) for v in split.test_events.values()) + len(split.train_events) == len(events)
    for evs in split.test_events.values():
        assert {e.domain for e in evs} == {"books", "movies"}


@pytest.mark.parametrize("k", [0, 1, 3])
def test_episodes_support_has_exactly_k_target_events_and_query_the_rest(k: int) -> None:
    events = planted(40)
    split = cd.split_users(events, "books", "movies", test_fraction=0.5)
    settings = Settings(support_capacity=6)
    catalog = cd._catalog(events, [], settings)
    ep = cd.test_episodes(split, catalog, settings, k)
    is_movie = torch.tensor([d == "movies" for d in catalog.domains])
    for i, user in enumerate(ep.users):
        rows = ep.support.items[i][ep.support.mask[i]]
        assert int(is_movie[rows].sum()) == k
        assert len(rows) == 6  # capacity: last 6 - k books + first k movies
        movies = [catalog.index[e.item_id] for e in split.test_events[user]
                  if e.domain == "movies"]
        assert rows[~is_movie[rows]].numel() == 6 - k
        assert rows[is_movie[rows]].tolist() == movies[:k]
        assert ep.query[i].tolist() == movies[k:]


def test_kfold_test_users_partition_the_eligible_users() -> None:
    events = planted(62)
    splits = cd.kfold_splits(events, "books", "movies", folds=5, seed=3)
    tested = [set(sp.test_events) for sp in splits]
    assert sorted(len(t) for t in tested) == [12, 12, 12, 13, 13]
    assert set().union(*tested) == set(cd.eligible_users(events, "books", "movies"))
    for sp, test in zip(splits, tested, strict=True):
        assert not {e.user_id for e in sp.train_events} & test
        assert len(sp.train_events) + sum(map(len, sp.test_events.values())) == len(events)
    other = cd.kfold_splits(events, "books", "movies", folds=5, seed=4)
    assert [set(sp.test_events) for sp in other] != tested  # another seed, another deal
    with pytest.raises(ValueError, match="fewer than 5 folds"):
        cd.kfold_splits(planted(4), "books", "movies", folds=5)


def test_paired_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(400)
    same = cd.paired_ratio(base, base, n_boot=500)
    assert same == (1.0, 1.0, 1.0)  # paired: identical rows never differ
    better = cd.paired_ratio(base * 1.2, base, n_boot=500)
    assert better[0] == pytest.approx(1.2) and better[1] == pytest.approx(1.2)
    noisy = cd.paired_ratio(base + rng.normal(0, 0.3, 400), base, n_boot=500)
    assert noisy[1] < noisy[0] < noisy[2]
    unpaired_width = np.quantile([rng.choice(base, 400).mean() / rng.choice(base, 400).mean()
                                  for _ in range(500)], [0.025, 0.975])
    near = cd.paired_ratio(base * 1.01 + rng.normal(0, 0.01, 400), base, n_boot=500)
    assert near[2] - near[1] < (unpaired_width[1] - unpaired_width[0]) / 5


def test_no_test_user_event_reaches_training(monkeypatch) -> None:
    seen: list[list[Interaction]] = []
    real = cd.histories_from_events

    def spy(events, *args, **kwargs):
        seen.append(list(events))
        return real(events, *args, **kwargs)

    monkeypatch.setattr(cd, "histories_from_events", spy)
    events = planted(60)
    results = cd.run_crossdomain(events, source="books", target="movies",
                                 models=["cd-target", "emcdr", "cd-graph"], steps=2, seeds=[5],
                                 folds=3, shots=[0, 1], n_boot=50)
    splits = cd.kfold_splits(events, "books", "movies", folds=3, seed=5)
    assert len(seen) == 3
    for trained_on, split in zip(seen, splits, strict=True):
        assert trained_on and not {e.user_id for e in trained_on} & set(split.test_events)
    assert results["protocol"]["test_users"] == 60
    assert {r["users"] for r in results["rows"]} == {60}


def test_side_by_side_run_and_transfer_wins_on_planted_log(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    results = cd.run_crossdomain(planted(), source="books", target="movies",
                                 models=["popularity", "itemknn", "cd-target", "emcdr",
                                         "cd-graph"],
                                 steps=80, seeds=[0], folds=3, shots=[0, 1, 3], n_boot=200)
    rows = {(r["model"], r["k"]): r for r in results["rows"]}
    assert set(rows) == {(m, k) for m in ("popularity", "itemknn", "cd-target", "emcdr",
                                          "cd-graph") for k in (0, 1, 3)}
    for r in rows.values():
        assert 0.0 <= r["ndcg@10"] <= 1.0 and math.isfinite(r["mae"]) and r["users"] == 150
    # item-kNN without target events is popularity
    assert rows[("itemknn", 0)]["per_user_ndcg@10"] == rows[("popularity", 0)]["per_user_ndcg@10"]
    for name in ("emcdr", "cd-graph"):
        ratio, lo, hi = rows[(name, 0)]["ndcg_vs_cd-target"]
        assert lo > 1.5 and lo <= ratio <= hi
        assert rows[(name, 0)]["ndcg_vs_popularity"][1] > 1.5
    out = cd.write_results(results, tmp_path / "cd")
    stored = json.loads((out / "results.json").read_text())
    assert stored["rows"][0]["model"] == "popularity"
    text = (out / "table.md").read_text()
    assert "| cd-graph | 0 |" in text and "× cd-target" in text


def test_diagnostics_show_the_learned_models_fit(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    results = cd.run_crossdomain(planted(90), source="books", target="movies",
                                 models=["popularity", "cd-shared", "cd-graph"], steps=40,
                                 seeds=[0], folds=3, shots=[0], n_boot=50, diagnostics=True)
    diag = results["diagnostics"]
    assert set(diag) == {"cd-shared"}  # only learned models have a bias and a user term
    d = diag["cd-shared"]
    assert set(d) == {"test_ndcg", "train_users_ndcg", "bias_only_ndcg", "user_term_over_bias"}
    assert d["user_term_over_bias"] > 0 and 0 <= d["bias_only_ndcg"] <= 1
    assert "NDCG@10 training users" in cd.diagnostics_table(results)


def test_transfer_command_on_a_generic_log(tmp_path: Path, capsys) -> None:
    from workers.cli import main

    log = tmp_path / "log.csv"
    lines = ["user_id,item_id,value,ts,domain"]
    lines += [f"{e.user_id},{e.item_id},{e.value},{e.ts},{e.domain}" for e in planted(60)]
    log.write_text("\n".join(lines) + "\n")
    code = main(["transfer", str(log), "--models", "popularity,cd-target,cd-graph",
                 "--steps", "3", "--folds", "3", "--shots", "0,3", "--bootstrap", "50",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert '"source": "books"' in printed and "| cd-graph | 3 |" in printed
    assert (tmp_path / "out" / "results.json").is_file()


def test_transfer_command_reads_douban_rating_files(tmp_path: Path, capsys) -> None:
    from workers.cli import main

    rows = {"book": [], "music": []}
    for e in planted(45):
        domain = "book" if e.domain == "books" else "music"
        rows[domain].append(f"{e.user_id[1:]}\t{e.item_id}\t{int(e.value)}")
    for domain, lines in rows.items():
        (tmp_path / f"{domain}_ratings.dat").write_text("\n".join(lines) + "\n")
    code = main(["transfer", str(tmp_path), "--source", "music", "--models",
                 "popularity,cd-graph", "--folds", "3", "--shots", "0", "--bootstrap", "50",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert '"source": "music", "target": "book"' in printed and "| cd-graph | 0 |" in printed
