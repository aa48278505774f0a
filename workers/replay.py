"""``kindling replay``: offline evaluation through the serving code path."""

from __future__ import annotations

import argparse

from engine.settings import Settings


def run(settings: Settings, args: argparse.Namespace) -> int:
    from evaluation.replay import run_replay
    from evaluation.report import render_table

    models = args.models.split(",") if args.models else [
        "random", "popularity", "popularity-recent", "river-biasedmf", "river-funkmf", "itemknn",
        "fomaml", "maml", "proto", "matching", "sequence",
    ]
    options = {"settings": settings, "progress": not args.no_progress}
    if getattr(args, "via_kafka", False):
        from ops.replay_kafka import via_kafka

        options["serve_via"] = via_kafka(workers=getattr(args, "worker_processes", 1))
    if args.steps is not None:
        options["train_steps"] = args.steps
    report = run_replay(
        None if args.log == "synthetic" else args.log,
        protocol=args.protocol, models=models, out_dir=args.out, seed=settings.seed, **options,
    )
    print(render_table(report))
    print(f"report written to {args.out}")
    return 0
