"""Content cold start experiments on the replay harness's ``new-items`` protocol.

Every variant goes through :func:`evaluation.replay.split_new_items` and the protocol's own
scoring (:func:`evaluation.replay._new_items`): models train on events before the cut, and each
warm user's new items are ranked and scored against the new items they consumed after it.

Variants (``--variants``)
-------------------------
``random``, ``popularity``             harness baselines
``<learner>:hashing``                  learner trained on hashing features (joint content head)
``<learner>:minilm``                   learner trained on frozen MiniLM vectors (joint head)
``<learner>:minilm+fold``              + text→item-space ridge projection folded in
``<learner>:minilm+proto``             + new item = mean of its 10 nearest warm items
``<learner>:finetuned+fold``           MiniLM, last layer fine-tuned on training co-interactions
``<learner>:<path>+fold``              any local encoder folder (e.g. a fine-tuned one)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.settings import Settings
from schemas import Item

log = logging.getLogger(__name__)
FINETUNE_STEPS = 150


class PrecomputedEncoder:
    """Vectors computed once per encoder for the whole item file, reused by every variant (the
    catalog asks for them by item; unknown items get zeros, i.e. no content)."""

    def __init__(self, items: Sequence[Item], vectors: np.ndarray) -> None:
        self.item_dim = int(vectors.shape[1])
        self._index = {item.item_id: i for i, item in enumerate(items)}
        self._vectors = vectors

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        out = np.zeros((len(items), self.item_dim), dtype=np.float32)
        for row, item in enumerate(items):
            i = self._index.get(item.item_id)
            if i is not None:
                out[row] = self._vectors[i]
        return out


def _encoder_vectors(
    name: str, items: Sequence[Item], cache: dict[str, Any], train: Sequence[Any] = ()
) -> Any:
    """``minilm``, a model folder, or ``finetuned``: MiniLM with its last layer fine-tuned on
    co-interactions of the *training* events only (new items never occur in them)."""
    if name not in cache:
        from engine.encoders import TransformerEncoder, finetune_encoder

        enc = TransformerEncoder(None if name in ("minilm", "finetuned") else name, threads=1)
        if name == "finetuned":
            cache["finetune"] = finetune_encoder(enc, items, train, steps=FINETUNE_STEPS)
            log.info("fine-tuned: %s", cache["finetune"])
        t0 = time.perf_counter()
        vectors = enc.encode_items(items)
        log.info("encoded %d items with %s in %.1fs", len(items), name,
                 time.perf_counter() - t0)
        cache[name] = PrecomputedEncoder(items, vectors)
    return cache[name]


def run_new_items(
    log_path: str | None,
    variants: Sequence[str],
    *,
    new_item_fraction: float = 0.2,
    train_steps: int = 300,
    seed: int = 0,
    k_list: Sequence[int] = (5, 10, 20),
    synthetic: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from evaluation.replay import _new_items, load_log, make_runner, split_new_items
    from evaluation.runners import KindlingRunner
    from models.content import PrototypeItems, fold_projection

    data = load_log(log_path, seed=seed, synthetic=synthetic)
    train, new_items, targets = split_new_items(data.events, new_item_fraction)
    universe = sorted({i.item_id for i in data.items} | {e.item_id for e in train})
    cache: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for variant in variants:
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        enc_name = ""
        if ":" not in variant:
            runner: Any = make_runner(variant, data, universe, seed=seed, train_steps=train_steps)
            runner.fit(train)
        else:
            learner, spec = variant.split(":", 1)
            enc_name, _, post = spec.partition("+")
            settings = Settings(seed=seed)
            encoder = None
            if enc_name != "hashing":
                encoder = _encoder_vectors(enc_name, data.items, cache, train)
                settings = settings.replace(feature_dim=encoder.item_dim)
            runner = KindlingRunner(learner, data.items, data.profiles, settings=settings,
                                    steps=train_steps, seed=seed, encoder=encoder)
            runner.fit(train)
            bundle = runner.rec.bundle
            if post == "fold":
                info["fold"] = fold_projection(bundle.learner, bundle.bank(runner.catalog))
            elif post == "proto":
                bundle.learner = PrototypeItems(bundle.learner, k=10)
            elif post:
                raise ValueError(f"unknown post-processing {post!r} in {variant!r}")
            runner.rec.swap(bundle)
        row = _new_items(runner, train, new_items, targets, k_list)["all"]
        row["seconds"] = time.perf_counter() - t0
        if enc_name == "finetuned" and "finetune" in cache:
            info["finetune"] = cache["finetune"]
        results[variant] = {**row, **info}
        log.info("%s: ndcg@10=%.4f", variant, row.get("ndcg@10", float("nan")))
    meta = {"log": data.name, "train_events": len(train), "new_items": len(new_items),
            "eval_users": len(targets), "new_item_fraction": new_item_fraction,
            "train_steps": train_steps, "seed": seed}
    return {"results": results, "meta": meta}


def run_zero_shot_users(
    *,
    synthetic: dict[str, Any] | None = None,
    train_steps: int = 300,
    seed: int = 0,
    new_user_fraction: float = 0.3,
    k_list: Sequence[int] = (5, 10, 20),
) -> dict[str, Any]:
    """Zero-shot users on the synthetic log (planted: ``age_band``/``region`` predict the taste
    cluster): each new user's items are ranked *before any event* and scored against everything
    they consume. ``attributes``: the meta-trained attribute prior ``init_state(profile)``;
    ``no-attributes``: the same model with an all-zero profile (its learned global prior);
    ``popularity`` / ``random``: harness baselines over the same universe."""
    from engine.catalog import Catalog
    from engine.features import HashingFeaturizer
    from engine.trainer import train_bundle
    from evaluation import metrics
    from evaluation.replay import as_replay_log, make_runner, split_new_users
    from evaluation.synthetic import generate

    data = as_replay_log(generate(**{"seed": seed, "n_users": 1200, **(synthetic or {})}))
    train, new = split_new_users(data.events, new_user_fraction)
    settings = Settings(seed=seed)
    featurizer = HashingFeaturizer(settings.feature_dim, settings.attribute_dim)
    catalog = Catalog(featurizer)
    catalog.upsert(data.items)
    bundle = train_bundle(settings, train, catalog, steps=train_steps, profiles=data.profiles,
                          seed=seed).bundle
    users = list(new)
    relevant = [{e.item_id for e in new[u]} for u in users]
    universe = sorted({i.item_id for i in data.items} | {e.item_id for e in train})
    rows = torch.tensor([catalog.row(i) for i in universe])
    ids = np.asarray(universe)
    learner = bundle.learner
    prepared = learner.prepare(bundle.bank(catalog))
    k = max(k_list)
    results: dict[str, Any] = {}
    for variant in ("attributes", "no-attributes"):
        prof = np.stack([
            featurizer.encode_user(dict(data.profiles.get(u, {}))) if variant == "attributes"
            else np.zeros(settings.attribute_dim, np.float32) for u in users
        ])
        with torch.inference_mode():
            scores = learner.score(learner.init_state(torch.from_numpy(prof)), prepared)
            top = torch.topk(scores[:, rows], k, dim=1).indices.numpy()
        ranked = [ids[t].tolist() for t in top]
        results[variant] = metrics.mean_metrics(metrics.ranking_metrics(ranked, relevant, k_list))
    for name in ("popularity", "random"):
        runner: Any = make_runner(name, data, universe, seed=seed, train_steps=train_steps)
        runner.fit(train)
        ranked, _ = runner.cold_start([new[u] for u in users], 0, k)  # n=0: no events
        results[name] = metrics.mean_metrics(metrics.ranking_metrics(ranked, relevant, k_list))
    meta = {"log": "synthetic", "train_events": len(train), "new_users": len(users),
            "train_steps": train_steps, "seed": seed, "new_user_fraction": new_user_fraction}
    return {"results": results, "meta": meta}


BLEND_GRID = tuple(i / 10 for i in range(11))
#: support sizes that stand for each interaction-count bucket (< 5, 5–20, > 20) when fitting
BUCKET_SIZES = ((1, 3), (5, 10, 20), (25,))


def _set_blend(runner: Any, mode: str, weights: Sequence[float] | None = None) -> None:
    runner.settings = runner.settings.replace(blend=mode)
    runner.rec.settings = runner.settings
    if weights is not None:
        runner.rec.bundle.metadata["blend"] = list(weights)


def fit_blend(runner: Any, val: dict[str, list[Any]], k: int = 10) -> list[float]:
    """Per bucket, the content weight in :data:`BLEND_GRID` with the best mean NDCG@``k`` on the
    validation users' next events (few-shot episodes at that bucket's support sizes)."""
    from evaluation import metrics

    learned = []
    for sizes in BUCKET_SIZES:
        best_w, best = 0.0, -1.0
        for w in BLEND_GRID:
            _set_blend(runner, "learned", [w, w, w])
            vals = []
            for n in sizes:
                hist = [h for h in val.values() if len(h) > n]
                if not hist:
                    continue
                ranked, _ = runner.cold_start(hist, n, k)
                queries = [{e.item_id for e in h[n:]} for h in hist]
                vals.append(metrics.ranking_metrics(ranked, queries, (k,))[f"ndcg@{k}"].mean())
            score = float(np.mean(vals)) if vals else -1.0
            if score > best:
                best_w, best = w, score
        learned.append(best_w)
    return learned


def run_blend(
    log_path: str | None,
    *,
    encoder: str = "minilm",
    train_steps: int = 300,
    seed: int = 0,
    support_sizes: Sequence[int] = (1, 3, 5, 10, 20, 30),
    new_user_fraction: float = 0.2,
    val_fraction: float = 0.15,
) -> dict[str, Any]:
    """Hybrid bootstrap on the few-shot protocol: ``none`` (model only), ``fixed`` schedule and
    ``learned`` per-bucket weights (fitted on the latest-arriving ``val_fraction`` of warm users,
    whose events are then kept out of meta-training)."""
    from evaluation.replay import _few_shot, by_user, load_log, split_new_users
    from evaluation.runners import KindlingRunner

    data = load_log(log_path, seed=seed)
    train, new = split_new_users(data.events, new_user_fraction)
    warm = by_user(train)
    order = sorted(warm, key=lambda u: (warm[u][0].ts, u))
    val_users = set(order[int(len(order) * (1 - val_fraction)) :])
    fit_events = [e for e in train if e.user_id not in val_users]
    val = {u: warm[u] for u in sorted(val_users)}
    settings = Settings(seed=seed)
    enc = None
    if encoder != "hashing":
        enc = _encoder_vectors(encoder, data.items, {})
        settings = settings.replace(feature_dim=enc.item_dim)
    runner = KindlingRunner("fomaml", data.items, data.profiles, settings=settings,
                            steps=train_steps, seed=seed, encoder=enc)
    runner.fit(fit_events)
    runner.with_top_k(20, max(support_sizes))
    learned = fit_blend(runner, val)
    universe = {i.item_id for i in data.items} | {e.item_id for e in train}
    results: dict[str, Any] = {}
    for mode in ("none", "fixed", "learned"):
        _set_blend(runner, mode, learned)
        out, _ = _few_shot(runner, new, universe, support_sizes, (5, 10, 20), False, None)
        results[mode] = out
    meta = {"log": data.name, "encoder": encoder, "learned_weights": learned,
            "val_users": len(val), "new_users": len(new), "train_steps": train_steps,
            "seed": seed}
    return {"results": results, "meta": meta}


def markdown(report: dict[str, Any], metrics: Sequence[str] = ("ndcg@10", "hr@10", "mrr")) -> str:
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(m, float('nan')):.4f}"
                                                  for m in metrics) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.content", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["new-items", "zero-shot-users", "blend"])
    parser.add_argument("log", nargs="?", default=None,
                        help="ratings file (new-items, blend); zero-shot-users is synthetic")
    parser.add_argument("--variants", default="random,popularity,fomaml:hashing,fomaml:minilm,"
                        "fomaml:minilm+fold,fomaml:minilm+proto")
    parser.add_argument("--encoder", default="minilm", help="blend: hashing | minilm | a folder")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-item-fraction", type=float, default=0.2)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if args.what == "new-items":
        report = run_new_items(args.log, args.variants.split(","), train_steps=args.steps,
                               seed=args.seed, new_item_fraction=args.new_item_fraction)
        print(markdown(report))
    elif args.what == "zero-shot-users":
        report = run_zero_shot_users(train_steps=args.steps, seed=args.seed)
        print(markdown(report))
    else:
        report = run_blend(args.log, encoder=args.encoder, train_steps=args.steps,
                           seed=args.seed)
        for mode, rows in report["results"].items():
            print(mode, " ".join(f"n={n}:{r['ndcg@10']:.4f}" for n, r in rows.items()))
    print(json.dumps(report, default=float))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, default=float, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
