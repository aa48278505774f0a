"""Replay reports: ``report.json``, ``report.md`` (baseline comparison) and PNG plots.

``report.json`` shape::

    {"results": {model: {key: {metric: value}}},   # key: support size ("1", "5", ...),
     "meta": {...},                                 #      prior-event bucket or "all"
     "latency_ms": {model: {"p50": ..., "p99": ..., "mean": ..., "n": ...}}}

e.g. ``report["results"]["fomaml"]["5"]["ndcg@10"]``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HEADLINE = "ndcg@10"
COUNTS = frozenset({"users", "events", "candidates"})  # sample sizes, not quality metrics
REFERENCE = "popularity"


def _keys(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Column keys in a natural order: numbers ascending, then the rest (``10+``, ``all``)."""
    keys = {k for per_model in results.values() for k in per_model}

    def order(k: str) -> tuple[int, float, str]:
        try:
            return (0, float(k), k)
        except ValueError:
            return (1, math.inf, k)

    return sorted(keys, key=order)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def render_table(report: dict[str, Any], metric: str = HEADLINE) -> str:
    """The headline table as plain text: ``metric`` per model × key, then the ratio to
    popularity (when it was run) and latency p50/p99 in ms."""
    results = report["results"]
    keys = _keys(results)
    ref = results.get(REFERENCE)
    name_w = max([len("model"), *(len(m) for m in results)])
    prefix = "n=" if report["meta"].get("protocol") == "few-shot" else ""
    head = f"{'model':<{name_w}}  " + "  ".join(f"{prefix + k:>9}" for k in keys)
    head += f"  {'p50 ms':>8}  {'p99 ms':>8}"
    lines = [f"{metric} ({report['meta'].get('protocol', '?')})", head, "-" * len(head)]
    for model, per_key in results.items():
        cells = [f"{_fmt(per_key.get(k, {}).get(metric)):>9}" for k in keys]
        lat = report.get("latency_ms", {}).get(model, {})
        lines.append(
            f"{model:<{name_w}}  "
            + "  ".join(cells)
            + f"  {_fmt(lat.get('p50'), 2):>8}  {_fmt(lat.get('p99'), 2):>8}"
        )
    if ref is not None:
        lines.append("")
        lines.append(f"ratio of {metric} to {REFERENCE}")
        for model, per_key in results.items():
            cells = [f"{_fmt(_ratio(per_key, ref, k, metric), 2):>9}" for k in keys]
            lines.append(f"{model:<{name_w}}  " + "  ".join(cells))
    return "\n".join(lines)


def _ratio(per_key: dict, ref: dict, key: str, metric: str) -> float:
    a = per_key.get(key, {}).get(metric)
    b = ref.get(key, {}).get(metric)
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return math.nan
    return a / b


def _markdown_table(report: dict[str, Any], metric: str) -> list[str]:
    results = report["results"]
    keys = _keys(results)
    ref = results.get(REFERENCE)
    lines = [
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for model, per_key in results.items():
        cells = []
        for k in keys:
            cell = _fmt(per_key.get(k, {}).get(metric))
            if ref is not None and model != REFERENCE:
                cell += f" ({_fmt(_ratio(per_key, ref, k, metric), 2)}×)"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict[str, Any], plots: dict[str, Path] | None = None) -> str:
    """``report.md``: headline comparison (ratio to popularity in parentheses), every metric,
    latency and the run's metadata."""
    meta = report["meta"]
    lines = [f"# Kindling replay: {meta.get('protocol')} on {meta.get('log')}", ""]
    lines += [
        f"Seed {meta.get('seed')}, {meta.get('events')} events; columns are the "
        "support size (few-shot), prior-event bucket (prequential) or `all`.",
        "",
    ]
    lines += [f"## {HEADLINE} (× {REFERENCE})", "", *_markdown_table(report, HEADLINE), ""]
    metric_names = sorted(
        {m for pm in report["results"].values() for row in pm.values() for m in row}
    )
    for metric in metric_names:
        if metric != HEADLINE and metric not in COUNTS:
            lines += [f"### {metric}", "", *_markdown_table(report, metric), ""]
    lines += [
        "## Latency (ms per recommendation)",
        "",
        "| model | p50 | p99 | mean | n |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, lat in report.get("latency_ms", {}).items():
        lines.append(
            f"| {model} | {_fmt(lat.get('p50'), 3)} | {_fmt(lat.get('p99'), 3)} | "
            f"{_fmt(lat.get('mean'), 3)} | {lat.get('n', 0)} |"
        )
    if "first_recommendation_success" in meta:
        lines += ["", "## First-recommendation success (hr@10 after the 1st event)", ""]
        for model, value in meta["first_recommendation_success"].items():
            lines.append(f"- {model}: {_fmt(value)}")
    for title, path in (plots or {}).items():
        lines += ["", f"![{title}]({Path(path).name})"]
    lines += ["", "## Meta", "", "```json", json.dumps(meta, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], out_dir: Path, metric: str = HEADLINE) -> dict[str, Path]:
    """PNG plots: ``metric`` vs key per model, and the latency histogram (from the in-memory
    ``report["_latency_samples"]``, which is not written to JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    results = report["results"]
    keys = _keys(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, per_key in results.items():
        ax.plot(
            keys, [per_key.get(k, {}).get(metric, math.nan) for k in keys], marker="o", label=model
        )
    ax.set_xlabel("support size" if report["meta"].get("protocol") == "few-shot" else "key")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    out[f"{metric} by model"] = out_dir / f"{metric.replace('@', '_at_')}.png"
    fig.tight_layout()
    fig.savefig(out[f"{metric} by model"], dpi=100)
    plt.close(fig)
    samples = report.get("_latency_samples") or {}
    fig, ax = plt.subplots(figsize=(6, 4))
    if samples:
        positive = [v for vals in samples.values() for v in vals if v > 0]
        lo, hi = (min(positive), max(positive)) if positive else (1e-3, 1.0)
        bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 40)
        for model, vals in samples.items():
            ax.hist([v for v in vals if v > 0], bins=bins, histtype="step", label=model)
        ax.set_xscale("log")
        ax.legend(fontsize="small")
    ax.set_xlabel("ms per recommendation")
    ax.set_ylabel("recommendations")
    out["latency"] = out_dir / "latency.png"
    fig.tight_layout()
    fig.savefig(out["latency"], dpi=100)
    plt.close(fig)
    return out


def jsonable(value: Any) -> Any:
    """Plain JSON types from dicts, lists, tuples, numpy arrays and scalars, tensors' items; NaN
    and inf become ``null`` so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy arrays, tensors
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    return value


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, plots and ``report.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    paths["json"].write_text(json.dumps(jsonable(public), indent=2, allow_nan=False))
    plots = plot(report, out)
    paths["markdown"].write_text(render_markdown(report, plots))
    paths.update({f"plot:{name}": p for name, p in plots.items()})
    log.info("report written to %s", out)
    return paths
