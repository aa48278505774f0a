"""The family-ceiling diagnostic scores what the replay scores, on a planted log."""

from __future__ import annotations

import numpy as np

from ops.family_ceiling import Matrix, knn, ndcg_at_10, popularity, rated, transition
from schemas import Interaction


def _log() -> tuple[list[Interaction], dict[str, list[Interaction]]]:
    """Two taste groups: items 0-4 are read together, items 5-9 together, and 5-9 are more
    popular overall. A new user of group A is known by one A item."""
    events, t = [], 0.0
    for u in range(40):
        group = range(0, 5) if u < 20 else range(5, 10)
        for i in group:
            t += 1
            events.append(Interaction(f"e{t}", f"u{u}", f"i{i}", "view", 1.0, t))
    for u in range(40, 60):  # extra popularity for the other group
        for i in range(5, 10):
            t += 1
            events.append(Interaction(f"e{t}", f"u{u}", f"i{i}", "view", 1.0, t))
    new = {f"n{k}": [Interaction(f"n{k}-{j}", f"n{k}", f"i{i}", "view", 1.0, 1e4 + j)
                     for j, i in enumerate((k % 5, (k + 1) % 5, (k + 2) % 5))]
           for k in range(5)}
    return events, new


def test_cooccurrence_finds_the_taste_group_that_popularity_misses() -> None:
    train, new = _log()
    d = Matrix(train, new)
    together = ndcg_at_10(d, knn(d, 0.0, 0.0, 0.0), 1)
    popular = ndcg_at_10(d, popularity(d), 1)
    # the four other items of the group tie first under co-occurrence: the two later items are
    # at worst 3rd and 4th, NDCG (1/log2 4 + 1/log2 5) / (1 + 1/log2 3) = 0.571
    assert together >= 0.57
    # popularity puts the other group's five items first: the later items are 6th-9th at best,
    # NDCG at most (1/log2 7 + 1/log2 8) / (1 + 1/log2 3) = 0.423
    assert popular <= 0.43


def test_support_items_are_never_ranked_and_unknown_items_count_as_misses() -> None:
    train, new = _log()
    new["x"] = [Interaction("x0", "x", "i0", "view", 1.0, 2e4),
                Interaction("x1", "x", "unseen", "view", 1.0, 2e4 + 1)]
    # a scorer that prefers the support item: the metric masks it, the group's items follow
    d = Matrix(train, {"y": new["n0"]})
    def loves_support(supports: list[list[int]], ratings: list[list[float]]) -> np.ndarray:
        s = knn(d, 0.0, 0.0, 0.0)(supports, ratings)
        s[0, supports[0]] = 1e9
        return s
    assert ndcg_at_10(d, loves_support, 1) == 1.0
    # user x's only later item is unknown to training: NDCG 0, not skipped
    only_x = Matrix(train, {"x": new["x"]})
    assert ndcg_at_10(only_x, knn(only_x, 0.0, 0.0, 0.0), 1) == 0.0


def test_transfer_ceiling_finds_the_planted_bridge(tmp_path) -> None:
    """Readers of books 1-3 listen to albums 1-3, readers of books 4-6 to albums 4-6; albums
    4-6 are more popular. Target counts rank 4-6 first for everyone; the cross-domain
    co-occurrence ranks each user's own group first."""
    from ops.family_ceiling import transfer_ceiling

    books, music = [], []
    for u in range(60):
        group = (1, 2, 3) if u % 2 == 0 else (4, 5, 6)
        books += [f"{u}\t{b}\t4" for b in group]
        music += [f"{u}\t{m}\t4" for m in group]
    for u in range(60, 90):  # music-only users make albums 4-6 the popular ones
        music += [f"{u}\t{m}\t4" for m in (4, 5, 6)]
    (tmp_path / "book_ratings.dat").write_text("\n".join(books) + "\n")
    (tmp_path / "music_ratings.dat").write_text("\n".join(music) + "\n")
    r = transfer_ceiling(str(tmp_path), "book", "music")
    rows = r["rows"]
    assert r["test_users"] == 60
    # half the test users are group A: counts put their albums 4th-6th
    assert rows["pop"]["ndcg"] < 0.8
    assert rows["x a=0.0 b=0.0 u=0.0"]["ndcg"] == 1.0
    assert rows["uknn K=20"]["ndcg"] == 1.0
    # the least-squares map from books to albums learns the same bridge
    assert rows["ridge λ=10"]["ndcg"] == 1.0


def test_transitions_find_what_comes_next_where_cooccurrence_sees_nothing() -> None:
    """Everyone reads the ten items in the same cyclic order (starting anywhere), so every pair
    co-occurs equally; only the order says that i+1, i+2, i+3 follow i."""
    events, t = [], 0.0
    for u in range(30):
        for step in range(10):
            t += 1
            events.append(Interaction(f"e{t}", f"u{u}", f"i{(u + step) % 10}", "view", 1.0, t))
    new = {f"n{k}": [Interaction(f"n{k}-{g}", f"n{k}", f"i{(k + g) % 10}", "view", 1.0, 1e4 + g)
                     for g in range(4)] for k in range(10)}
    d = Matrix(events, new)
    assert ndcg_at_10(d, transition(d, 3, False), 1) == 1.0
    # co-occurrence is flat here: the three later items land anywhere among the nine
    assert ndcg_at_10(d, knn(d, 0.0, 0.0, 0.0), 1) < 0.9


def test_rating_weights_tell_a_liked_group_from_a_disliked_one() -> None:
    """A new user rated an A item 5 and a B item 1, then reads A items: rating-weighted
    co-occurrence ranks group A first; flat co-occurrence ties the groups and the more popular
    B wins the ties."""
    train, _ = _log()
    history = [Interaction("r0", "r", "i0", "rate", 5.0, 1e4),
               Interaction("r1", "r", "i5", "rate", 1.0, 1e4 + 1)]
    history += [Interaction(f"r{j}", "r", f"i{j}", "view", 1.0, 1e4 + 1 + j) for j in (1, 2, 3, 4)]
    d = Matrix(train, {"r": history})
    assert ndcg_at_10(d, rated(d, lambda r: r - 3.0), 2) == 1.0
    assert ndcg_at_10(d, knn(d, 0.0, 0.0, 0.0), 2) < 0.8
