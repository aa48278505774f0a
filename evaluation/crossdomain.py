"""Cross-domain cold-start evaluation: every transfer learner beside the strongest target-domain
baselines, k-fold over users, paired bootstrap confidence intervals.

Protocol
--------
* Domains are ``[source, target]`` (Douban books/music, MovieLens split by genre family, ... see
  :mod:`streams.domains`).
* **Test users**: every user with at least ``min_source`` source and ``min_target`` target events
  is a test user exactly once per seed: those users are dealt into ``folds`` folds (seeded), and
  each fold is evaluated with models trained on everything else. **None of a test user's events
  reach training** (neither domain; :func:`kfold_splits` asserts it); users active in one domain
  only always train.
* For each ``k`` in ``shots`` (default 0, 1, 3, 5) a test user's support is what the worker's
  bounded support set would hold after their first ``k`` target events: the last
  ``support_capacity - k`` source events + the first ``k`` target events. The **query** is every
  later target event; users with at most ``k`` target events are left out at that ``k``.
* NDCG@10 ranks all target-domain items minus the support (binary relevance = the query items);
  MAE/RMSE compare ``predict_rating`` with the query ratings.
* Several ``seeds`` re-deal the folds and re-seed training; a user's figure is the mean over
  seeds, and confidence intervals are a paired bootstrap over users (the same resampled users for
  both models) of the ratio of mean NDCG@10 (and of MAE): 2.5% and 97.5% percentiles.

Rows
----
``popularity``  target item counts in training; ratings = item mean shrunk to the global mean
``itemknn``     target-domain item-item cosine on binary co-occurrence (as
                :class:`evaluation.baselines.ItemKNNRanker`) from the support's target events;
                popularity when there are none (so at ``k = 0`` it *is* popularity)
``cd-target``   the target-only model, trained with the same recipe as the transfer models
transfer names  trained by :func:`models.transfer.training.fit_transfer` on both domains
other names     a single-domain learner (``fomaml``, ``proto``, ...) trained as the worker trains
                it (:func:`engine.trainer.train_bundle`) on the training users' target events,
                served their target events only: "the few-shot learner alone"

Models are driven through the same ``prepare/init_state/adapt/score`` calls the Recommender makes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.settings import Settings
from engine.trainer import histories_from_events, learner_config, train_bundle
from evaluation.metrics import hit_matrix, ndcg_at_k
from models.base import ItemBank, SupportBatch, create
from models.training import UserHistory, padded_support
from models.transfer import TRANSFER_LEARNERS
from models.transfer.episodes import transfer_episodes
from models.transfer.learners import TARGET, CrossDomainLearner
from models.transfer.training import fit_transfer
from schemas import Interaction, Item, RatingScale

log = logging.getLogger(__name__)

K = 10
BASELINES = ("popularity", "itemknn")
#: the references every model's ratio is reported against, when they were run
REFERENCES = ("popularity", "cd-target", "itemknn", "fomaml", "hybrid")
DEFAULT_MODELS = (*BASELINES, *TRANSFER_LEARNERS, "fomaml")


@dataclass(frozen=True)
class CrossDomainSplit:
    """Training events and held-out test users (all of a test user's events are held out)."""

    source: str
    target: str
    train_events: list[Interaction]
    test_events: dict[str, list[Interaction]]  # user -> time-ordered events, both domains


def eligible_users(events: Sequence[Interaction], source: str, target: str, *,
                   min_source: int = 1, min_target: int = 1) -> list[str]:
    """Users with at least ``min_source`` source and ``min_target`` target events, sorted."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        counts[e.user_id][e.domain] += 1
    return sorted(u for u, c in counts.items() if c[source] >= min_source
                  and c[target] >= min_target)


def _split(events: Sequence[Interaction], source: str, target: str,
           test: set[str]) -> CrossDomainSplit:
    ordered = sorted(events, key=lambda e: (e.ts, e.event_id))
    train = [e for e in ordered if e.user_id not in test]
    held: dict[str, list[Interaction]] = defaultdict(list)
    for e in ordered:
        if e.user_id in test:
            held[e.user_id].append(e)
    assert not any(e.user_id in test for e in train), "test user leaked into training"
    return CrossDomainSplit(source, target, train, dict(held))


def split_users(
    events: Sequence[Interaction],
    source: str,
    target: str,
    *,
    test_fraction: float = 0.2,
    min_source: int = 5,
    min_target: int = 5,
    seed: int = 0,
) -> CrossDomainSplit:
    """One split: a random ``test_fraction`` of the eligible users held out."""
    eligible = eligible_users(events, source, target, min_source=min_source,
                              min_target=min_target)
    rng = np.random.default_rng(seed)
    test = set(rng.choice(eligible, int(len(eligible) * test_fraction), replace=False).tolist()
               if eligible else [])
    return _split(events, source, target, test)


def kfold_splits(
    events: Sequence[Interaction],
    source: str,
    target: str,
    *,
    folds: int = 5,
    min_source: int = 1,
    min_target: int = 1,
    seed: int = 0,
) -> list[CrossDomainSplit]:
    """``folds`` splits whose test users partition the eligible users (seeded deal)."""
    eligible = eligible_users(events, source, target, min_source=min_source,
                              min_target=min_target)
    if len(eligible) < folds:
        raise ValueError(f"{len(eligible)} users active in both {source!r} and {target!r}: "
                         f"fewer than {folds} folds")
    order = np.random.default_rng(seed).permutation(len(eligible))
    return [_split(events, source, target, {eligible[i] for i in order[f::folds]})
            for f in range(folds)]


def _catalog(events: Sequence[Interaction], items: Sequence[Item], settings: Settings) -> Catalog:
    """Catalog of every item, content from ``items`` with the domain its events carry."""
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    domain = {e.item_id: e.domain for e in events}
    catalog.upsert([dataclasses.replace(it, domain=domain[it.item_id])
                    for it in items if it.item_id in domain])
    for e in events:
        catalog.ensure(e.item_id, e.domain)
    return catalog


def _target_only(h: UserHistory, domain: torch.Tensor) -> UserHistory:
    keep = domain[h.items] == TARGET
    return UserHistory(h.items[keep], h.targets[keep], h.ratings[keep], h.profile,
                       None if h.times is None else h.times[keep])


@dataclass
class Episodes:
    """The test episodes of one ``k``: padded support, query rows and query ratings."""

    users: list[str]
    support: SupportBatch
    query: list[np.ndarray]  # per user, catalog rows
    query_ratings: list[np.ndarray]


def test_episodes(
    split: CrossDomainSplit, catalog: Catalog, settings: Settings, k: int,
    *, with_source: bool = True,
) -> Episodes:
    """Support = last ``capacity - k`` source events + first ``k`` target events (only the
    target events when not ``with_source``: for single-domain learners, which cannot tell the
    domains apart)."""
    cap = settings.support_capacity
    scale = RatingScale(settings.rating_low, settings.rating_high)
    rows, tg, rt, users, query, q_r = [], [], [], [], [], []
    for user in sorted(split.test_events):
        evs = split.test_events[user]
        src = [e for e in evs if e.domain != split.target][-(cap - k):] if cap > k else []
        src = src if with_source else []
        tgt = [e for e in evs if e.domain == split.target]
        if len(tgt) <= k:
            continue
        sup = src + tgt[:k]
        users.append(user)
        rows.append([catalog.index[e.item_id] for e in sup])
        tg.append([e.reward(scale) for e in sup])  # = SupportEvent.target at serving
        rt.append([e.value if e.kind == "rate" else math.nan for e in sup])
        query.append(np.array([catalog.index[e.item_id] for e in tgt[k:]]))
        q_r.append(np.array([e.value if e.kind == "rate" else math.nan for e in tgt[k:]]))
    support = padded_support([torch.tensor(r, dtype=torch.long) for r in rows],
                             [torch.tensor(t, dtype=torch.float32) for t in tg],
                             [torch.tensor(q, dtype=torch.float32) for q in rt])
    return Episodes(users, support, query, q_r)


@dataclass
class PerUser:
    """One model's figures at one ``k`` on one split, per test user (``users`` order)."""

    users: list[str]
    ndcg: np.ndarray
    abs_err: np.ndarray  # sum of |error| over the user's rated query events
    sq_err: np.ndarray
    rated: np.ndarray  # number of rated query events


def _per_user(scores: torch.Tensor, predicted: list[np.ndarray], ep: Episodes,
              target_mask: torch.Tensor) -> PerUser:
    scores = scores.masked_fill(~target_mask[None, :], -math.inf)
    seen = torch.zeros_like(scores).scatter_add_(1, ep.support.items, ep.support.mask.to(
        scores.dtype)) > 0
    top = torch.topk(scores.masked_fill(seen, -math.inf), K, dim=1).indices.numpy()
    hits, n_rel = hit_matrix([list(map(int, r)) for r in top], [set(q.tolist()) for q in ep.query])
    ndcg = ndcg_at_k(hits, n_rel, K)
    abs_err, sq_err, rated = [], [], []
    for p, t in zip(predicted, ep.query_ratings, strict=True):
        ok = ~np.isnan(t)
        err = np.asarray(p, dtype=np.float64)[ok] - t[ok]
        abs_err.append(float(np.abs(err).sum()))
        sq_err.append(float((err**2).sum()))
        rated.append(int(ok.sum()))
    return PerUser(list(ep.users), np.asarray(ndcg, dtype=np.float64), np.array(abs_err),
                   np.array(sq_err), np.array(rated))


def evaluate_learner(learner, bank: ItemBank, ep: Episodes,
                     target_mask: torch.Tensor | None = None) -> PerUser:
    """Per-user figures of one trained learner on one set of episodes (serving calls).
    ``target_mask``: the items to rank (default ``bank.domains == TARGET``)."""
    with torch.inference_mode():
        prepared = learner.prepare(bank)
        state = learner.init_state(torch.zeros(len(ep.users), learner.config.attribute_dim))
        state = learner.adapt(state, ep.support, prepared)
        scores = learner.score(state, prepared)
        width = max((len(q) for q in ep.query), default=0)
        qrows = torch.zeros(len(ep.query), width, dtype=torch.long)
        for i, q in enumerate(ep.query):
            qrows[i, : len(q)] = torch.from_numpy(q)
        pred = learner.predict_rating(state, prepared, qrows).numpy()
    predicted = [pred[i, : len(q)] for i, q in enumerate(ep.query)]
    mask = bank.domains == TARGET if target_mask is None else target_mask
    return _per_user(scores, predicted, ep, mask)


def _item_stats(split: CrossDomainSplit, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(training interaction counts, item mean ratings shrunk to the global mean) per row."""
    n = len(catalog)
    counts, sums, n_rated = np.zeros(n), np.zeros(n), np.zeros(n)
    for e in split.train_events:
        r = catalog.index[e.item_id]
        counts[r] += 1
        if e.kind == "rate":
            sums[r] += e.value
            n_rated[r] += 1
    mean = float(sums.sum() / n_rated.sum()) if n_rated.sum() else 0.0
    shrink = 5.0  # pseudo-ratings at the global mean: 1 rating barely moves an item's mean
    return counts, (sums + shrink * mean) / (n_rated + shrink)


def _popularity(split: CrossDomainSplit, catalog: Catalog, target_mask: torch.Tensor,
                ep: Episodes) -> PerUser:
    counts, item_mean = _item_stats(split, catalog)
    scores = torch.from_numpy(np.log1p(counts)).float()[None, :].expand(len(ep.users), -1)
    return _per_user(scores.clone(), [item_mean[q] for q in ep.query], ep, target_mask)


def _itemknn(split: CrossDomainSplit, catalog: Catalog, target_mask: torch.Tensor,
             ep: Episodes) -> PerUser:
    """Target-domain item-kNN (cosine of binary co-occurrence over the training users' target
    events) from the support's target events, popularity tie-break/fallback; ratings: the
    similarity-weighted mean of the user's rated support items, else the item mean."""
    n = len(catalog)
    counts, item_mean = _item_stats(split, catalog)
    is_tgt = target_mask.numpy()
    pairs = {(e.user_id, catalog.index[e.item_id]) for e in split.train_events
             if is_tgt[catalog.index[e.item_id]]}
    users = {u: i for i, u in enumerate(sorted({u for u, _ in pairs}))}
    rows = np.fromiter((users[u] for u, _ in pairs), dtype=np.int64, count=len(pairs))
    cols = np.fromiter((c for _, c in pairs), dtype=np.int64, count=len(pairs))
    x = sparse.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=(max(len(users), 1), n))
    norms = np.sqrt(np.maximum(np.asarray(x.sum(0)).ravel(), 1.0))
    cooc = (x.T @ x).tocsr()
    cooc.setdiag(0)
    cooc.eliminate_zeros()
    sim = sparse.diags(1 / norms) @ cooc @ sparse.diags(1 / norms)
    items = ep.support.items.numpy()
    mask = ep.support.mask.numpy() & is_tgt[items]
    q = sparse.csr_matrix((np.ones(int(mask.sum())), (np.nonzero(mask)[0], items[mask])),
                          shape=(len(ep.users), n))
    scores = np.asarray((q @ sim).todense()) + 1e-9 * np.log1p(counts)[None, :]
    predicted = []
    ratings = ep.support.ratings.numpy()
    for i, query in enumerate(ep.query):
        own = mask[i] & ~np.isnan(ratings[i])
        if not own.any():
            predicted.append(item_mean[query])
            continue
        w = np.asarray(sim[items[i][own]][:, query].todense())  # (support, query)
        total = w.sum(0)
        weighted = (w * ratings[i][own][:, None]).sum(0) / np.maximum(total, 1e-12)
        predicted.append(np.where(total > 0, weighted, item_mean[query]))
    return _per_user(torch.from_numpy(scores), predicted, ep, target_mask)


@dataclass
class _Fold:
    """What every model of one (seed, fold) shares."""

    split: CrossDomainSplit
    catalog: Catalog
    train_h: list[UserHistory]
    bank: ItemBank
    config: Any
    episodes: dict[int, Episodes]
    target_episodes: dict[int, Episodes]
    target_mask: torch.Tensor


def _prepare_fold(split: CrossDomainSplit, catalog: Catalog, settings: Settings,
                  shots: Sequence[int]) -> _Fold:
    histories = histories_from_events(split.train_events, catalog, settings)
    train_h = [h for _, h in sorted(histories.items()) if len(h) >= 2]
    vocab = list(dict.fromkeys(e.item_id for e in split.train_events))
    counts = Counter(e.item_id for e in split.train_events)
    config = learner_config(settings, len(vocab))
    config.extra["domains"] = [split.source, split.target]
    pop = np.log1p(np.array([counts[i] for i in vocab], dtype=np.float32))
    bank = ModelBundle(create("cd-target", config), vocab, "eval", pop).bank(catalog)
    return _Fold(split, catalog, train_h, bank, config,
                 {k: test_episodes(split, catalog, settings, k) for k in shots},
                 {k: test_episodes(split, catalog, settings, k, with_source=False)
                  for k in shots},
                 bank.domains == TARGET)


def _train(name: str, fold: _Fold, settings: Settings, steps: int, seed: int):
    """``(learner, bank, report)`` of model ``name`` trained on the fold's training users."""
    if name in TRANSFER_LEARNERS:
        hist = fold.train_h
        if name == "cd-target":
            hist = [h for h in (_target_only(h, fold.bank.domains) for h in hist) if len(h) >= 2]
        learner, report = fit_transfer(name, hist, fold.bank, fold.config, steps=steps,
                                       seed=seed, max_source=settings.support_capacity)
        return learner, fold.bank, report
    # a single-domain learner, trained as the worker trains it, on target events only
    target = [e for e in fold.split.train_events if e.domain == fold.split.target]
    catalog = _catalog(fold.split.train_events, [], settings)
    result = train_bundle(settings, target, catalog, learner=name, steps=steps, seed=seed,
                          heldout_fraction=0.0)
    report = {k: v for k, v in result.report.items() if not isinstance(v, dict | list)}
    return result.bundle.learner, result.bundle.bank(fold.catalog), report


def diagnose(learner: CrossDomainLearner, fold: _Fold, settings: Settings) -> dict[str, float]:
    """Why a learned transfer model loses, at ``k = 0``: its NDCG@10 on the held-out users and
    on the training users' own episodes (in-sample: over-fitting shows as a gap), the NDCG@10 of
    its item bias alone (the prior it learned), and the spread of the user·item term over the
    target items relative to the bias's spread (how much the user term overrides the prior)."""
    ep = fold.episodes[0]
    target = fold.target_mask
    test = evaluate_learner(learner, fold.bank, ep).ndcg.mean()
    inner = transfer_episodes(fold.train_h, fold.bank.domains, 0, settings.support_capacity)
    train_ep = Episodes([str(u) for u in inner.users], inner.support,
                        [q.numpy() for q in inner.query], [r.numpy() for r in inner.query_ratings])
    in_sample = evaluate_learner(learner, fold.bank, train_ep).ndcg.mean()
    with torch.inference_mode():
        prepared = learner.prepare(fold.bank)
        bias = prepared["b"].expand(len(ep.users), -1).clone()
        state = learner.adapt(learner.init_state(torch.zeros(len(ep.users),
                                                             learner.config.attribute_dim)),
                              ep.support, prepared)
        user_term = state["u"] @ prepared["H"][target].T
    bias_only = _per_user(bias, [np.zeros(len(q)) for q in ep.query], ep, target).ndcg.mean()
    spread = float(user_term.std(1).mean() / prepared["b"][target].std().clamp(min=1e-12))
    return {"test_ndcg": float(test), "train_users_ndcg": float(in_sample),
            "bias_only_ndcg": float(bias_only), "user_term_over_bias": spread}


def paired_ratio(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """``sum(a) / sum(b)`` and its 95% paired bootstrap interval over the rows (users): each
    resample draws the same rows for both. For NDCG pass per-user values (ratio of means); for
    MAE pass per-user error sums (users weigh by their rated events, as the pooled MAE does)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.sum() <= 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for start in range(0, n_boot, 250):  # bounded memory: 250 resamples at a time
        idx = rng.integers(0, a.size, (min(250, n_boot - start), a.size))
        ratios[start:start + idx.shape[0]] = a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-300)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return float(a.sum() / b.sum()), float(lo), float(hi)


def run_crossdomain(
    events: Sequence[Interaction],
    items: Sequence[Item] = (),
    *,
    source: str,
    target: str,
    models: Sequence[str] = DEFAULT_MODELS,
    shots: Sequence[int] = (0, 1, 3, 5),
    steps: int = 300,
    seeds: Sequence[int] = (0,),
    folds: int = 5,
    min_source: int = 1,
    min_target: int = 1,
    settings: Settings | None = None,
    diagnostics: bool = False,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Train every model on every (seed, fold) and evaluate it at every ``k``. Returns the
    results dict :func:`write_results` stores: ``rows`` (one per model × k, per-user NDCG@10 in
    ``users`` order, ratios with paired CIs against :data:`REFERENCES`), ``training`` and, with
    ``diagnostics``, :func:`diagnose`'s figures per learned transfer model (first seed)."""
    settings = settings or Settings()
    catalog = _catalog(events, items, settings)
    figures: dict[tuple[str, int], list[PerUser]] = defaultdict(list)
    training: dict[str, list[dict[str, Any]]] = defaultdict(list)
    diag: dict[str, list[dict[str, float]]] = defaultdict(list)
    n_train = []
    started = time.perf_counter()
    for seed in seeds:
        for f, split in enumerate(kfold_splits(events, source, target, folds=folds,
                                               min_source=min_source, min_target=min_target,
                                               seed=seed)):
            fold = _prepare_fold(split, catalog, settings, shots)
            n_train.append(len(split.train_events))
            for name in models:
                t0 = time.perf_counter()
                for k in shots:
                    if name == "popularity":
                        figures[(name, k)].append(_popularity(split, catalog, fold.target_mask,
                                                              fold.episodes[k]))
                    elif name == "itemknn":
                        figures[(name, k)].append(_itemknn(split, catalog, fold.target_mask,
                                                           fold.episodes[k]))
                if name in BASELINES:
                    continue
                torch.manual_seed(seed)
                learner, bank, report = _train(name, fold, settings, steps, seed)
                training[name].append({"seed": seed, "fold": f, **report})
                for k in shots:
                    ep = fold.episodes[k] if name in TRANSFER_LEARNERS else fold.target_episodes[k]
                    figures[(name, k)].append(evaluate_learner(learner, bank, ep,
                                                               fold.target_mask))
                if diagnostics and seed == seeds[0] and isinstance(learner, CrossDomainLearner):
                    diag[name].append(diagnose(learner, fold, settings))
                log.info("seed %d fold %d: %s trained and evaluated in %.1fs", seed, f, name,
                         time.perf_counter() - t0)
    rows = _rows(figures, models, shots, n_boot)
    results: dict[str, Any] = {
        "protocol": {"source": source, "target": target, "shots": list(shots), "steps": steps,
                     "seeds": list(seeds), "folds": folds, "min_source": min_source,
                     "min_target": min_target, "k": K,
                     "support_capacity": settings.support_capacity,
                     "test_users": len(eligible_users(events, source, target,
                                                      min_source=min_source,
                                                      min_target=min_target)),
                     "train_events_per_fold": int(np.mean(n_train)), "items": len(catalog),
                     "bootstrap": n_boot, "seconds": round(time.perf_counter() - started, 1)},
        "training": dict(training),
        "rows": rows,
    }
    if diag:
        results["diagnostics"] = {name: {key: float(np.mean([d[key] for d in values]))
                                         for key in values[0]} for name, values in diag.items()}
    return results


def _rows(figures: dict[tuple[str, int], list[PerUser]], models: Sequence[str],
          shots: Sequence[int], n_boot: int) -> list[dict[str, Any]]:
    """Per (model, k): per-user means over seeds and ratios to the references."""
    pooled: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for key, parts in figures.items():
        by_user: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
        for part in parts:
            for i, user in enumerate(part.users):
                by_user[user].append((part.ndcg[i], part.abs_err[i], part.sq_err[i],
                                      part.rated[i]))
        users = sorted(by_user)
        per = np.array([np.mean(by_user[u], axis=0) for u in users]).reshape(len(users), 4)
        pooled[key] = {"users": np.array(users), "ndcg": per[:, 0], "abs": per[:, 1],
                       "sq": per[:, 2], "rated": per[:, 3]}
    rows = []
    for k in shots:
        for name in models:
            p = pooled.get((name, k))
            if p is None:
                continue
            n = len(p["ndcg"])
            rated = p["rated"].sum()
            row: dict[str, Any] = {
                "model": name, "k": k, "users": n, "ndcg@10": float(p["ndcg"].mean()),
                "ndcg@10_se": float(p["ndcg"].std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                "mae": float(p["abs"].sum() / rated) if rated else math.nan,
                "rmse": float(math.sqrt(p["sq"].sum() / rated)) if rated else math.nan,
                "per_user_ndcg@10": [round(float(x), 6) for x in p["ndcg"]],
            }
            for ref in REFERENCES:
                q = pooled.get((ref, k))
                if q is None or ref == name:
                    continue
                assert (q["users"] == p["users"]).all(), "rows must cover the same users"
                row[f"ndcg_vs_{ref}"] = paired_ratio(p["ndcg"], q["ndcg"], n_boot=n_boot)
                row[f"mae_vs_{ref}"] = paired_ratio(p["abs"], q["abs"], n_boot=n_boot)
            rows.append(row)
    return rows


def _ratio(value: tuple[float, float, float] | None) -> str:
    if value is None:
        return "1"
    r, lo, hi = value
    return f"{r:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(r) else "n/a"


def table(results: dict[str, Any]) -> str:
    """Markdown table: model × k with NDCG@10 ± s.e., its ratio to each reference that was run
    (popularity, cd-target = target-only, itemknn, fomaml and hybrid = the few-shot learners
    alone) with the 95% paired bootstrap interval, MAE and its ratio to popularity's, and the
    user count."""
    rows = results["rows"]
    refs = [r for r in REFERENCES if any(row["model"] == r for row in rows)]
    head = ["model", "k", "NDCG@10 ± s.e.", *[f"× {r}" for r in refs], "MAE", "MAE × popularity",
            "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["k"]), f"{r['ndcg@10']:.4f} ± {r['ndcg@10_se']:.4f}"]
        cells += ["1" if ref == r["model"] else _ratio(r.get(f"ndcg_vs_{ref}")) for ref in refs]
        cells += [f"{r['mae']:.4f}", "1" if r["model"] == "popularity" else _ratio(
            r.get("mae_vs_popularity")), str(r["users"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(results: dict[str, Any]) -> str:
    """Markdown table of :func:`diagnose`'s figures (empty string when none were asked for)."""
    diag = results.get("diagnostics") or {}
    if not diag:
        return ""
    pop = next((r["ndcg@10"] for r in results["rows"] if r["model"] == "popularity"
                and r["k"] == 0), math.nan)
    lines = ["| model (k = 0) | NDCG@10 held-out users | NDCG@10 training users | "
             "NDCG@10 item bias alone | user-term spread / bias spread |", "|---|---|---|---|---|"]
    for name, d in diag.items():
        lines.append(f"| {name} | {d['test_ndcg']:.4f} | {d['train_users_ndcg']:.4f} | "
                     f"{d['bias_only_ndcg']:.4f} | {d['user_term_over_bias']:.2f} |")
    lines.append(f"| popularity | {pop:.4f} | | | |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out: str | Path) -> Path:
    """``results.json`` + ``table.md`` in ``out`` (created)."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    text = table(results) + "\n"
    if results.get("diagnostics"):
        text += "\n" + diagnostics_table(results) + "\n"
    (directory / "table.md").write_text(text)
    return directory


__all__ = ["BASELINES", "CrossDomainSplit", "DEFAULT_MODELS", "Episodes", "PerUser",
           "REFERENCES", "diagnose", "diagnostics_table", "eligible_users", "evaluate_learner",
           "kfold_splits", "paired_ratio", "run_crossdomain", "split_users", "table",
           "test_episodes", "write_results"]
