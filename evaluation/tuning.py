"""Choose a baseline's main hyper-parameter on training users only.

The few-shot protocol's new users are the test set, so nothing about them may pick a setting.
:func:`tune` repeats the protocol *inside* the training data: the training users who arrived last
become validation users (``evaluation.replay.split_latest_users``), the ranker is fitted on the
others' events with
each value of its ``TUNING`` grid (:data:`evaluation.baselines.REGISTRY`), and the value with the
best mean NDCG@10 over the support sizes wins; with a score per support size, a value is also
chosen for each size (the few-shot replay serves each size with its own). The caller then fits
on all training events with it. Kindling learners select their own settings the same way
inside ``train_bundle``.

A best value at either end of a grid (:func:`edge`) says the optimum may lie beyond it, i.e. the
baseline may be under-tuned and the bar too low; the quality matrix lists every such choice
under its tables. An end that is the parameter's own limit (``TUNING_LIMITS``, e.g. item-kNN's
``α = 1``) is not flagged. Ordered grids whose values cost more as they grow (SASRec's epochs)
stop once ``TUNING_PATIENCE`` values in a row score below the best (early stopping), so a long
grid costs only what the data needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evaluation import baselines
from schemas import Interaction

#: Fewer validation users than this and tuning keeps the ranker's default.
MIN_USERS = 10


def grid(name: str) -> tuple[str, tuple[Any, ...]] | None:
    """The ``(parameter, values)`` a baseline is tuned over, or ``None``."""
    factory = baselines.REGISTRY.get(name)
    tuning = getattr(factory, "TUNING", {}) or {}
    if not tuning:
        return None
    ((param, values),) = tuning.items()
    return param, tuple(values)


def limits(name: str) -> tuple[Any, Any]:
    """The ends of ``name``'s grid that are its parameter's own limits (``None``: not one)."""
    factory = baselines.REGISTRY.get(name)
    spec = grid(name)
    if spec is None:
        return None, None
    return tuple((getattr(factory, "TUNING_LIMITS", {}) or {}).get(spec[0], (None, None)))


def patience_of(name: str) -> int:
    """``TUNING_PATIENCE`` of ``name``: on an ordered grid, stop after this many values in a row
    score below the best so far (0: score every value)."""
    return int(getattr(baselines.REGISTRY.get(name), "TUNING_PATIENCE", 0) or 0)


def edge(name: str, value: Any) -> str | None:
    """``"low"``/``"high"`` when ``value`` is the first/last value of ``name``'s grid and that
    end is not the parameter's own limit: the best may lie beyond the grid, so the baseline may
    be under-tuned. ``None`` otherwise."""
    spec = grid(name)
    if spec is None or len(spec[1]) < 2:
        return None
    values, (low, high) = spec[1], limits(name)
    if value == values[0] and value != low:
        return "low"
    if value == values[-1] and value != high:
        return "high"
    return None


def tune(
    name: str,
    train: Sequence[Interaction],
    split: Callable[[Sequence[Interaction]], tuple[list[Interaction], Mapping[str, list]]],
    score: Callable[[Mapping[str, Any], list[Interaction], Mapping[str, list]],
                    float | Mapping[str, float]],
) -> dict[str, Any]:
    """Pick ``name``'s main hyper-parameter on ``train``.

    Parameters
    ----------
    name : str
        A baseline name.
    train : sequence of Interaction
        The protocol's training events (time order).
    split : callable
        ``split(train) -> (inner_train, validation_histories)``: the protocol's own split,
        applied inside the training data.
    score : callable
        ``score(params, inner_train, validation)`` (higher is better): fit the ranker with
        ``params`` on ``inner_train`` and evaluate it on the validation users. A float, or a
        mapping ``{key: score}`` (e.g. per support size): then the value is also chosen per key,
        among the values scored (early stopping follows the overall score), and the overall
        score is the mean over the keys.

    Returns
    -------
    dict
        ``{"params": {param: value}, "scores": {value: score}, "users": n, "edge": e}``;
        ``params`` is empty (the ranker's default) when there is no grid or too few validation
        users; ``edge`` is :func:`edge` of the chosen value (``"low"``, ``"high"`` or ``None``).
        With per-key scores also ``"per_key": {key: {param: value}}``, ``"key_scores":
        {key: {value: score}}`` and ``"key_edges": {key: edge}`` (keys whose edge is not None).
    """
    spec = grid(name)
    if spec is None:
        return {"params": {}, "scores": {}, "users": 0}
    param, values = spec
    inner, validation = split(train)
    if len(validation) < MIN_USERS or not inner:
        return {"params": {}, "scores": {}, "users": len(validation)}
    patience = patience_of(name)
    scores: dict[Any, float] = {}
    by_key: dict[str, dict[Any, float]] = {}
    best_score, worse = -math.inf, 0
    for value in values:
        got = score({param: value}, inner, validation)
        if isinstance(got, Mapping):
            for key, s in got.items():
                by_key.setdefault(str(key), {})[value] = float(s)
            finite_keys = [float(s) for s in got.values() if math.isfinite(s)]
            got = sum(finite_keys) / len(finite_keys) if finite_keys else math.nan
        scores[value] = got
        if math.isfinite(got) and got > best_score:
            best_score, worse = got, 0
        else:
            worse += 1
            if patience and worse >= patience:
                break  # an ordered grid past its optimum: the rest is not scored
    best = _best(scores)
    if best is None:
        return {"params": {}, "scores": {str(v): s for v, s in scores.items()},
                "users": len(validation)}
    out = {"params": {param: best}, "scores": {str(v): s for v, s in scores.items()},
           "users": len(validation), "edge": edge(name, best)}
    if by_key:
        per_key, key_edges = {}, {}
        for key, row in by_key.items():
            chosen = _best(row)
            if chosen is None:
                continue
            per_key[key] = {param: chosen}
            if end := edge(name, chosen):
                key_edges[key] = end
        out["per_key"] = per_key
        out["key_scores"] = {key: {str(v): s for v, s in row.items()}
                             for key, row in by_key.items()}
        out["key_edges"] = key_edges
    return out


def _best(scores: Mapping[Any, float]) -> Any:
    """The value with the highest finite score (ties: the first in grid order), or None."""
    finite = {v: s for v, s in scores.items() if math.isfinite(s)}
    return max(finite, key=lambda v: finite[v]) if finite else None
