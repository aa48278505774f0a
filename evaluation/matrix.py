"""The quality matrix: one protocol over several logs and seeds, with intervals over users.

``kindling replay LOG [LOG ...] --seeds 0,1,2`` runs :func:`evaluation.replay.replay` for every
log × seed and aggregates per support size ``n``:

* per model: the mean NDCG@10 and HR@10 (few-shot; nDCG@1/@3 for query-rank) over users, each
  user's value first averaged over the seeds, with a 95% bootstrap interval over users; the MAE
  (and RMSE) pooled over the users' rated query events, interval likewise;
* the **best baseline at that n**: the baseline (not ``random``, not a Kindling learner) with the
  highest mean headline metric; and each Kindling learner's paired ratio to it (ratio of means,
  the same bootstrap resamples of users for both), with its interval.

Baselines that do not depend on the seed (``popularity``, ``popularity-recent``, ``itemknn``,
``ease``: deterministic given the log) are replayed once per log and their per-user values reused
for every seed. Every replay tunes the baselines on training users only (see
:mod:`evaluation.tuning`); the users are the same for every seed (the split is by time).

Writes ``results.json`` (summaries, per-user values, per-run metadata), ``table.md`` and
``ndcg.png`` (one panel per log: the headline metric against ``n`` with intervals).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.replay import is_baseline, load_log, replay
from evaluation.report import jsonable

log = logging.getLogger(__name__)

#: Baselines whose results do not depend on the seed (replayed once per log).
SEED_FREE = frozenset({"popularity", "popularity-recent", "itemknn", "ease"})
#: Not a bar to beat: random ranking.
NOT_A_BAR = frozenset({"random"})
BOOTSTRAP = 2000


def headline(protocol: str) -> str:
    return "ndcg@3" if protocol == "query-rank" else "ndcg@10"


def run_matrix(
    logs: Sequence[str],
    *,
    seeds: Sequence[int],
    models: Sequence[str],
    protocol: str = "few-shot",
    out_dir: str | Path = "reports/matrix",
    default_learner: str | None = None,
    progress: bool = False,
    jobs: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Replay every log × seed and write the aggregate (see the module docstring).

    Parameters
    ----------
    logs : sequence of str
        Log paths readable by :func:`evaluation.replay.load_log`, or ``"synthetic"``.
    seeds : sequence of int
        Model seeds (training, sampling); the data split does not depend on them.
    models : sequence of str
        Baselines and Kindling learners.
    protocol : {"few-shot", "query-rank"}
    default_learner : str, optional
        The learner the table's verdict column is about (default: the first Kindling learner).
    jobs : int
        Replays run in parallel processes (each with ``cpu_count // jobs`` torch threads).
    **options
        Passed to :func:`evaluation.replay.replay` (``train_steps``, ``settings``, ...).
    """
    if protocol not in ("few-shot", "query-rank"):
        raise ValueError("the matrix aggregates the few-shot or query-rank protocol")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    learners = [m for m in models if not is_baseline(m)]
    default_learner = default_learner or (learners[0] if learners else None)
    tasks = [(path, seed, [m for m in models if i == 0 or m not in SEED_FREE])
             for path in logs for i, seed in enumerate(seeds)]
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    calls = [dict(path=path, seed=seed, models=todo, protocol=protocol, progress=progress,
                  threads=threads, options=options) for path, seed, todo in tasks]
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            done = list(pool.map(_one_run, calls))
    else:
        done = [_one_run(c) for c in calls]
    per_log: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for path in logs:
        mine = [d for d in done if d["path"] == path]
        per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
        for d in mine:
            for m in models:
                if m in d["per_user"]:
                    per_seed[m].append(d["per_user"][m])
        for m in SEED_FREE & set(models):  # the first seed's values stand for every seed
            per_seed[m] = per_seed[m][:1] * len(seeds)
        name = mine[0]["log"]
        per_log[name] = aggregate(per_seed, headline(protocol), seed=0)
        runs.extend({k: v for k, v in d.items() if k not in ("per_user", "path")} for d in mine)
    result = {
        "protocol": protocol,
        "logs": list(per_log),
        "seeds": list(seeds),
        "models": list(models),
        "default_learner": default_learner,
        "results": per_log,
        "runs": runs,
        "seconds": time.perf_counter() - t_start,
    }
    (out / "results.json").write_text(json.dumps(jsonable(result), indent=1, allow_nan=False))
    (out / "table.md").write_text(render(result))
    plot(result, out / "ndcg.png")
    return result


def _one_run(call: Mapping[str, Any]) -> dict[str, Any]:
    """One log x seed replay (a process of its own when the matrix runs jobs in parallel)."""
    import torch

    torch.set_num_threads(call["threads"])
    path = call["path"]
    data = load_log(None if path == "synthetic" else path, seed=0)
    t0 = time.perf_counter()
    report = replay(data, protocol=call["protocol"], models=call["models"], seed=call["seed"],
                    progress=call["progress"], **call["options"])
    seconds = time.perf_counter() - t0
    log.info("%s seed %s: %.0f s", data.name, call["seed"], seconds)
    return {"path": path, "log": "synthetic" if path == "synthetic" else data.name,
            "seed": call["seed"], "models": call["models"], "seconds": seconds,
            "meta": report["meta"], "per_user": report["_per_user"]}


def aggregate(
    per_seed: Mapping[str, Sequence[Mapping[str, Mapping[str, Any]]]], metric: str, *,
    seed: int = 0, resamples: int = BOOTSTRAP,
) -> dict[str, Any]:
    """Seed-averaged per-user values -> means, intervals and paired ratios, per key ``n``.

    ``per_seed[model][s][key]`` is one replay's ``_per_user`` entry (``users``, metric arrays,
    ``abs_err``/``sq_err``/``rated``)."""
    rng = np.random.default_rng(seed)
    keys = sorted({k for runs in per_seed.values() for run in runs for k in run}, key=_key_order)
    out: dict[str, Any] = {}
    for key in keys:
        values: dict[str, dict[str, np.ndarray]] = {}
        users: list[str] | None = None
        for model, runs in per_seed.items():
            rows = [run[key] for run in runs if key in run]
            if not rows:
                continue
            users = users or list(rows[0]["users"])
            for row in rows:
                if list(row["users"]) != users:
                    raise ValueError(f"{model} at {key}: users differ between seeds or models")
            values[model] = _mean_over_seeds(rows)
        if users is None:
            continue
        idx = rng.integers(0, len(users), size=(resamples, len(users)))
        summary: dict[str, Any] = {"users": len(users), "models": {}}
        for model, v in values.items():
            summary["models"][model] = _summarise(v, idx, metric)
        bars = {m: s["mean"][metric] for m, s in summary["models"].items()
                if is_baseline(m) and m not in NOT_A_BAR and math.isfinite(s["mean"][metric])}
        if bars:
            best = max(bars, key=lambda m: bars[m])
            summary["best_baseline"] = best
            for model, v in values.items():
                if not is_baseline(model):
                    summary["models"][model]["vs_best"] = _paired_ratio(
                        v[metric], values[best][metric], idx)
        out[key] = summary
    return out


def _mean_over_seeds(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    names = [k for k in rows[0] if k != "users"]
    return {k: np.mean([np.asarray(r[k], dtype=np.float64) for r in rows], axis=0) for k in names}


def _summarise(v: Mapping[str, np.ndarray], idx: np.ndarray, metric: str) -> dict[str, Any]:
    mean: dict[str, float] = {}
    ci: dict[str, list[float]] = {}
    for name, arr in v.items():
        if name in ("abs_err", "sq_err", "rated"):
            continue
        mean[name] = float(arr.mean()) if arr.size else math.nan
        ci[name] = _interval(arr[idx].mean(axis=1)) if arr.size else [math.nan, math.nan]
    if "rated" in v and v["rated"].size and v["rated"].sum() > 0:
        rated, abs_err, sq_err = v["rated"], v["abs_err"], v["sq_err"]
        mean["mae"] = float(abs_err.sum() / rated.sum())
        mean["rmse"] = float(math.sqrt(sq_err.sum() / rated.sum()))
        with np.errstate(invalid="ignore", divide="ignore"):
            ci["mae"] = _interval(abs_err[idx].sum(1) / rated[idx].sum(1))
            ci["rmse"] = _interval(np.sqrt(sq_err[idx].sum(1) / rated[idx].sum(1)))
    return {"mean": mean, "ci95": ci}


def _paired_ratio(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    """Ratio of means ``mean(a) / mean(b)`` with a paired bootstrap interval over users."""
    ratio = float(a.mean() / b.mean()) if b.mean() > 0 else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = a[idx].mean(1) / b[idx].mean(1)
    return {"ratio": ratio, "ci95": _interval(boot[np.isfinite(boot)])}


def _interval(samples: np.ndarray) -> list[float]:
    if samples.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def _key_order(key: str) -> tuple[int, float]:
    try:
        return (0, float(key))
    except ValueError:
        return (1, math.inf)


# ------------------------------------------------------------------------------ outputs


def render(result: Mapping[str, Any], target: float = 1.05) -> str:
    """``table.md``: per log, the headline metric with intervals, HR@10 / MAE, the best
    baseline and each learner's paired ratio to it."""
    metric = headline(result["protocol"])
    lines = [f"# Quality matrix: {result['protocol']}, seeds {result['seeds']}", "",
             f"Cells: mean over users (each user's value averaged over the seeds) [95% bootstrap "
             f"interval over users]. Ratio: learner / best baseline at that n, paired bootstrap "
             f"interval. Whole run: {result['seconds'] / 60:.1f} min.", ""]
    default = result.get("default_learner")
    for log_name, per_key in result["results"].items():
        keys = list(per_key)
        lines += [f"## {log_name}", "", f"### {metric}", "",
                  "| model | " + " | ".join(f"n={k}" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        models = list(next(iter(per_key.values()))["models"]) if per_key else []
        for model in models:
            cells = []
            for k in keys:
                s = per_key[k]["models"].get(model)
                cells.append(_cell(s, metric) if s else "-")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += ["", "| | " + " | ".join(f"n={k}" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines.append("| best baseline | " + " | ".join(
            str(per_key[k].get("best_baseline", "-")) for k in keys) + " |")
        for model in models:
            if is_baseline(model):
                continue
            cells = []
            for k in keys:
                r = per_key[k]["models"][model].get("vs_best") if model in per_key[k][
                    "models"] else None
                if not r:
                    cells.append("-")
                    continue
                mark = " ✓" if model == default and r["ratio"] >= target else ""
                cells.append(f"{r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]{mark}")
            lines.append(f"| {model} / best | " + " | ".join(cells) + " |")
        for extra in ("hr@10", "mae"):
            if not any(extra in per_key[k]["models"][m]["mean"] for k in keys
                       for m in per_key[k]["models"]):
                continue
            lines += ["", f"### {extra}", "", "| model | " + " | ".join(f"n={k}" for k in keys)
                      + " |", "|---|" + "---|" * len(keys)]
            for model in models:
                cells = [_cell(per_key[k]["models"].get(model), extra) for k in keys]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += _edges(result, log_name)
        lines.append("")
    if default:
        lines += [f"✓: {default} ≥ {target}× the best baseline at that n (mean over seeds).", ""]
    return "\n".join(lines)


def _edges(result: Mapping[str, Any], log_name: str) -> list[str]:
    """Lines naming every baseline whose tuned value on ``log_name`` sits at an end of its grid
    (:func:`evaluation.tuning.edge`), overall or for one support size: the bar may be set too
    low there."""
    found = []
    for run in result.get("runs", []):
        if run.get("log") != log_name:
            continue
        for name, tuned in (run.get("meta", {}).get("tuning") or {}).items():
            if tuned.get("edge"):
                found.append(f"{name} {tuned['params']} (seed {run.get('seed')}, "
                             f"{tuned['edge']} end)")
            for key, end in (tuned.get("key_edges") or {}).items():
                found.append(f"{name} at n={key} {tuned['per_key'][key]} (seed "
                             f"{run.get('seed')}, {end} end)")
    if not found:
        return []
    return ["", "**Tuned at an end of its grid** (the best value may lie beyond it): "
            + "; ".join(found) + "."]


def _cell(summary: Mapping[str, Any] | None, metric: str) -> str:
    if not summary or metric not in summary["mean"]:
        return "-"
    m, (lo, hi) = summary["mean"][metric], summary["ci95"][metric]
    return f"{m:.4f} [{lo:.4f}, {hi:.4f}]"


def plot(result: Mapping[str, Any], path: Path) -> None:
    """One panel per log: headline metric vs n, one line per model, interval bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = headline(result["protocol"])
    logs = list(result["results"])
    fig, axes = plt.subplots(1, max(len(logs), 1), figsize=(4.5 * max(len(logs), 1), 4),
                             squeeze=False)
    for ax, log_name in zip(axes[0], logs, strict=False):
        per_key = result["results"][log_name]
        keys = list(per_key)
        x = np.arange(len(keys))
        models = list(next(iter(per_key.values()))["models"]) if per_key else []
        for j, model in enumerate(models):
            means = [per_key[k]["models"][model]["mean"].get(metric, math.nan) for k in keys]
            cis = [per_key[k]["models"][model]["ci95"].get(metric, [math.nan, math.nan])
                   for k in keys]
            err = np.array([[m - c[0], c[1] - m] for m, c in zip(means, cis, strict=True)]).T
            style = "-" if not is_baseline(model) else "--"
            ax.errorbar(x + 0.03 * (j - len(models) / 2), means, yerr=err, marker="o",
                        linestyle=style, capsize=2, label=model)
        ax.set_xticks(x, [f"n={k}" for k in keys])
        ax.set_title(log_name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["SEED_FREE", "aggregate", "render", "run_matrix"]
