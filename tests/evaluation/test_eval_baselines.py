"""Baseline sanity: popularity, item-kNN co-occurrence, river MF vectorisation, forks."""

from __future__ import annotations

import pytest

from evaluation import baselines
from schemas import Interaction


def ev(n: int, user: str, item: str, value: float = 4.0) -> Interaction:
    return Interaction(f"t:{n}", user, item, "rate", value, float(n))


def log_of(pairs: list[tuple[str, str]]) -> list[Interaction]:
    return [ev(n, u, i) for n, (u, i) in enumerate(pairs)]


def test_popularity_ranks_popular_first_and_excludes() -> None:
    events = log_of([("u1", "a"), ("u2", "a"), ("u3", "a"), ("u1", "b"), ("u2", "b"), ("u1", "c")])
    model = baselines.create("popularity")
    model.fit(events, catalog=["d"])
    assert model.recommend("new", 4) == ["a", "b", "c", "d"]
    assert model.recommend("new", 2, exclude={"a"}) == ["b", "c"]
    assert model.recommend("new", 2, candidates=["c", "d"]) == ["c", "d"]


def test_recent_popularity_forgets_old_events() -> None:
    events = log_of([("u1", "a")] * 5 + [("u2", "b"), ("u3", "b")])
    model = baselines.create("popularity-recent", window=3)
    model.fit(events)
    assert model.recommend("x", 1) == ["b"]
    assert baselines.create("popularity").recommend("x", 1) == []


def test_itemknn_recovers_cooccurrence() -> None:
    # a and b always co-occur; c and d always co-occur; e is popular but unrelated
    pairs = []
    for u in range(6):
        pairs += [(f"g{u}", "a"), (f"g{u}", "b")]
        pairs += [(f"h{u}", "c"), (f"h{u}", "d")]
    pairs += [(f"p{u}", "e") for u in range(20)]
    model = baselines.create("itemknn")
    model.fit(log_of(pairs))
    fork = model.fork()
    fork.observe(ev(999, "new", "c"))
    assert fork.recommend("new", 1, exclude={"c"}) == ["d"]
    assert model.recommend("new", 1) == ["e"]  # the fork's event never reached the parent
    # online co-occurrence: after observing, x and y become neighbours
    fork.observe(ev(1000, "z1", "x"))
    fork.observe(ev(1001, "z1", "y"))
    fork.observe(ev(1002, "z2", "x"))
    assert fork.recommend("z2", 1, exclude={"x"}) == ["y"]


@pytest.mark.parametrize("name", ["river-biasedmf", "river-funkmf"])
def test_river_vectorised_scores_match_predict_one(name: str) -> None:
    events = [ev(n, f"u{n % 7}", f"i{n % 11}", 1.0 + (n % 5)) for n in range(200)]
    model = baselines.create(name, seed=3)
    model.fit(events)
    scores = model.scores("u3")
    for item in ("i0", "i4", "i10"):
        expected = model.model.predict_one("u3", item)
        assert scores[model.index[item]] == pytest.approx(expected, rel=1e-9)
        assert model.predict_rating("u3", item) == pytest.approx(expected, rel=1e-9)
    fork = model.fork()
    before = model.scores("u3").copy()
    for n in range(20):
        fork.observe(ev(500 + n, "u3", "i4", 5.0))
    assert (model.scores("u3") == before).all()
    assert not (fork.scores("u3") == before).all()


def test_random_is_seeded_and_registry_complete() -> None:
    events = log_of([(f"u{i}", f"i{i}") for i in range(50)])
    a, b = baselines.create("random", seed=1), baselines.create("random", seed=1)
    a.fit(events)
    b.fit(events)
    assert a.recommend("u", 10) == b.recommend("u", 10)
    assert set(baselines.REGISTRY) == {
        "random",
        "popularity",
        "popularity-recent",
        "river-biasedmf",
        "river-funkmf",
        "itemknn",
        "ease",
        "sasrec",
    }
    assert all(isinstance(baselines.create(n), baselines.Ranker) for n in baselines.REGISTRY)
    with pytest.raises(KeyError):
        baselines.create("nope")


def test_itemknn_alpha_trades_similarity_for_popularity() -> None:
    # "a" co-occurs once with the rare "r" and with the popular "p" in 3 of p's 10 users
    pairs = [("u0", "a"), ("u0", "r")] + [(f"v{u}", "p") for u in range(10)]
    pairs += [(f"v{u}", "a") for u in range(3)]
    cosine = baselines.create("itemknn", alpha=0.5)
    cosine.fit(log_of(pairs))
    conditional = baselines.create("itemknn", alpha=0.95)
    conditional.fit(log_of(pairs))
    for model in (cosine, conditional):
        model.observe(ev(999, "new", "a"))
    assert cosine.recommend("new", 1, exclude={"a"}) == ["r"]
    assert conditional.recommend("new", 1, exclude={"a"}) == ["p"]


def test_ease_scores_the_users_items_weights_and_never_refits_online() -> None:
    pairs = []
    for u in range(8):
        pairs += [(f"g{u}", "a"), (f"g{u}", "b"), (f"h{u}", "c"), (f"h{u}", "d")]
    pairs += [(f"p{u}", "e") for u in range(12)]
    model = baselines.create("ease", lam=1.0)
    model.fit(log_of(pairs))
    fork = model.fork()
    fork.observe(ev(999, "new", "c"))
    assert fork.recommend("new", 1, exclude={"c"}) == ["d"]
    weights = model.weights.copy()
    assert model.recommend("new", 1) == ["e"]  # no history: popularity
    assert (model.weights == weights).all()
    assert baselines.REGISTRY["ease"].TUNING == {"lam": baselines.EASERanker.TUNING["lam"]}


def test_sasrec_ranks_the_successor_and_falls_back_to_popularity() -> None:
    cycle = ["a", "b", "c", "d", "e"]
    events, n = [], 0
    for u in range(60):  # every user walks the cycle from some item, for 3-8 steps
        for step in range(3 + u % 6):
            events.append(ev(n, f"u{u}", cycle[(u + step) % 5]))
            n += 1
    model = baselines.create("sasrec", seed=0, epochs=30, dim=16, max_len=6)
    model.fit(events)
    fork = model.fork()
    fork.observe(ev(n, "new", "a"))
    fork.observe(ev(n + 1, "new", "b"))
    assert fork.recommend("new", 1, exclude={"a", "b"}) == ["c"]
    counts = {i: sum(e.item_id == i for e in events) for i in cycle}
    assert model.recommend("other", 1) == [max(cycle, key=lambda i: counts[i])]
