"""MovieLens latest-small (optional data): readers and a small few-shot replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.replay import ReplayLog, replay
from streams.sources import items_beside, read_items, read_log

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-latest-small"


@pytest.mark.data
def test_ml_latest_small_few_shot_subsample() -> None:
    if not (DATA / "ratings.csv").is_file():
        pytest.skip(f"MovieLens latest-small not found at {DATA} (optional dataset)")
    events = read_log(DATA / "ratings.csv").events
    users = sorted({e.user_id for e in events}, key=int)[::4]  # every 4th user: fast
    keep = set(users)
    sub = [e for e in events if e.user_id in keep]
    items = read_items(items_beside(DATA / "ratings.csv")).items
    report = replay(
        ReplayLog(sub, items, {}, "ml-latest-small/4"),
        protocol="few-shot",
        models=["random", "popularity", "itemknn"],
        support_sizes=(1, 5),
        seed=0,
        progress=False,
    )
    res = report["results"]
    assert report["meta"]["new_users"] >= 10
    assert res["popularity"]["5"]["ndcg@10"] > res["random"]["5"]["ndcg@10"]
    assert res["itemknn"]["5"]["ndcg@10"] > res["random"]["5"]["ndcg@10"]
    assert 0.3 < res["popularity"]["5"]["mae"] < 1.5
