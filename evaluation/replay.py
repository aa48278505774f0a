"""Offline replay of an interaction log through baselines and Kindling learners.

Protocols
---------
``few-shot`` (MeLU-style user cold start)
    Time span ``[t0, t1]`` of the log; users whose *first* event is at or after
    ``t1 - new_user_fraction * (t1 - t0)`` are new, all others are warm. Models train on the warm
    users' events only. For each new user and each ``n`` in ``support_sizes`` (users with more
    than ``n`` events), the first ``n`` events are the support and the rest the query: the model
    sees the support (Kindling: ``Recommender.apply`` into a fresh support store per ``n``;
    baselines: ``observe`` on a private fork of the fitted model), its top-``max(k_list)`` over all
    items except the support is scored against the query items (precision/recall/hr/ndcg@K,
    MRR) and its rating predictions against the query ratings (MAE, RMSE).
    ``first_recommendation_success`` is hr@10 of the recommendation made after the first event.
``prequential``
    Models train on events before the cut ``t1 - new_user_fraction * (t1 - t0)``; the events
    after it are streamed in time order and before each one the user's current top-K (Kindling:
    the recommendation served after the user's previous event) is scored against its item
    (hr@K, ndcg@K, MRR), bucketed by the user's number of prior events (``0``, ``1``-2, ``3``-4,
    ``5``-9, ``10+``) and overall (``all``).
``query-rank`` (MeLU / MAMO's protocol)
    The same new users; per user the query is their last 10 rated events and the support their
    first ``n`` events (``n`` in ``support_sizes``, users with at least ``n + 10`` events) or
    ``all`` of their other events. Reported: MAE and RMSE of the query's predicted ratings, and
    nDCG@1 / nDCG@3 of the 10 query items ranked by predicted rating (gain = the true rating).
``new-items`` (item cold start)
    Items first seen after the cut ``t1 - new_item_fraction * (t1 - t0)`` are new; models train
    on the events before the cut (so never on a new item). Each warm user with at least one
    event on a new item after the cut gets the new items ranked (Kindling: from content only,
    ``id_index == -1``), scored against the new items they consumed.

Leakage
-------
Nothing from a new user's query (or any event after the support) reaches training, the support
store or the models' state: training events are fixed before any evaluation, each support size
uses a fresh store / a fresh fork, and query items are never added to a model's catalog.
``tests/evaluation/test_leakage.py`` proves it by poisoning the queries.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation import baselines, metrics, tuning
from evaluation.runners import BaselineRunner, KindlingRunner, Runner
from schemas import Interaction, Item
from streams.sources import log_format

logger = logging.getLogger(__name__)

PROTOCOLS = ("few-shot", "prequential", "new-items", "query-rank")
#: Query size of the query-rank protocol (MeLU's).
QUERY_RANK_QUERY = 10
#: Per-user values kept (in memory, ``report["_per_user"]``) for confidence intervals.
PER_USER = ("ndcg@10", "hr@10", "ndcg@1", "ndcg@3")
BUCKETS = ((0, "0"), (1, "1"), (3, "3"), (5, "5"), (10, "10+"))


@dataclass
class ReplayLog:
    """What the protocols replay: time-ordered events, the item catalog, user attributes."""

    events: list[Interaction]
    items: list[Item] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "log"


def as_replay_log(log_like: Any) -> ReplayLog:
    """Accept a :class:`ReplayLog`, a :class:`~evaluation.synthetic.SyntheticLog`, a
    :class:`~streams.sources.LogRead` or a plain sequence of events."""
    if isinstance(log_like, ReplayLog):
        return log_like
    events = list(getattr(log_like, "events", log_like))
    events.sort(key=lambda e: e.ts)
    return ReplayLog(
        events=events,
        items=list(getattr(log_like, "items", [])),
        profiles=dict(getattr(log_like, "profiles", {}) or {}),
        name=str(getattr(log_like, "name", "log")),
    )


def kindling_learners() -> list[str]:
    from models import learners  # noqa: F401  (registers the built-in learners)
    from models.base import REGISTRY

    return sorted(REGISTRY)


def is_baseline(name: str) -> bool:
    return name in baselines.REGISTRY


# ------------------------------------------------------------------------------ splits


def time_cut(events: Sequence[Interaction], fraction: float) -> float:
    """The timestamp after which the last ``fraction`` of the log's time span starts."""
    if not events:
        raise ValueError("empty log")
    t0, t1 = events[0].ts, events[-1].ts
    return t1 - fraction * (t1 - t0)


def by_user(events: Iterable[Interaction]) -> dict[str, list[Interaction]]:
    out: dict[str, list[Interaction]] = {}
    for e in events:
        out.setdefault(e.user_id, []).append(e)
    return out


def split_new_users(
    events: Sequence[Interaction], fraction: float
) -> tuple[list[Interaction], dict[str, list[Interaction]]]:
    """Warm users' events (training) and new users' histories (time order), by first event."""
    cut = time_cut(events, fraction)
    users = by_user(events)
    new = {u: h for u, h in users.items() if h[0].ts >= cut}
    train = [e for e in events if e.user_id not in new]
    return train, dict(sorted(new.items(), key=lambda kv: (kv[1][0].ts, kv[0])))


def split_latest_users(
    events: Sequence[Interaction], fraction: float, minimum: int = 20
) -> tuple[list[Interaction], dict[str, list[Interaction]]]:
    """Inside training data: the ``fraction`` of users (at least ``minimum``) whose first event
    is latest become validation users (histories in time order, as :func:`split_new_users`);
    everyone else's events are returned for fitting. A count, not a time span: in training data
    every user's first event precedes the protocol's cut, so the span rule would find none."""
    users = by_user(events)
    order = sorted(users, key=lambda u: (users[u][0].ts, u))
    n = min(len(order) // 2, max(minimum, int(round(fraction * len(order)))))
    held = set(order[len(order) - n:]) if n > 0 else set()
    rest = [e for e in events if e.user_id not in held]
    return rest, {u: users[u] for u in order if u in held}


def digest(events: Iterable[Interaction]) -> str:
    """A fingerprint of an event sequence (for provenance and the leakage test)."""
    h = hashlib.blake2b(digest_size=16)
    for e in events:
        h.update(repr((e.event_id, e.user_id, e.item_id, e.kind, e.value, e.ts)).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ runners


def make_runner(
    name: str,
    log: ReplayLog,
    universe: Sequence[str],
    *,
    seed: int,
    train_steps: int,
    settings: Any = None,
    params: Mapping[str, Any] | None = None,
) -> Runner:
    if is_baseline(name):
        return BaselineRunner(name, universe, seed=seed, params=params)
    if name not in kindling_learners():
        raise KeyError(
            f"unknown model {name!r}; baselines: {sorted(baselines.REGISTRY)}, "
            f"Kindling learners: {kindling_learners()}"
        )
    return KindlingRunner(
        name, log.items, log.profiles, settings=settings, steps=train_steps, seed=seed
    )


def _universe(log: ReplayLog, train: Sequence[Interaction]) -> list[str]:
    """Items a model may rank: the catalog file plus items seen in training (sorted, stable)."""
    return sorted({i.item_id for i in log.items} | {e.item_id for e in train})


def _progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Iterable[Any]:
    return tqdm(iterable, disable=not enabled, leave=False, **kwargs)


# ------------------------------------------------------------------------------ protocols


def _few_shot(
    runner: Runner,
    new: Mapping[str, list[Interaction]],
    universe: set[str],
    support_sizes: Sequence[int],
    k_list: Sequence[int],
    progress: bool,
    trace: dict[str, Any] | None,
    ratings: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    kmax = max(k_list)
    sizes = sorted(set(support_sizes) | {1})
    out: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {}
    for n in _progress(sizes, progress, desc=f"{runner.name} few-shot"):
        users = [u for u, h in new.items() if len(h) > n]
        hist = [new[u] for u in users]
        if not hist:
            continue
        ranked, predicted = runner.cold_start(hist, n, kmax, ratings=ratings)
        queries = [{e.item_id for e in h[n:]} for h in hist]
        per_user = metrics.ranking_metrics(ranked, queries, k_list)
        row = metrics.mean_metrics(per_user)
        errors = (_rating_errors(hist, predicted, n, universe) if ratings
                  else {"summary": {"mae": math.nan, "rmse": math.nan}})
        row.update(errors.pop("summary"))
        row["users"] = float(len(hist))
        extra.setdefault("per_user", {})[str(n)] = {
            "users": users, **{m: v for m, v in per_user.items() if m in PER_USER}, **errors}
        if n == 1:
            extra["first_recommendation_success"] = row["hr@10"] if 10 in k_list else math.nan
        if n in support_sizes:
            out[str(n)] = row
        if trace is not None:
            trace.setdefault("recommendations", {})[str(n)] = dict(zip(users, ranked, strict=True))
            trace.setdefault("supports", {})[str(n)] = {
                u: [e.event_id for e in h[:n]] for u, h in zip(users, hist, strict=True)
            }
    return out, extra


def _rating_errors(
    hist: Sequence[Sequence[Interaction]],
    predicted: Sequence[np.ndarray],
    n: int | Sequence[int],
    universe: set[str],
) -> dict[str, Any]:
    """MAE/RMSE over rated query events whose item is rankable (in the universe): the pooled
    ``summary``, and per user the sums ``abs_err`` and ``sq_err`` over ``rated`` events (for
    intervals over users)."""
    sizes = [n] * len(hist) if isinstance(n, int) else list(n)
    abs_err, sq_err, rated = [], [], []
    for h, p, m in zip(hist, predicted, sizes, strict=True):
        err = np.array([value - e.value for e, value in zip(h[m:], p, strict=True)
                        if e.kind == "rate" and e.item_id in universe and math.isfinite(value)])
        abs_err.append(float(np.abs(err).sum()))
        sq_err.append(float((err**2).sum()))
        rated.append(int(err.size))
    total = max(sum(rated), 1)
    summary = {
        "mae": sum(abs_err) / total if sum(rated) else math.nan,
        "rmse": math.sqrt(sum(sq_err) / total) if sum(rated) else math.nan,
    }
    return {"summary": summary, "abs_err": abs_err, "sq_err": sq_err, "rated": rated}


def _graded_ndcg(predicted: np.ndarray, gains: np.ndarray, k: int) -> float:
    """nDCG@``k`` of items ranked by ``predicted`` (stable: ties keep query order), with linear
    gains ``gains`` (the true ratings); ideal = gains sorted descending."""
    order = np.argsort(-predicted, kind="stable")[:k]
    discount = 1.0 / np.log2(np.arange(2, k + 2))[: order.size]
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * discount[: ideal.size]).sum())
    return float((gains[order] * discount).sum()) / idcg if idcg > 0 else 0.0


def _query_rank(
    runner: Runner,
    new: Mapping[str, list[Interaction]],
    universe: set[str],
    support_sizes: Sequence[int],
    progress: bool,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """MeLU/MAMO-style: rank each new user's last :data:`QUERY_RANK_QUERY` rated items by
    predicted rating, after a support of their first ``n`` events or all their other events."""
    out: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {}
    q = QUERY_RANK_QUERY
    cases: list[tuple[str, list[str], list[list[Interaction]], list[int]]] = []
    queries: dict[str, list[Interaction]] = {}
    rest: dict[str, list[Interaction]] = {}
    for u, h in new.items():
        rated_at = [i for i, e in enumerate(h) if e.kind == "rate" and e.item_id in universe]
        if len(rated_at) < q:
            continue
        picked = set(rated_at[-q:])
        queries[u] = [h[i] for i in sorted(picked)]
        rest[u] = [e for i, e in enumerate(h) if i not in picked]
    for n in sorted(set(support_sizes)):
        users = [u for u in queries if len(rest[u]) >= n and n > 0]
        cases.append((str(n), users, [rest[u][:n] + queries[u] for u in users], [n] * len(users)))
    users = [u for u in queries if rest[u]]
    cases.append(("all", users, [rest[u] + queries[u] for u in users],
                  [len(rest[u]) for u in users]))
    for key, users, hist, sizes in _progress(cases, progress, desc=f"{runner.name} query-rank"):
        if not users:
            continue
        _, predicted = runner.cold_start(hist, sizes, 1)
        errors = _rating_errors(hist, predicted, sizes, universe)
        per_user: dict[str, list[float]] = {"ndcg@1": [], "ndcg@3": []}
        for h, p, m in zip(hist, predicted, sizes, strict=True):
            gains = np.array([e.value for e in h[m:]])
            pred = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=-np.inf)
            for k in (1, 3):
                per_user[f"ndcg@{k}"].append(_graded_ndcg(pred, gains, k))
        row = {**errors.pop("summary"), **{m: float(np.mean(v)) for m, v in per_user.items()},
               "users": float(len(users))}
        out[key] = row
        extra.setdefault("per_user", {})[key] = {
            "users": users, **{m: np.array(v) for m, v in per_user.items()}, **errors}
    return out, extra


def _bucket(prior: int) -> str:
    label = BUCKETS[0][1]
    for lower, name in BUCKETS:
        if prior >= lower:
            label = name
    return label


def _prequential(
    runner: Runner,
    warm: Sequence[Interaction],
    stream: Sequence[Interaction],
    k_list: Sequence[int],
    progress: bool,
) -> dict[str, dict[str, float]]:
    prior: dict[str, int] = {}
    for e in warm:
        prior[e.user_id] = prior.get(e.user_id, 0) + 1
    buckets, ranked = [], []
    recs = runner.stream(warm, stream, max(k_list))
    for e, items in zip(
        stream,
        _progress(recs, progress, total=len(stream), desc=f"{runner.name} prequential"),
        strict=True,
    ):
        buckets.append(_bucket(prior.get(e.user_id, 0)))
        prior[e.user_id] = prior.get(e.user_id, 0) + 1
        ranked.append(items)
    per_event = metrics.single_target_metrics(ranked, [e.item_id for e in stream], k_list)
    labels = np.array(buckets)
    out = {"all": {**metrics.mean_metrics(per_event), "events": float(len(stream))}}
    for _, name in BUCKETS:
        mask = labels == name
        if mask.any():
            sub = {m: v[mask] for m, v in per_event.items()}
            out[name] = {**metrics.mean_metrics(sub), "events": float(mask.sum())}
    return out


def split_new_items(
    events: Sequence[Interaction], fraction: float
) -> tuple[list[Interaction], list[str], dict[str, set[str]]]:
    """Training events (before the cut), new item ids, and per warm user the new items they
    consumed after the cut."""
    cut = time_cut(events, fraction)
    first: dict[str, float] = {}
    for e in events:
        first.setdefault(e.item_id, e.ts)
    new_items = sorted(i for i, t in first.items() if t >= cut)
    new_set = set(new_items)
    train = [e for e in events if e.ts < cut]
    warm = {e.user_id for e in train}
    targets: dict[str, set[str]] = {}
    for e in events:
        if e.ts >= cut and e.item_id in new_set and e.user_id in warm:
            targets.setdefault(e.user_id, set()).add(e.item_id)
    return train, new_items, targets


def _new_items(
    runner: Runner,
    train: Sequence[Interaction],
    new_items: Sequence[str],
    targets: Mapping[str, set[str]],
    k_list: Sequence[int],
) -> dict[str, dict[str, float]]:
    histories = by_user(e for e in train if e.user_id in targets)
    users = sorted(targets)
    ranked = runner.rank_among([histories[u] for u in users], new_items, max(k_list))
    row = metrics.mean_metrics(metrics.ranking_metrics(ranked, [targets[u] for u in users], k_list))
    row["users"] = float(len(users))
    row["candidates"] = float(len(new_items))
    return {"all": row}


# ------------------------------------------------------------------------------ entry points


def replay(
    log: Any,
    *,
    protocol: str = "few-shot",
    models: Sequence[str] = ("random", "popularity", "itemknn"),
    k_list: Sequence[int] = (5, 10, 20),
    support_sizes: Sequence[int] = (1, 3, 5, 10),
    new_user_fraction: float = 0.2,
    new_item_fraction: float = 0.2,
    seed: int = 0,
    train_steps: int = 1500,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
    max_stream_events: int | None = None,
    settings: Any = None,
    trace: dict[str, Any] | None = None,
    serve_via: Callable[[Runner, ReplayLog], Runner] | None = None,
    tune_baselines: bool = True,
) -> dict[str, Any]:
    """Replay ``log`` under one protocol for every model; see the module docstring.

    Parameters
    ----------
    log : ReplayLog, SyntheticLog, LogRead or sequence of Interaction
        The interaction log (sorted by time here if needed), with items/profiles when known.
    protocol : {"few-shot", "prequential", "new-items"}
    models : sequence of str
        Baseline names (:data:`evaluation.baselines.REGISTRY`) and/or Kindling learner names
        (``fomaml``, ``maml``, ``proto``, ``matching``, ``sequence``).
    k_list : sequence of int
        Cut-offs of the ranking metrics; recommendations have ``max(k_list)`` items.
    support_sizes : sequence of int
        Few-shot support sizes ``n``.
    new_user_fraction : float
        Last fraction of the time span whose first-time users are new (few-shot), or which is
        streamed (prequential).
    new_item_fraction : float
        Last fraction of the time span whose first-seen items are new (new-items).
    seed : int
        Seeds the baselines and Kindling training; results are a function of ``(log, seed)``.
    train_steps : int
        Meta-training steps of Kindling learners.
    out_dir : path, optional
        Write ``report.json``, ``report.md`` and plots there.
    progress : bool, optional
        tqdm bars; default: only when stderr is a TTY.
    max_stream_events : int, optional
        Prequential only: stream at most this many events (the earliest after the cut).
    settings : engine.settings.Settings, optional
        Serving settings for Kindling learners (``top_k``/``seed`` are set here).
    trace : dict, optional
        Filled with per-model inputs and recommendations (``train_digest``, ``supports``,
        ``recommendations``) for audits such as the leakage test.
    serve_via : callable, optional
        Prequential only: wraps each Kindling learner's in-process runner in one that serves the
        same trained model another way, e.g. through the embedded broker and real worker
        processes (``ops.replay_kafka.via_kafka``); its ``label`` is reported as
        ``meta["served_via"]``. Baselines are unchanged.

    tune_baselines : bool
        Few-shot and query-rank: pick each baseline's main hyper-parameter on training users
        first (:func:`tune_baseline`; reported in ``meta["tuning"]``).

    Returns
    -------
    dict
        ``{"results": {model: {key: {metric: value}}}, "meta": {...}, "latency_ms": {model:
        {"p50", "p99", "mean", "n"}}}``; ``key`` is the support size (few-shot, query-rank, with
        ``"all"`` there too), the prior-event bucket (prequential) or ``"all"`` (new-items).
        In memory only: ``report["_per_user"][model][key]`` holds per-user values (``users``,
        the :data:`PER_USER` metrics, ``abs_err``/``sq_err``/``rated``) for intervals.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if serve_via is not None and protocol != "prequential":
        raise ValueError("serve_via streams events through another server: use "
                         "protocol='prequential'")
    progress = sys.stderr.isatty() if progress is None else progress
    data = as_replay_log(log)
    t_start = time.perf_counter()
    results: dict[str, dict[str, dict[str, float]]] = {}
    latency: dict[str, dict[str, float]] = {}
    samples: dict[str, list[float]] = {}
    meta: dict[str, Any] = {
        "protocol": protocol,
        "log": data.name,
        "events": len(data.events),
        "items": len(data.items),
        "seed": seed,
        "k_list": list(k_list),
        "support_sizes": list(support_sizes),
        "new_user_fraction": new_user_fraction,
        "new_item_fraction": new_item_fraction,
        "train_steps": train_steps,
        "served_via": getattr(serve_via, "label", "in-process") if serve_via else "in-process",
        "models": {},
    }
    split = _split(data, protocol, new_user_fraction, new_item_fraction, max_stream_events)
    meta.update(split["meta"])
    per_user: dict[str, dict[str, Any]] = {}
    fitted: dict[str, Runner] = {}
    for name in models:
        params, groups = None, []
        if tune_baselines and is_baseline(name) and protocol in ("few-shot", "query-rank"):
            tuned = tune_baseline(name, data, split["train"], seed=seed,
                                  support_sizes=support_sizes, new_user_fraction=new_user_fraction)
            meta.setdefault("tuning", {})[name] = tuned
            params = tuned["params"]
            groups = _size_groups(tuned, support_sizes) if protocol == "few-shot" else []
        model_trace = None if trace is None else trace.setdefault(name, {})
        if len(groups) > 1:  # a value per support size: one fit per distinct value
            results[name], per_user[name], runner, latencies = _run_per_size(
                name, groups, data, split, k_list, seed, progress, meta, model_trace)
            info = {**runner.info, "per_support_size": {
                str(n): p for p, sizes in groups for n in sizes}}
        else:
            donor = (_core_donor(name, fitted) if protocol in ("few-shot", "query-rank")
                     and trace is None else None)
            runner = (KindlingRunner.sharing_core(donor, name) if donor is not None
                      else make_runner(
                          name,
                          data,
                          _universe(data, split["train"]),
                          seed=seed,
                          train_steps=train_steps,
                          settings=settings,
                          params=params,
                      ))
            if serve_via is not None and not is_baseline(name):
                runner = serve_via(runner, data)
            results[name], per_user[name] = _run(
                runner, data, split, protocol, k_list, support_sizes, progress, meta, model_trace
            )
            latencies, info = runner.latencies_ms, runner.info
        fitted[name] = runner
        latency[name] = latency_summary(latencies)
        samples[name] = list(latencies)
        meta["models"][name] = info
        logger.info("%s done (%s)", name, protocol)
    meta["seconds"] = time.perf_counter() - t_start
    report = {"results": results, "meta": meta, "latency_ms": latency, "_latency_samples": samples,
              "_per_user": per_user}
    if out_dir is not None:
        from evaluation.report import write_report

        meta["files"] = {k: str(v) for k, v in write_report(report, out_dir).items()}
    return report


def _size_groups(tuned: Mapping[str, Any], support_sizes: Sequence[int]
                 ) -> list[tuple[dict[str, Any], list[int]]]:
    """The support sizes grouped by the value tuning chose for each (``tuned["per_key"]``;
    sizes without one take the overall choice), in grid order of the value (a resumable
    trainer, SASRec's, then trains each longer run on from the shorter one)."""
    per_key = tuned.get("per_key") or {}
    groups: dict[tuple, tuple[dict[str, Any], list[int]]] = {}
    for n in sorted(support_sizes):
        p = dict(per_key.get(str(n), tuned["params"]))
        groups.setdefault(tuple(sorted(p.items())), (p, []))[1].append(n)
    return sorted(groups.values(), key=lambda g: tuple(v for _, v in sorted(g[0].items())))


def _run_per_size(
    name: str,
    groups: Sequence[tuple[dict[str, Any], list[int]]],
    data: ReplayLog,
    split: dict[str, Any],
    k_list: Sequence[int],
    seed: int,
    progress: bool,
    meta: dict[str, Any],
    trace: dict[str, Any] | None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any], Runner, list[float]]:
    """Few-shot: a baseline tuned per support size (:func:`tune_baseline`) serves each size with
    its own value: one fit per distinct value, each evaluated on its sizes only, merged.
    Returns the results and per-user values by size, the last runner and every fit's latencies."""
    from evaluation.runners import BaselineRunner

    results: dict[str, dict[str, float]] = {}
    per_user: dict[str, Any] = {}
    latencies: list[float] = []
    runner: Runner | None = None
    for params, sizes in groups:
        runner = BaselineRunner(name, _universe(data, split["train"]), seed=seed, params=params)
        # every fit also runs n = 1 first, as the single-value path does: River MF's figures at
        # a size change when n = 1 has not run before it (checked on a synthetic log)
        out, users = _run(runner, data, split, "few-shot", k_list, sizes, progress, meta, trace)
        results.update(out)
        per_user.update({key: v for key, v in users.items() if key in out})
        latencies.extend(runner.latencies_ms)
    assert runner is not None
    if "1" in results and "hr@10" in results["1"]:
        meta.setdefault("first_recommendation_success", {})[name] = results["1"]["hr@10"]
    return (dict(sorted(results.items(), key=lambda kv: int(kv[0]))),
            dict(sorted(per_user.items(), key=lambda kv: int(kv[0]))), runner, latencies)


def _core_donor(name: str, fitted: Mapping[str, Runner]) -> KindlingRunner | None:
    """A fitted composite learner (the ``hybrid``) whose core *is* learner ``name``, trained the
    same way: ``train_bundle`` meta-trains the hybrid's core with the core's own recipe, seed and
    recency calibration, so training ``name`` again would rebuild the same model (checked by
    ``tests/evaluation/test_eval_replay.py``). None when there is no such donor."""
    for runner in fitted.values():
        if isinstance(runner, KindlingRunner) and runner.rec is not None:
            core = getattr(runner.rec.bundle.learner, "core", None)
            if core is not None and getattr(core, "name", None) == name:
                return runner
    return None


def _split(
    data: ReplayLog,
    protocol: str,
    new_user_fraction: float,
    new_item_fraction: float,
    max_stream_events: int | None,
) -> dict[str, Any]:
    if protocol in ("few-shot", "query-rank"):
        train, new = split_new_users(data.events, new_user_fraction)
        meta = {
            "train_events": len(train),
            "new_users": len(new),
            "warm_users": len({e.user_id for e in train}),
        }
        return {"train": train, "new": new, "meta": meta}
    if protocol == "prequential":
        cut = time_cut(data.events, new_user_fraction)
        train = [e for e in data.events if e.ts < cut]
        stream = [e for e in data.events if e.ts >= cut][:max_stream_events]
        meta = {"train_events": len(train), "stream_events": len(stream), "cut_ts": cut}
        return {"train": train, "stream": stream, "meta": meta}
    train, new_items, targets = split_new_items(data.events, new_item_fraction)
    meta = {"train_events": len(train), "new_items": len(new_items), "eval_users": len(targets)}
    return {"train": train, "new_items": new_items, "targets": targets, "meta": meta}


def _run(
    runner: Runner,
    data: ReplayLog,
    split: dict[str, Any],
    protocol: str,
    k_list: Sequence[int],
    support_sizes: Sequence[int],
    progress: bool,
    meta: dict[str, Any],
    trace: dict[str, Any] | None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Fit ``runner`` and run one protocol: ``(results by key, per-user values by key)``."""
    runner.fit(split["train"])
    if hasattr(runner, "with_top_k"):  # Kindling learners, in-process or via Kafka
        runner.with_top_k(max(k_list), max(support_sizes))
    if trace is not None:
        trace["train_digest"] = digest(split["train"])
    universe = set(_universe(data, split["train"]))
    if protocol == "few-shot":
        out, extra = _few_shot(
            runner, split["new"], universe, support_sizes, k_list, progress, trace
        )
        meta.setdefault("first_recommendation_success", {})[runner.name] = extra.get(
            "first_recommendation_success", math.nan
        )
        return out, extra.get("per_user", {})
    if protocol == "query-rank":
        out, extra = _query_rank(runner, split["new"], universe, support_sizes, progress)
        return out, extra.get("per_user", {})
    if protocol == "prequential":
        return _prequential(runner, split["train"], split["stream"], k_list, progress), {}
    return _new_items(runner, split["train"], split["new_items"], split["targets"], k_list), {}


def tune_baseline(
    name: str,
    data: ReplayLog,
    train: Sequence[Interaction],
    *,
    seed: int,
    support_sizes: Sequence[int],
    new_user_fraction: float,
    k: int = 10,
) -> dict[str, Any]:
    """Pick a baseline's main hyper-parameter on training users (:mod:`evaluation.tuning`): the
    few-shot protocol inside ``train`` (its ``new_user_fraction`` latest-arriving users are the
    validation users, :func:`split_latest_users`), scored by NDCG@``k`` per support size: one
    value overall (best mean over ``support_sizes``) and one per size (``per_key``), as the
    learners choose their gates per support-size bucket. The few-shot protocol serves each size
    with its own value; query-rank uses the overall one."""
    from evaluation.runners import BaselineRunner

    def split(events: Sequence[Interaction]) -> tuple[list[Interaction], Mapping[str, list]]:
        return split_latest_users(events, new_user_fraction)

    def score(params: Mapping[str, Any], inner: list[Interaction],
              validation: Mapping[str, list]) -> dict[str, float]:
        universe = _universe(data, inner)
        runner = BaselineRunner(name, universe, seed=seed, params=params)
        runner.fit(inner)
        out, _ = _few_shot(runner, validation, set(universe), support_sizes, (k,), False, None,
                           ratings=False)
        return {key: float(row[f"ndcg@{k}"]) for key, row in out.items()}

    t0 = time.perf_counter()
    result = tuning.tune(name, train, split, score)
    result["seconds"] = time.perf_counter() - t0
    return result


def latency_summary(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean (ms per recommendation) and the sample count."""
    if not samples:
        return {"p50": math.nan, "p99": math.nan, "mean": math.nan, "n": 0}
    a = np.asarray(samples, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "n": int(a.size),
    }


def run_replay(
    log_path: str | Path | None,
    *,
    protocol: str = "few-shot",
    models: Sequence[str] = ("random", "popularity", "itemknn", "fomaml"),
    out_dir: str | Path = "reports/replay",
    seed: int = 0,
    items_path: str | Path | None = None,
    mapping: Mapping[str, str] | None = None,
    synthetic: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """CLI entry point: load a log (or generate one), replay it, write the report.

    Parameters
    ----------
    log_path : path or None
        An interaction log readable by :func:`streams.sources.read_log`; ``None`` (or the
        string ``"synthetic"``) replays a generated :mod:`evaluation.synthetic` log.
    protocol, models, seed
        As in :func:`replay`.
    out_dir : path
        Where ``report.json``, ``report.md`` and the PNG plots go (created if needed).
    items_path : path, optional
        Item catalog; default: the MovieLens-style file beside the log, if any.
    mapping : mapping, optional
        Column mapping for generic CSV/JSONL logs (see :func:`streams.sources.read_log`).
    synthetic : mapping, optional
        Keyword arguments for :func:`evaluation.synthetic.generate` (default sizes otherwise).
    **options
        Passed to :func:`replay` (``k_list``, ``support_sizes``, ``new_user_fraction``,
        ``new_item_fraction``, ``train_steps``, ``progress``, ``max_stream_events``,
        ``settings``).

    Returns
    -------
    dict
        The report (see :func:`replay`); ``report["meta"]["files"]`` lists the written files.
        Print :func:`evaluation.report.render_table` of it for the headline table.
    """
    data = load_log(
        log_path, items_path=items_path, mapping=mapping, seed=seed, synthetic=synthetic
    )
    return replay(data, protocol=protocol, models=models, out_dir=out_dir, seed=seed, **options)


def load_log(
    log_path: str | Path | None,
    *,
    items_path: str | Path | None = None,
    mapping: Mapping[str, str] | None = None,
    seed: int = 0,
    synthetic: Mapping[str, Any] | None = None,
) -> ReplayLog:
    """Read a log file (+ its item catalog) or generate the synthetic log."""
    if log_path is None or str(log_path) == "synthetic":
        from evaluation.synthetic import generate

        generated = generate(**{"seed": seed, **(synthetic or {})})
        return as_replay_log(generated)
    from streams.sources import items_beside, read_items, read_log

    read = read_log(log_path, mapping)
    items_file = items_path or items_beside(log_path)
    items = read_items(items_file).items if items_file else []
    return ReplayLog(read.events, items, {}, log_name(log_path))


def log_name(log_path: str | Path) -> str:
    """A report's name for a log: its folder for a MovieLens release (``ml-latest-small``),
    ``folder/stem`` for other files (``douban-book-music/book_ratings``: one folder may hold
    several logs)."""
    path = Path(log_path)
    if log_format(path) == "movielens":
        return path.parent.name or str(path)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
