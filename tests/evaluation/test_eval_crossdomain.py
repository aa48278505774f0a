"""Cross-domain evaluation: no leakage of test users, episode construction, the side-by-side run
on a planted two-domain log, and the ``kindling transfer`` command."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

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


def test_no_test_user_event_reaches_training(monkeypatch) -> None:
    seen: list[Interaction] = []
    real = cd.histories_from_events

    def spy(events, *args, **kwargs):
        seen.extend(events)
        return real(events, *args, **kwargs)

    monkeypatch.setattr(cd, "histories_from_events", spy)
    events = planted(60)
    results = cd.run_crossdomain(events, source="books", target="movies",
                                 models=["cd-target", "emcdr"], steps=2, seed=5)
    split = cd.split_users(events, "books", "movies", seed=5)
    assert seen and not {e.user_id for e in seen} & set(split.test_events)
    assert results["protocol"]["test_users"] == len(split.test_events)


def test_side_by_side_run_and_transfer_wins_on_planted_log(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    results = cd.run_crossdomain(planted(), source="books", target="movies",
                                 models=["cd-target", "emcdr", "cd-shared"], steps=80, seed=0)
    rows = {(r["model"], r["k"]): r for r in results["rows"]}
    assert set(rows) == {(m, k) for m in ("popularity", "cd-target", "emcdr", "cd-shared")
                         for k in (0, 1, 3)}
    for r in rows.values():
        assert 0.0 <= r["ndcg@10"] <= 1.0 and math.isfinite(r["mae"]) and r["users"] == 30
    for name in ("emcdr", "cd-shared"):
        assert rows[(name, 0)]["ndcg@10"] > rows[("cd-target", 0)]["ndcg@10"] + 0.2
    out = cd.write_results(results, tmp_path / "cd")
    stored = json.loads((out / "results.json").read_text())
    assert stored["rows"][0]["model"] == "popularity"
    assert "| emcdr | 0 |" in (out / "table.md").read_text()


def test_transfer_command_on_a_generic_log(tmp_path: Path, capsys) -> None:
    from workers.cli import main

    log = tmp_path / "log.csv"
    lines = ["user_id,item_id,value,ts,domain"]
    lines += [f"{e.user_id},{e.item_id},{e.value},{e.ts},{e.domain}" for e in planted(60)]
    log.write_text("\n".join(lines) + "\n")
    code = main(["transfer", str(log), "--models", "cd-target,emcdr", "--steps", "3",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert '"source": "books"' in printed and "| emcdr | 3 |" in printed
    assert (tmp_path / "out" / "results.json").is_file()
