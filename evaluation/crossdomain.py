"""Cross-domain cold-start evaluation: every transfer learner vs target-only, side by side.

Protocol (one run, one split, every model trained on exactly the same events)
-----------------------------------------------------------------------------
* Domains are ``[source, target]`` (e.g. MovieLens split by genre family, see
  :mod:`streams.domains`).
* **Test users** are a seeded random ``test_fraction`` of the users with at least
  ``min_source`` source events and ``min_target`` target events. **None of their events reach
  training** (neither domain; :func:`split_users` asserts it), so their target behaviour is never
  seen by any model.
* For each ``k`` in ``shots`` (default 0, 1, 3) a test user's support is what the worker's
  bounded support set would hold after their first ``k`` target events: the last
  ``capacity - k`` source events + the first ``k`` target events. The **query** is every later
  target event.
* NDCG@10 ranks all target-domain items minus the support (binary relevance = the query items);
  MAE/RMSE compare ``predict_rating`` with the query ratings.
* ``popularity`` (target item counts in training; item mean rating shrunk to the global mean)
  is a model-free reference row; ``cd-target`` is the target-only model trained with the same
  recipe as the transfer models; any other registry name (``fomaml``, ``proto``) is a
  single-domain learner meta-trained on the training users' target events only.

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

from engine.bundle import ModelBundle
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.settings import Settings
from engine.trainer import histories_from_events, learner_config
from evaluation.metrics import hit_matrix, mae, ndcg_at_k, rmse
from models.base import ItemBank, SupportBatch, create
from models.training import UserHistory, meta_train, pretrain_items
from models.transfer import TRANSFER_LEARNERS
from models.transfer.learners import TARGET
from models.transfer.training import fit_transfer
from schemas import Interaction, Item, RatingScale

log = logging.getLogger(__name__)

K = 10


@dataclass(frozen=True)
class CrossDomainSplit:
    """Training events and held-out test users (all of a test user's events are held out)."""

    source: str
    target: str
    train_events: list[Interaction]
    test_events: dict[str, list[Interaction]]  # user -> time-ordered events, both domains


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
    """Hold out a random ``test_fraction`` of the users active in both domains."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        counts[e.user_id][e.domain] += 1
    eligible = sorted(u for u, c in counts.items()
                      if c[source] >= min_source and c[target] >= min_target)
    rng = np.random.default_rng(seed)
    test = set(rng.choice(eligible, int(len(eligible) * test_fraction), replace=False).tolist()
               if eligible else [])
    ordered = sorted(events, key=lambda e: (e.ts, e.event_id))
    train = [e for e in ordered if e.user_id not in test]
    held: dict[str, list[Interaction]] = defaultdict(list)
    for e in ordered:
        if e.user_id in test:
            held[e.user_id].append(e)
    assert not any(e.user_id in test for e in train), "test user leaked into training"
    return CrossDomainSplit(source, target, train, dict(held))


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
    s = max((len(r) for r in rows), default=0)
    items = torch.zeros(len(rows), s, dtype=torch.long)
    targets = torch.zeros(len(rows), s)
    ratings = torch.full((len(rows), s), math.nan)
    mask = torch.zeros(len(rows), s, dtype=torch.bool)
    for i, (r, t, q) in enumerate(zip(rows, tg, rt, strict=True)):
        items[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        targets[i, : len(r)] = torch.tensor(t)
        ratings[i, : len(r)] = torch.tensor(q)
        mask[i, : len(r)] = True
    return Episodes(users, SupportBatch(items, targets, ratings, mask), query, q_r)


def _metrics(scores: torch.Tensor, predicted: list[np.ndarray], ep: Episodes,
             target_mask: torch.Tensor) -> dict[str, float]:
    scores = scores.masked_fill(~target_mask[None, :], -math.inf)
    scores = scores.masked_fill(
        torch.zeros_like(scores, dtype=torch.bool).scatter_(1, ep.support.items, ep.support.mask),
        -math.inf)
    top = torch.topk(scores, K, dim=1).indices.numpy()
    hits, n_rel = hit_matrix([list(map(int, r)) for r in top], [set(q.tolist()) for q in ep.query])
    ndcg = ndcg_at_k(hits, n_rel, K)
    pred = np.concatenate(predicted) if predicted else np.zeros(0)
    true = np.concatenate(ep.query_ratings) if ep.query_ratings else np.zeros(0)
    ok = ~np.isnan(true)
    se = float(ndcg.std(ddof=1) / math.sqrt(len(ndcg))) if len(ndcg) > 1 else math.nan
    return {"ndcg@10": float(ndcg.mean()), "ndcg@10_se": se, "mae": mae(pred[ok], true[ok]),
            "rmse": rmse(pred[ok], true[ok]), "users": len(ep.users),
            "per_user_ndcg@10": [round(float(x), 6) for x in ndcg]}


def evaluate_learner(learner, bank: ItemBank, ep: Episodes) -> dict[str, float]:
    """Metrics of one trained learner on one set of episodes (serving calls, inference mode)."""
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
    return _metrics(scores, predicted, ep, bank.domains == TARGET)


def _popularity(split: CrossDomainSplit, catalog: Catalog, bank: ItemBank,
                ep: Episodes) -> dict[str, float]:
    n = len(catalog)
    counts, sums = np.zeros(n), np.zeros(n)
    for e in split.train_events:
        r = catalog.index[e.item_id]
        counts[r] += 1
        sums[r] += e.value if e.kind == "rate" else 0.0
    rated = [e.value for e in split.train_events if e.kind == "rate"]
    mean = float(np.mean(rated)) if rated else 0.0
    shrink = 5.0  # pseudo-ratings at the global mean: 1 rating barely moves an item's mean
    item_mean = (sums + shrink * mean) / (counts + shrink)
    scores = torch.from_numpy(np.log1p(counts)).float()[None, :].expand(len(ep.users), n)
    return _metrics(scores.clone(), [item_mean[q] for q in ep.query], ep, bank.domains == TARGET)


def run_crossdomain(
    events: Sequence[Interaction],
    items: Sequence[Item] = (),
    *,
    source: str,
    target: str,
    models: Sequence[str] = TRANSFER_LEARNERS,
    shots: Sequence[int] = (0, 1, 3),
    steps: int = 300,
    seed: int = 0,
    test_fraction: float = 0.2,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train every model on the same split and evaluate it at every ``k``. Returns the results
    dict that :func:`write_results` stores (``rows``: one per model × k)."""
    settings = settings or Settings()
    split = split_users(events, source, target, test_fraction=test_fraction, seed=seed)
    catalog = _catalog(events, items, settings)
    histories = histories_from_events(split.train_events, catalog, settings)
    train_h = [h for _, h in sorted(histories.items()) if len(h) >= 2]
    vocab = list(dict.fromkeys(e.item_id for e in split.train_events))
    counts = Counter(e.item_id for e in split.train_events)
    config = learner_config(settings, len(vocab))
    config.extra["domains"] = [source, target]
    pop = np.log1p(np.array([counts[i] for i in vocab], dtype=np.float32))
    bank = ModelBundle(create("cd-target", config), vocab, "eval", pop).bank(catalog)
    episodes = {k: test_episodes(split, catalog, settings, k) for k in shots}
    target_episodes = {k: test_episodes(split, catalog, settings, k, with_source=False)
                       for k in shots}
    rows: list[dict[str, Any]] = []
    for k, ep in episodes.items():
        rows.append({"model": "popularity", "k": k, **_popularity(split, catalog, bank, ep)})
    training: dict[str, Any] = {}
    for name in models:
        hist = [_target_only(h, bank.domains) for h in train_h] if name == "cd-target" else train_h
        hist = [h for h in hist if len(h) >= 2]
        t0 = time.perf_counter()
        if name in TRANSFER_LEARNERS:
            learner, report = fit_transfer(name, hist, bank, config, steps=steps, seed=seed,
                                           max_source=settings.support_capacity)
        else:  # a single-domain learner (fomaml, proto, ...): meta-trained on target events only
            hist = [h for h in (_target_only(h, bank.domains) for h in train_h) if len(h) >= 2]
            torch.manual_seed(seed)
            learner = create(name, config)
            report = {"pretrain": pretrain_items(learner, hist, bank, epochs=2, seed=seed)}
            trained = meta_train(learner, hist, bank, steps=steps, first_order=None, seed=seed)
            report.update({k: v for k, v in trained.items() if k != "losses"})
            learner.eval()
        training[name] = report
        for k in shots:
            ep = episodes[k] if name in TRANSFER_LEARNERS else target_episodes[k]
            rows.append({"model": name, "k": k, **evaluate_learner(learner, bank, ep)})
        log.info("%s trained+evaluated in %.1fs", name, time.perf_counter() - t0)
    return {
        "protocol": {"source": source, "target": target, "shots": list(shots), "steps": steps,
                     "seed": seed, "test_fraction": test_fraction, "k": K,
                     "support_capacity": settings.support_capacity,
                     "train_events": len(split.train_events), "test_users": len(split.test_events),
                     "items": len(catalog), "vocab": len(vocab)},
        "training": training,
        "rows": rows,
    }


def _paired(row: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """Mean per-user NDCG difference to ``ref`` ± its paired standard error (same users)."""
    if ref is None:
        return "n/a"
    d = np.asarray(row["per_user_ndcg@10"]) - np.asarray(ref["per_user_ndcg@10"])
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return f"{d.mean():+.4f} ± {se:.4f}"


def table(results: dict[str, Any]) -> str:
    """Markdown table: model × k with NDCG@10 (± s.e.), paired Δ NDCG (± paired s.e.) vs the
    target-only model, vs EMCDR and vs the best target-only row (popularity, ``cd-target`` or a
    single-domain learner), MAE and RMSE."""
    rows = results["rows"]
    ref = {(r["model"], r["k"]): r for r in rows}
    # the strongest target-only row at each k (chosen on the test users: favours the baselines)
    best = {}
    for r in rows:
        if r["model"] not in TRANSFER_LEARNERS[1:] and (
                r["k"] not in best or r["ndcg@10"] > best[r["k"]]["ndcg@10"]):
            best[r["k"]] = r
    lines = ["| model | k | NDCG@10 ± s.e. | Δ vs cd-target | Δ vs emcdr | Δ vs best target-only "
             "| MAE | RMSE | users |", "|---|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(dict.fromkeys(r["model"] for r in rows))}
    for r in sorted(rows, key=lambda r: (r["k"], order[r["model"]])):
        k = r["k"]
        lines.append(
            f"| {r['model']} | {k} | {r['ndcg@10']:.4f} ± {r['ndcg@10_se']:.4f} | "
            f"{_paired(r, ref.get(('cd-target', k)))} | {_paired(r, ref.get(('emcdr', k)))} | "
            f"{_paired(r, best.get(k))} ({best[k]['model']}) | "
            f"{r['mae']:.4f} | {r['rmse']:.4f} | {r['users']} |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out: str | Path) -> Path:
    """``results.json`` + ``table.md`` in ``out`` (created)."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    (directory / "table.md").write_text(table(results) + "\n")
    return directory


__all__ = ["CrossDomainSplit", "Episodes", "evaluate_learner", "run_crossdomain", "split_users",
           "table", "test_episodes", "write_results"]
