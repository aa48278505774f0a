"""How far the co-occurrence and popularity family can go on a log's new users: a diagnostic.

``python -m ops.family_ceiling LOG [LOG ...] [--out FILE]`` runs the few-shot protocol's split
(:func:`evaluation.replay.split_new_users`, new users = first event in the last 20% of the time
span; validation = the latest 20% of the training users, :func:`split_latest_users`) and scores
NDCG@10 after n = 1, 3, 5, 10 events for a grid of rankers built only from the binary training
matrix ``X`` (users x items):

* ``pop``: item counts; ``poprec W``: counts over the last ``W`` training events;
* ``knn a b u``: ``s_j = Σ_{i∈S} C_ij · n_i^-a / n_j^b`` with ``C = Xᵀ diag(deg_u^-u) X``
  (``a = b = u = 0``: the co-occurrence counts, EASE's λ = ∞ limit; ``a = 0.5, b = 0``: the
  baselines' item-kNN family; ``b > 0`` penalises popular candidates as RP3β does; ``u > 0``
  discounts heavy users);
* ``mix a w``: ``z(knn a 0 0) + w · z(pop)`` per user (standardised over the catalog);
* ``trans w dir``: what follows what, ``s_j = Σ_{i∈S} T_ij`` where ``T_ij`` sums ``1/g`` over the
  training users' histories in which ``j`` comes ``g ≤ w`` events after ``i`` (``fwd``) or
  before or after it (``both``); ``mix trans w``: ``z(trans w both) + v · z(poprec 20000)``
  (the hybrid's transition channel and its popularity channel, as a family of their own);
* ``rated f``: ``knn 0 0 0`` with each support event weighted by ``f(rating)`` instead of 1
  (``r``, ``r - 3``, ``[r ≥ 4]``): does the user's rating carry what co-occurrence misses?

It prints each ranker's NDCG@10 on the validation users and on the new users, and per n the best
ranker *on the new users themselves*. That maximum is chosen on the test users, so it is an upper
bound for any way of choosing within the family (a tuned baseline, the hybrid's item-item
candidates and gates), not a method: if it does not clear a target, choosing better within the
family cannot. Support items are excluded from the ranking, as in the replay.

``python -m ops.family_ceiling --transfer book:music DOUBAN_FOLDER`` asks the same of cross-domain
cold start at 0 target events (``kindling transfer``'s protocol: every user active in both
domains is a test user once, 5 folds, the support is their last 20 source events, the query all
their target events, every target item ranked): target item counts; counts over the users active
in both domains; ``x a b u``: ``s_t = Σ_{s∈S} C_st n_s^-a / n_t^b`` with the cross-domain
co-occurrence ``C = X_sourceᵀ diag(deg_u^-u) X_target``; ``mix a w``:
``z(x a 0 0.5) + w·z(counts)``; ``uknn K``: the target items of the K users most similar by
source items (cosine); ``ridge λ``: the least-squares linear map from a user's source items to
their target items, fitted on the training users active in both domains (ridge λ, rows
normalised; the dual form, one ``U x U`` solve), alone and ``+ w`` target counts (standardised).
It is what the learned mappings (EMCDR's and PTUPCDR's) approximate, solved exactly. Ratios are
to target counts, mean NDCG@10 over all test users (what ``kindling transfer``'s ratios are).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

from evaluation.metrics import ranking_metrics
from evaluation.replay import by_user, load_log, log_name, split_latest_users, split_new_users
from schemas import Interaction

SIZES = (1, 3, 5, 10)
#: (supports as catalog rows, the same events' ratings) -> scores (users x items)
Scorer = Callable[[list[list[int]], list[list[float]]], np.ndarray]


class Matrix:
    """The binary training matrix and the users to score (their histories' item ids)."""

    def __init__(self, train: Sequence[Interaction], users: dict[str, list[Interaction]]) -> None:
        self.items = sorted({e.item_id for e in train})
        self.index = index = {item: i for i, item in enumerate(self.items)}
        user_ids = sorted({e.user_id for e in train})
        uindex = {u: i for i, u in enumerate(user_ids)}
        pairs = np.array(sorted({(uindex[e.user_id], index[e.item_id]) for e in train}))
        self.x = sparse.csr_matrix(
            (np.ones(len(pairs), np.float64), (pairs[:, 0], pairs[:, 1])),
            shape=(len(user_ids), len(self.items)))
        self.deg_u = np.asarray(self.x.sum(1)).ravel()
        self.n = np.asarray(self.x.sum(0)).ravel()
        self.stream = np.array([index[e.item_id] for e in train])
        self.histories = [np.array([index[e.item_id] for e in h])
                          for h in by_user(train).values()]  # time order, as the log
        self.users = [[e.item_id for e in h] for h in users.values()]
        self.ratings = [[e.value for e in h] for h in users.values()]
        self._cooc: dict[float, sparse.csr_matrix] = {}
        self._trans: dict[tuple[int, bool], sparse.csr_matrix] = {}

    def cooc(self, u: float) -> sparse.csr_matrix:
        if u not in self._cooc:
            c = (self.x.T @ sparse.diags(np.maximum(self.deg_u, 1.0) ** -u) @ self.x).tocsr()
            c.setdiag(0)
            c.eliminate_zeros()
            self._cooc[u] = c
        return self._cooc[u]

    def transitions(self, window: int, both: bool) -> sparse.csr_matrix:
        """``T_ij``: Σ 1/g over training histories where ``j`` is ``g ≤ window`` events after
        ``i`` (and, with ``both``, before it)."""
        if (window, both) not in self._trans:
            rows, cols, vals = [], [], []
            for h in self.histories:
                for g in range(1, min(window, len(h) - 1) + 1):
                    pairs = [(h[:-g], h[g:])] + ([(h[g:], h[:-g])] if both else [])
                    for a, b in pairs:
                        rows.append(a)
                        cols.append(b)
                        vals.append(np.full(len(a), 1.0 / g))
            n = len(self.items)
            t = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                          np.concatenate(cols))), shape=(n, n))
            t.setdiag(0)
            t.eliminate_zeros()
            self._trans[window, both] = t
        return self._trans[window, both]

    def recent(self, window: int) -> np.ndarray:
        tail = self.stream[-min(window, len(self.stream)):]
        return np.bincount(tail, minlength=len(self.items)).astype(np.float64)


def _z(m: np.ndarray) -> np.ndarray:
    sd = m.std(1, keepdims=True)
    return (m - m.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def popularity(d: Matrix, window: int | None = None) -> Scorer:
    p = d.recent(window) if window else d.n.astype(np.float64)
    return lambda supports, ratings: np.tile(p, (len(supports), 1))


def _through(d: Matrix, c: sparse.csr_matrix, weight: Callable[[np.ndarray, np.ndarray],
             np.ndarray], b: float = 0.0, pop: np.ndarray | None = None,
             pop_weight: float = 0.0) -> Scorer:
    """``s_j = Σ_{i∈S} c_ij · weight(items, ratings)_i / n_j^b``; with ``pop_weight``,
    ``z(s) + pop_weight · z(pop)`` per user; else popularity breaks ties, as in the baselines."""
    n = np.maximum(d.n, 1.0).astype(np.float64)

    def score(supports: list[list[int]], ratings: list[list[float]]) -> np.ndarray:
        m = np.zeros((len(supports), len(d.items)))
        for r, (s, v) in enumerate(zip(supports, ratings, strict=True)):
            if s:
                rows = np.array(s)
                m[r] = c[rows].T @ weight(rows, np.array(v, dtype=np.float64))
        m /= n ** b
        if pop_weight:
            return _z(m) + pop_weight * _z(np.tile(pop, (len(supports), 1)))
        return m + 1e-9 * d.n / max(d.n.max(), 1)

    return score


def knn(d: Matrix, a: float, b: float, u: float, pop_weight: float = 0.0) -> Scorer:
    n = np.maximum(d.n, 1.0).astype(np.float64)
    return _through(d, d.cooc(u), lambda rows, _: n[rows] ** -a, b,
                    d.n.astype(np.float64), pop_weight)


def transition(d: Matrix, window: int, both: bool, pop_weight: float = 0.0) -> Scorer:
    return _through(d, d.transitions(window, both), lambda rows, _: np.ones(len(rows)),
                    pop=d.recent(20_000) if pop_weight else None, pop_weight=pop_weight)


def rated(d: Matrix, weight: Callable[[np.ndarray], np.ndarray]) -> Scorer:
    return _through(d, d.cooc(0.0), lambda _, ratings: weight(ratings))


def top_ids(scores: np.ndarray, ids: Sequence[str]) -> list[list[str]]:
    """Per row, the ids of the 10 best-scored columns, best first, masked (-inf) ones left out."""
    k = min(10, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    return [[ids[t] for t in row if np.isfinite(scores[r, t])] for r, row in enumerate(top)]


def ndcg_at_10(d: Matrix, scorer: Scorer, n: int) -> float:
    """Mean NDCG@10 over the users with more than ``n`` events (the replay's definition:
    relevant = the items of their later events, support items never ranked)."""
    users = [(h, r) for h, r in zip(d.users, d.ratings, strict=True) if len(h) > n]
    values = []
    for start in range(0, len(users), 256):
        chunk = users[start:start + 256]
        known = [[(d.index[i], v) for i, v in zip(h[:n], r[:n], strict=True) if i in d.index]
                 for h, r in chunk]
        supports = [[i for i, _ in k] for k in known]
        s = scorer(supports, [[v for _, v in k] for k in known])
        for r, sup in enumerate(supports):
            s[r, sup] = -np.inf
        values.append(ranking_metrics(top_ids(s, d.items), [set(h[n:]) for h, _ in chunk],
                                      (10,))["ndcg@10"])
    return float(np.concatenate(values).mean()) if values else math.nan


def grid(d: Matrix) -> dict[str, Scorer]:
    out = {"pop": popularity(d)}
    for w in (2000, 5000, 10_000, 20_000):
        out[f"poprec {w}"] = popularity(d, w)
    for a, b, u in itertools.product((0.0, 0.5, 1.0), (0.0, 0.25, 0.5), (0.0, 0.5, 1.0)):
        out[f"knn a={a} b={b} u={u}"] = knn(d, a, b, u)
    for a, w in itertools.product((0.0, 0.5), (0.25, 0.5, 1.0, 2.0)):
        out[f"mix a={a} w={w}"] = knn(d, a, 0.0, 0.0, pop_weight=w)
    for window, both in itertools.product((1, 3, 10), (False, True)):
        out[f"trans w={window} {'both' if both else 'fwd'}"] = transition(d, window, both)
    for window, v in itertools.product((3, 10), (0.5, 1.0)):
        out[f"mix trans w={window} v={v}"] = transition(d, window, True, pop_weight=v)
    out["rated r"] = rated(d, lambda r: r)
    out["rated r-3"] = rated(d, lambda r: r - 3.0)
    out["rated r>=4"] = rated(d, lambda r: (r >= 4).astype(np.float64) + 0.1)
    return out


def ceiling(log_path: str) -> dict[str, object]:
    log = load_log(log_path)
    train, new = split_new_users(log.events, 0.2)
    inner, validation = split_latest_users(train, 0.2)
    held, test = Matrix(inner, validation), Matrix(train, new)
    rows = {}
    held_grid = grid(held)
    for name, scorer in grid(test).items():
        rows[name] = {"validation": [ndcg_at_10(held, held_grid[name], n) for n in SIZES],
                      "new": [ndcg_at_10(test, scorer, n) for n in SIZES]}
    best = {str(n): max(rows, key=lambda k: rows[k]["new"][i]) for i, n in enumerate(SIZES)}
    return {"log": log_name(log_path), "new_users": len(new), "validation_users": len(validation),
            "rows": rows, "best_on_new_users": best}


def _top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` largest entries (ties broken by position), the rest 0."""
    if k >= sim.shape[1]:
        return sim
    keep = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    out = np.zeros_like(sim)
    np.put_along_axis(out, keep, np.take_along_axis(sim, keep, 1), 1)
    return out


def _row_scale(m: sparse.spmatrix) -> np.ndarray:
    """(rows, 1): each row's 1/√(its sum), rows summing to 0 left as they are."""
    return 1.0 / np.sqrt(np.maximum(np.asarray(m.sum(1)), 1.0))


def _transfer_scorers(xs: sparse.csr_matrix, xt: sparse.csr_matrix,
                      supports: list[list[int]]) -> dict[str, Callable[[], np.ndarray]]:
    """The cross-domain grid (module docstring) for one fold: training users' source (``xs``)
    and target (``xt``) interactions, the test users' source supports (columns of ``xs``)."""
    deg_u = np.asarray(xs.sum(1)).ravel() + np.asarray(xt.sum(1)).ravel()
    in_both = (np.asarray(xs.sum(1)).ravel() > 0) & (np.asarray(xt.sum(1)).ravel() > 0)
    ns = np.maximum(np.asarray(xs.sum(0)).ravel(), 1.0)
    nt = np.maximum(np.asarray(xt.sum(0)).ravel(), 1.0)
    cooc = {u: (xs.T @ sparse.diags(np.maximum(deg_u, 1.0) ** -u) @ xt).tocsr()
            for u in (0.0, 0.5, 1.0)}
    lengths = [len(s) for s in supports]
    sup = sparse.csr_matrix(
        (np.ones(sum(lengths)), (np.repeat(np.arange(len(supports)), lengths),
                                 np.concatenate([np.array(s, dtype=np.int64)
                                                 for s in supports]))),
        shape=(len(supports), xs.shape[1]))
    tie = 1e-9 * nt / nt.max()
    base = np.tile(np.asarray(xt.sum(0)).ravel(), (len(supports), 1))
    # source-item cosine of each test user with each training user active in both domains
    bridge = xs[in_both]
    bridge = sparse.csr_matrix(bridge.multiply(_row_scale(bridge)))
    similarity = (sup @ bridge.T).toarray()
    xt_both = xt[in_both]
    overlap_counts = np.tile(np.asarray(xt_both.sum(0)).ravel(), (len(supports), 1))

    def cross(a: float, b: float, u: float) -> np.ndarray:
        return (sparse.csr_matrix(sup.multiply(ns ** -a)) @ cooc[u]).toarray() / nt ** b

    def neighbours(k: int) -> np.ndarray:
        return (sparse.csr_matrix(_top_k(similarity, k)) @ xt_both).toarray() + tie

    scorers: dict[str, Callable[[], np.ndarray]] = {
        "pop": lambda: base, "pop over overlap users": lambda: overlap_counts}
    for a, b, u in itertools.product((0.0, 0.5, 1.0), (0.0, 0.25, 0.5), (0.0, 0.5, 1.0)):
        scorers[f"x a={a} b={b} u={u}"] = lambda a=a, b=b, u=u: cross(a, b, u) + tie
    for a, w in itertools.product((0.0, 0.5, 1.0), (0.25, 0.5, 1.0, 2.0, 4.0)):
        scorers[f"mix a={a} w={w}"] = lambda a=a, w=w: _z(cross(a, 0.0, 0.5)) + w * _z(base)
    for k in (20, 50, 100, 300):
        scorers[f"uknn K={k}"] = lambda k=k: neighbours(k)
    # ridge: W = Bᵀ(BBᵀ + λI)⁻¹T over the bridge users B (rows normalised), so a test user's
    # target scores are (s·Bᵀ)(BBᵀ + λI)⁻¹T: one bridge-users-sized solve per λ
    kernel = (bridge @ bridge.T).toarray()
    query = similarity * _row_scale(sup)
    targets = xt_both.toarray()
    for lam in (10.0, 100.0, 1000.0):
        fitted = query @ np.linalg.solve(kernel + lam * np.eye(len(kernel)), targets)
        scorers[f"ridge λ={lam:g}"] = lambda f=fitted: f + tie
        for w in (0.5, 1.0):
            scorers[f"ridge λ={lam:g} + {w} counts"] = lambda f=fitted, w=w: _z(f) + w * _z(base)
    return scorers


def transfer_ceiling(folder: str, source: str, target: str, *, folds: int = 5,
                     capacity: int = 20, seed: int = 0) -> dict[str, object]:
    """NDCG@10 at 0 target events of the cross-domain grid (module docstring), per ranker."""
    import random

    from streams.domains import read_douban_ratings

    histories = by_user(read_douban_ratings(folder, first=source))
    both = sorted(u for u, h in histories.items() if {e.domain for e in h} >= {source, target})
    random.Random(seed).shuffle(both)
    items = sorted({e.item_id for h in histories.values() for e in h})
    index = {item: i for i, item in enumerate(items)}
    is_target = np.array([item.startswith(f"{target}:") for item in items])
    src_rows, tgt_rows = np.nonzero(~is_target)[0], np.nonzero(is_target)[0]
    src_pos = {int(g): i for i, g in enumerate(src_rows)}
    values: dict[str, list[np.ndarray]] = {}
    tgt_ids = [items[t] for t in tgt_rows]
    for fold in range(folds):
        test = set(both[fold::folds])
        train = [u for u in histories if u not in test]
        pairs = np.array(sorted({(r, index[e.item_id]) for r, u in enumerate(train)
                                 for e in histories[u]}))
        x = sparse.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                              shape=(len(train), len(items)))
        users = [u for u in both if u in test]
        supports = [[src_pos[index[e.item_id]] for e in histories[u]
                     if e.domain == source][-capacity:] for u in users]
        queries = [{e.item_id for e in histories[u] if e.domain == target} for u in users]
        scorers = _transfer_scorers(x[:, src_rows], x[:, tgt_rows], supports)
        for name, scorer in scorers.items():
            ranked = top_ids(scorer(), tgt_ids)
            values.setdefault(name, []).append(
                ranking_metrics(ranked, queries, (10,))["ndcg@10"])
    means = {name: float(np.concatenate(v).mean()) for name, v in values.items()}
    rows = {name: {"ndcg": m, "vs_pop": m / means["pop"]} for name, m in means.items()}
    return {"direction": f"{source} -> {target}", "test_users": len(both), "rows": rows,
            "best": max(rows, key=lambda k: rows[k]["ndcg"])}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.family_ceiling", description=__doc__)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--transfer", metavar="SOURCE:TARGET",
                    help="cross-domain at 0 target events; LOGS is the Douban folder")
    args = ap.parse_args(argv)
    results: list[dict[str, object]] = []
    if args.transfer:
        source, target = args.transfer.split(":")
        for folder in args.logs:
            r = transfer_ceiling(folder, source, target)
            results.append(r)
            print(f"\n## {r['direction']} ({r['test_users']} test users, 0 target events)")
            print("| ranker | NDCG@10 | × target counts |\n|---|---|---|")
            ranked = sorted(r["rows"].items(), key=lambda kv: -kv[1]["ndcg"])  # type: ignore[union-attr]
            for name, v in ranked:
                print(f"| {name} | {v['ndcg']:.4f} | {v['vs_pop']:.3f} |")
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
        return 0
    for path in args.logs:
        r = ceiling(path)
        results.append(r)
        print(f"\n## {r['log']} ({r['new_users']} new users, {r['validation_users']} validation)")
        print("| ranker | validation n=1/3/5/10 | new users n=1/3/5/10 |\n|---|---|---|")
        for name, v in r["rows"].items():
            cells = [" ".join(f"{x:.4f}" for x in v[k]) for k in ("validation", "new")]
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        for i, n in enumerate(SIZES):
            name = r["best_on_new_users"][str(n)]
            print(f"best on the new users at n={n}: {name} {r['rows'][name]['new'][i]:.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
