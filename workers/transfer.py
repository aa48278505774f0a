"""``kindling transfer``: train every cross-domain model on one split and print the table.

Reads a multi-domain log (a MovieLens ``ratings.csv`` is split into two domains by genre family,
see :mod:`streams.domains`), runs :func:`evaluation.crossdomain.run_crossdomain` and writes
``results.json`` + ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from schemas import Interaction, Item

FORMATS = ("auto", "movielens", "generic", "amazon", "douban")


def add_parser(sub: argparse._SubParsersAction,
               settings_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the sub-command (``settings_flags`` adds the shared ``--<setting>`` flags)."""
    p = sub.add_parser("transfer", help="cross-domain cold-start evaluation of the transfer models")
    p.add_argument("logs", nargs="+", help="log file(s); MovieLens ratings.csv = genre split")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--domain-column", default="domain", help="generic logs: the domain column")
    p.add_argument("--source", default=None,
                   help="source domain (default: 'source' for the MovieLens split, else the "
                        "domain with more events)")
    p.add_argument("--target", default=None, help="target domain (default: the other one)")
    p.add_argument("--models", default=None,
                   help="comma-separated registry names (non-transfer ones = target-only; "
                   "default: every transfer learner and proto)")
    p.add_argument("--shots", default="0,1,3", help="target events in the support")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--out", required=True, help="directory for results.json and table.md")
    settings_flags(p)
    p.set_defaults(func=cmd_transfer)


def read_events(paths: list[str], fmt: str, domain_column: str) -> tuple[list[Interaction],
                                                                         list[Item]]:
    """Events of every log (merged in time order) and, for MovieLens, the movie catalog."""
    from streams import domains
    from streams.sources import read_items

    logs, items = [], []
    for raw in paths:
        path = Path(raw)
        kind = fmt
        if kind == "auto":
            name = path.name.lower()
            kind = ("movielens" if name == "ratings.csv" else
                    "douban" if name.endswith("reviews_cleaned.txt") else
                    "amazon" if name.startswith("ratings_") else "generic")
        if kind == "movielens":
            logs.append(domains.read_movielens_domains(path))
            movies = path.parent / "movies.csv"
            items += read_items(movies, tags=False).items if movies.is_file() else []
        elif kind == "amazon":
            logs.append(domains.read_amazon(path))
        elif kind == "douban":
            logs.append(domains.read_douban(path))
        else:
            logs.append(domains.read_domain_log(path, domain_column=domain_column))
    return domains.merge(logs), items


def cmd_transfer(args: argparse.Namespace) -> int:
    import torch

    from evaluation.crossdomain import run_crossdomain, table, write_results
    from models.transfer import TRANSFER_LEARNERS
    from models.transfer.training import transfer_domains
    from streams import domains
    from workers.flags import settings_from

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_from(args)
    events, items = read_events(args.logs, args.format, args.domain_column)
    counts = Counter(e.domain for e in events)
    source, target = transfer_domains(counts)
    if set(counts) == {domains.SOURCE_DOMAIN, domains.TARGET_DOMAIN}:  # the MovieLens genre split
        source, target = domains.SOURCE_DOMAIN, domains.TARGET_DOMAIN
    source, target = args.source or source, args.target or target
    if counts[source] == 0 or counts[target] == 0:
        raise SystemExit(f"need events in both domains; found {dict(counts)}")
    models = args.models.split(",") if args.models else [*TRANSFER_LEARNERS, "proto"]
    results = run_crossdomain(
        events, items, source=source, target=target, models=models,
        shots=[int(k) for k in args.shots.split(",")], steps=args.steps, seed=settings.seed,
        test_fraction=args.test_fraction, settings=settings)
    out = write_results(results, args.out)
    print(json.dumps(results["protocol"]))
    print(table(results))
    print(f"written: {out / 'results.json'} {out / 'table.md'}")
    return 0
