"""``kindling transfer``: k-fold cross-domain evaluation of every transfer model beside the
target-domain baselines; prints the table and writes ``results.json`` + ``table.md``.

Reads a multi-domain log: Douban ``<domain>_ratings.dat`` files (or their folder), a MovieLens
``ratings.csv`` (split into two domains by genre family), Amazon or Douban review files, or a
generic CSV/JSONL with a domain column (see :mod:`streams.domains`), then runs
:func:`evaluation.crossdomain.run_crossdomain`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from schemas import Interaction, Item

FORMATS = ("auto", "movielens", "generic", "amazon", "douban", "douban-ratings")


def add_parser(sub: argparse._SubParsersAction,
               settings_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the sub-command (``settings_flags`` adds the shared ``--<setting>`` flags)."""
    p = sub.add_parser("transfer", help="cross-domain cold-start evaluation of the transfer models")
    p.add_argument("logs", nargs="+", help="log file(s) or a folder of Douban <domain>_ratings.dat "
                                           "files; MovieLens ratings.csv = genre split")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--domain-column", default="domain", help="generic logs: the domain column")
    p.add_argument("--source", default=None,
                   help="source domain (default: the transfer_source_domain setting, else "
                        "'source' for the MovieLens split, else the domain with more events)")
    p.add_argument("--target", default=None,
                   help="target domain (default: the transfer_target_domain setting, else the "
                        "other one)")
    p.add_argument("--models", default=None,
                   help="comma-separated: popularity, itemknn, transfer learners, single-domain "
                        "learners (trained and served on target events only); default: the "
                        "baselines, every transfer learner and fomaml")
    p.add_argument("--shots", default="0,1,3,5", help="target events in the support")
    p.add_argument("--steps", type=int, default=300, help="training steps of the learned models")
    p.add_argument("--folds", type=int, default=5, help="folds over the users in both domains")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (folds are re-dealt)")
    p.add_argument("--min-source", type=int, default=1, help="test users' least source events")
    p.add_argument("--min-target", type=int, default=1, help="test users' least target events")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--diagnose", action="store_true",
                   help="also report why the learned transfer models win or lose (k = 0): "
                        "held-out vs training-user NDCG, the item bias alone, user-term spread")
    p.add_argument("--out", required=True, help="directory for results.json and table.md")
    settings_flags(p)
    p.set_defaults(func=cmd_transfer)


def read_events(paths: list[str], fmt: str, domain_column: str, *,
                first: str | None = None) -> tuple[list[Interaction], list[Item]]:
    """Events of every log (merged in time order) and, for MovieLens, the movie catalog.
    Douban ratings files are merged whole, ``first``'s file first (see
    :func:`streams.domains.read_douban_ratings`)."""
    from streams import domains
    from streams.sources import douban_domain, read_items

    logs, items, douban = [], [], []
    for raw in paths:
        path = Path(raw)
        kind = fmt
        if kind == "auto":
            name = path.name.lower()
            kind = ("douban-ratings" if path.is_dir() or douban_domain(path) is not None else
                    "movielens" if name == "ratings.csv" else
                    "douban" if name.endswith("reviews_cleaned.txt") else
                    "amazon" if name.startswith("ratings_") else "generic")
        if kind == "douban-ratings":
            douban.append(path)
        elif kind == "movielens":
            logs.append(domains.read_movielens_domains(path))
            movies = path.parent / "movies.csv"
            items += read_items(movies, tags=False).items if movies.is_file() else []
        elif kind == "amazon":
            logs.append(domains.read_amazon(path))
        elif kind == "douban":
            logs.append(domains.read_douban(path))
        else:
            logs.append(domains.read_domain_log(path, domain_column=domain_column))
    if douban:
        found = {douban_domain(p) for p in domains.douban_rating_files(douban)}
        logs.append(domains.read_douban_ratings(douban, first=first if first in found else None))
    return domains.merge(logs), items


def cmd_transfer(args: argparse.Namespace) -> int:
    import torch

    from evaluation.crossdomain import (
        DEFAULT_MODELS,
        diagnostics_table,
        run_crossdomain,
        table,
        write_results,
    )
    from models.transfer.training import transfer_domains
    from streams import domains
    from workers.flags import settings_from

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_from(args)
    source = args.source or settings.transfer_source_domain or None
    target = args.target or settings.transfer_target_domain or None
    events, items = read_events(args.logs, args.format, args.domain_column, first=source)
    counts = Counter(e.domain for e in events)
    inferred_source, inferred_target = transfer_domains(counts)
    if set(counts) == {domains.SOURCE_DOMAIN, domains.TARGET_DOMAIN}:  # the MovieLens genre split
        inferred_source, inferred_target = domains.SOURCE_DOMAIN, domains.TARGET_DOMAIN
    if source and not target:
        target = next((d for d, _ in counts.most_common() if d != source), inferred_target)
    if target and not source:
        source = next((d for d, _ in counts.most_common() if d != target), inferred_source)
    source, target = source or inferred_source, target or inferred_target
    if counts[source] == 0 or counts[target] == 0:
        raise SystemExit(f"need events in both {source!r} and {target!r}; found {dict(counts)}")
    models = args.models.split(",") if args.models else list(DEFAULT_MODELS)
    results = run_crossdomain(
        events, items, source=source, target=target, models=models,
        shots=[int(k) for k in args.shots.split(",")], steps=args.steps,
        seeds=[int(s) for s in args.seeds.split(",")], folds=args.folds,
        min_source=args.min_source, min_target=args.min_target, settings=settings,
        diagnostics=args.diagnose, n_boot=args.bootstrap)
    out = write_results(results, args.out)
    print(json.dumps(results["protocol"]))
    print(table(results))
    if results.get("diagnostics"):
        print()
        print(diagnostics_table(results))
    print(f"written: {out / 'results.json'} {out / 'table.md'}")
    return 0
