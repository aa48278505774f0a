"""The synthetic generator: deterministic, fast, with the planted structure it promises."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from evaluation.synthetic import generate


def test_deterministic_given_seed() -> None:
    a, b = generate(80, 100, 4, (3, 10), seed=7), generate(80, 100, 4, (3, 10), seed=7)
    assert a.events == b.events and a.items == b.items and a.users == b.users
    assert generate(80, 100, 4, (3, 10), seed=8).events != a.events


def test_fast_and_well_formed() -> None:
    t0 = time.perf_counter()
    log = generate(500, 800, 8, (10, 30), seed=0)
    assert time.perf_counter() - t0 < 1.0
    assert len(log.events) >= 10_000 * 0.9
    ts = [e.ts for e in log.events]
    assert ts == sorted(ts)
    assert all(e.kind == "rate" and 0.5 <= e.value <= 5.0 for e in log.events)
    per_user = Counter((e.user_id, e.item_id) for e in log.events)
    assert max(per_user.values()) == 1  # no repeated item per user
    release = log.item_release
    assert all(e.ts >= release[e.item_id] for e in log.events)


def test_planted_structure() -> None:
    log = generate(400, 600, 6, (10, 30), seed=1)
    ic, uc = log.item_cluster, log.user_cluster
    inside = np.array([ic[e.item_id] == uc[e.user_id] for e in log.events])
    assert inside.mean() > 0.7
    values = np.array([e.value for e in log.events])
    assert values[inside].mean() > values[~inside].mean() + 1.0
    # content tokens predict the cluster: the majority genre of each cluster is mostly its own
    by_cluster: dict[int, Counter] = {}
    for item in log.items:
        by_cluster.setdefault(ic[item.item_id], Counter()).update(item.attributes["genres"])
    tops = [c.most_common(1)[0][0] for c in by_cluster.values()]
    assert len(set(tops)) == len(tops)
    # user attributes predict the cluster
    by_attr: dict[tuple, Counter] = {}
    for user in log.users:
        key = (user.attributes["age_band"], user.attributes["region"])
        by_attr.setdefault(key, Counter())[uc[user.user_id]] += 1
    agree = sum(c.most_common(1)[0][1] for c in by_attr.values()) / len(log.users)
    assert agree > 0.6
    # later users arrive later
    first = {}
    for e in log.events:
        first.setdefault(e.user_id, e.ts)
    order = sorted(first, key=first.get)
    assert order[:50] == sorted(order[:50])
