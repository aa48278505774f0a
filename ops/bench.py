"""``kindling bench``: benchmarks that print figures and write a JSON report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.settings import Settings


def bench_pipeline(settings: Settings, n_events: int) -> dict[str, Any]:
    """In-process events/s and per-event latency through Recommender.apply + rank (micro-batches
    of ``settings.batch_max``), on a trained model over a synthetic log; bytes per user of the
    support-set records."""
    from engine.catalog import Catalog
    from engine.features import HashingFeaturizer
    from engine.recommender import Recommender
    from engine.trainer import train_bundle
    from evaluation.synthetic import generate

    data = generate(n_users=3000, n_items=2000, events_per_user=(5, 30), seed=settings.seed)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    cut = len(data.events) // 2
    bundle = train_bundle(settings, data.events[:cut], catalog, steps=100).bundle
    rec = Recommender(settings, bundle, catalog)
    stream = data.events[cut:][:n_events]
    supports: dict[str, bytes] = {}
    latencies = []
    t0 = time.perf_counter()
    for i in range(0, len(stream), settings.batch_max):
        batch = stream[i : i + settings.batch_max]
        b0 = time.perf_counter()
        rec.process(batch, supports)
        latencies.append((time.perf_counter() - b0) * 1000)
    elapsed = time.perf_counter() - t0
    sizes = [len(v) for v in supports.values()]
    return {
        "events": len(stream),
        "events_per_s": len(stream) / elapsed,
        "batch_p50_ms": float(np.percentile(latencies, 50)),
        "batch_p99_ms": float(np.percentile(latencies, 99)),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "bytes_per_user": float(np.mean(sizes)) if sizes else 0.0,
        "batch_size": settings.batch_max,
        "catalog_items": len(catalog),
    }


def bench_encode_items(settings: Settings, items_path: str | None, n: int) -> dict[str, Any]:
    """Item texts/s of the transformer encoder (``--encoder``; default the packaged MiniLM) on
    ``n`` MovieLens items (titles + genres + tags) or, without the data, synthetic items."""
    import torch

    from engine.encoders import TransformerEncoder
    from evaluation.synthetic import generate
    from streams.sources import read_items

    default = Path(__file__).resolve().parents[2] / "shared/data/ml-latest-small/movies.csv"
    path = items_path or (str(default) if default.is_file() else None)
    items = read_items(path).items[:n] if path else generate(n_items=n, n_users=10).items
    torch.set_num_threads(max(1, settings.torch_threads))
    name = settings.encoder if settings.encoder not in ("", "hashing") else "minilm"
    encoder = TransformerEncoder(None if name == "minilm" else name)
    from engine.encoders import bench_encode

    return {**bench_encode(items, encoder), "source": path or "synthetic",
            "torch_threads": torch.get_num_threads()}


def run(settings: Settings, args: argparse.Namespace) -> int:
    table = ""  # a human-readable table, for the benchmarks that render one
    if args.what == "encode":
        n = 500 if args.quick else 3000
        result = bench_encode_items(settings, getattr(args, "items", None), n)
    elif args.what == "kafka" and getattr(args, "compare_storage", False):
        from ops.bench_kafka import bench_kafka_storage

        result = bench_kafka_storage(settings, n_events=1000 if args.quick else args.events,
                                     paced_events=500 if args.quick else 2000)
    elif args.what == "kafka":
        from ops.bench_kafka import COLUMNS, bench_kafka, render

        result = bench_kafka(
            settings, n_events=2000 if args.quick else args.events,
            paced_s=1.0 if args.quick else args.paced_s,
            columns=args.columns.split(",") if args.columns else COLUMNS,
        )
        table = render(result)
    elif args.what == "retrain":
        from ops.bench_retrain import bench_retrain

        result = bench_retrain(settings, rate=args.rate, baseline_s=args.baseline_s,
                               after_s=args.after_s)
    elif args.what == "online":
        from ops.bench_online import bench_online

        result = bench_online(settings, 2000 if args.quick else args.events)
    elif args.what == "produce":
        from ops.bench_produce import bench_produce

        result = bench_produce(settings, batches=20 if args.quick else 150,
                               batch_size=settings.batch_max)
    elif args.what == "adapt":
        from ops.bench_adapt import bench_adapt

        result = bench_adapt(settings.learner, seconds=3.0 if args.quick else 12.0,
                             neighbours=settings.itemitem_neighbours)
    else:
        result = bench_pipeline(settings, 2000 if args.quick else args.events)
    line = json.dumps(result, default=float)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    if args.json:
        print(line)
    else:
        if table:
            print(table)
        for key, value in result.items():
            if not isinstance(value, dict | list):
                print(f"{key:>24}: {value}")
    return 0
