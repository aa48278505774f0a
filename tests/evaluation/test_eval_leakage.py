"""No leakage: a new user's query (everything after the support) never reaches training, the
support set or any recommendation made before it.

The query events of every new user are *poisoned* (item and rating replaced) and the replay is
run again: the training inputs, the support sets and every recommendation made from a support
that ends before the poisoned events must be byte-identical; recommendations made after support
that includes poisoned events must change (which shows the poison is visible at all).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from evaluation.replay import ReplayLog, as_replay_log, replay, split_new_users
from evaluation.synthetic import generate

MODELS = ["popularity", "itemknn", "ease", "river-funkmf", "fomaml", "hybrid"]
CUT = 3  # events kept intact per new user; the rest is poisoned


def poisoned(log: ReplayLog) -> ReplayLog:
    _, new = split_new_users(log.events, 0.2)
    victims = {e.event_id for h in new.values() for e in h[CUT:]}
    events = [
        replace(e, item_id=f"poison-{e.event_id}", value=0.5) if e.event_id in victims else e
        for e in log.events
    ]
    return ReplayLog(events, log.items, log.profiles, log.name)


def run(log: ReplayLog) -> tuple[dict[str, Any], dict[str, Any]]:
    trace: dict[str, Any] = {}
    report = replay(
        log,
        protocol="few-shot",
        models=MODELS,
        support_sizes=(1, CUT, 5),
        seed=0,
        train_steps=5,
        progress=False,
        trace=trace,
    )
    return report, trace


@pytest.fixture(scope="module")
def runs() -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    clean = as_replay_log(generate(150, 200, 4, (6, 20), seed=11))
    return run(clean), run(poisoned(clean))


def dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def test_training_inputs_identical(runs: Any) -> None:
    (clean_report, clean), (dirty_report, dirty) = runs
    for model in MODELS:
        assert clean[model]["train_digest"] == dirty[model]["train_digest"]
    # baselines are tuned on training users only: the same choices with the queries poisoned
    def choices(report: dict) -> dict:
        return {m: (t["params"], t["scores"]) for m, t in report["meta"]["tuning"].items()}

    assert choices(clean_report) == choices(dirty_report)
    assert clean_report["meta"]["tuning"]["itemknn"]["params"]


def test_supports_and_earlier_recommendations_identical(runs: Any) -> None:
    (_, clean), (_, dirty) = runs
    for model in MODELS:
        for n in ("1", str(CUT)):
            assert dump(clean[model]["supports"][n]) == dump(dirty[model]["supports"][n])
            assert dump(clean[model]["recommendations"][n]) == dump(
                dirty[model]["recommendations"][n]
            ), f"{model} n={n}: a recommendation depends on the user's future"
        recs = dirty[model]["recommendations"]
        assert not any(i.startswith("poison-") for r in recs[str(CUT)].values() for i in r)


def test_poison_is_visible_after_the_cut(runs: Any) -> None:
    (clean_report, clean), (dirty_report, dirty) = runs
    # the query changed, so the scores of n <= CUT change ...
    assert (
        clean_report["results"]["itemknn"][str(CUT)] != dirty_report["results"]["itemknn"][str(CUT)]
    )
    # ... and supports that include poisoned events give different recommendations
    assert dump(clean["itemknn"]["recommendations"]["5"]) != dump(
        dirty["itemknn"]["recommendations"]["5"]
    )
