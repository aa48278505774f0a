"""``kindling replay``: offline evaluation through the serving code path."""

from __future__ import annotations

import argparse

from engine.settings import Settings

#: What the few-shot and query-rank protocols compare: every tuned baseline and the learners.
QUALITY_MODELS = ("popularity", "popularity-recent", "itemknn", "ease", "sasrec",
                  "river-biasedmf", "hybrid", "fomaml")
#: The other protocols' default line-up.
DEFAULT_MODELS = ("random", "popularity", "popularity-recent", "river-biasedmf", "river-funkmf",
                  "itemknn", "ease", "fomaml", "maml", "proto", "matching", "sequence", "hybrid")


def _matrix(settings: Settings, args: argparse.Namespace, models: list[str],
            seeds: list[int]) -> int:
    from evaluation.matrix import render, run_matrix

    if getattr(args, "via_kafka", False):
        raise SystemExit("--via-kafka replays one log with one seed")
    options: dict = {"settings": settings}
    if args.steps is not None:
        options["train_steps"] = args.steps
    result = run_matrix(args.log, seeds=seeds, models=models, protocol=args.protocol,
                        out_dir=args.out, default_learner=settings.learner,
                        progress=not args.no_progress, jobs=args.jobs, **options)
    print(render(result))
    print(f"matrix written to {args.out} (results.json, table.md, ndcg.png)")
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    from evaluation.replay import run_replay
    from evaluation.report import render_table

    models = args.models.split(",") if args.models else list(
        QUALITY_MODELS if args.protocol in ("few-shot", "query-rank") else DEFAULT_MODELS)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [settings.seed]
    if len(args.log) > 1 or len(seeds) > 1:
        return _matrix(settings, args, models, seeds)
    options = {"settings": settings, "progress": not args.no_progress}
    if getattr(args, "via_kafka", False):
        from ops.replay_kafka import via_kafka

        options["serve_via"] = via_kafka(workers=getattr(args, "worker_processes", 1))
    if args.steps is not None:
        options["train_steps"] = args.steps
    report = run_replay(
        None if args.log[0] == "synthetic" else args.log[0],
        protocol=args.protocol, models=models, out_dir=args.out, seed=settings.seed, **options,
    )
    print(render_table(report))
    print(f"report written to {args.out}")
    return 0
