"""``kindling demo``: the whole product on an embedded default, finishing by itself.

Embedded broker (Tansu) → a model meta-trained on the synthetic log's warm users → a real worker
process → the new users' events streamed through Kafka → live recommendations printed → the hit
rate of those recommendations (is the user's next item in the top 10 made after the previous
event?) against a popularity ranking computed on the same warm users → the worker's own online
hit@K by support size, read from its ``/metrics``, model vs popularity.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.trainer import save_bundle, train_bundle
from evaluation.synthetic import generate
from ops.process import WorkerProcess
from schemas import User
from streams.broker import EmbeddedBroker, embedded_worker_settings, free_port
from streams.kafka import EventProducer, consume
from streams.topics import ensure_topics


def _split_new_users(events: list, fraction: float = 0.3) -> tuple[list, list]:
    first_seen: dict[str, float] = {}
    for e in events:
        first_seen.setdefault(e.user_id, e.ts)
    order = sorted(first_seen, key=first_seen.__getitem__)
    new = set(order[int(len(order) * (1 - fraction)) :])
    return [e for e in events if e.user_id not in new], [e for e in events if e.user_id in new]


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    data = generate(n_users=args.users, n_items=args.items_count, seed=args.seed)
    warm, new = _split_new_users(data.events)
    with tempfile.TemporaryDirectory(prefix="kindling-demo-") as tmp, EmbeddedBroker() as broker:
        settings = embedded_worker_settings(
            broker.url, data_dir=str(Path(tmp) / "data"), partitions=2, app_id="kindling-demo",
            seed=args.seed, metrics_port=free_port(), metrics_host="127.0.0.1",
        )
        n_new_users = len({e.user_id for e in new})
        say(f"[demo] broker {broker.bootstrap} (tansu, memory); {len(data.items)} items, "
            f"{len(warm)} warm events, {len(new)} events from {n_new_users} new users")
        catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
        catalog.upsert(data.items)
        result = train_bundle(settings, warm, catalog, steps=150, profiles=data.profiles,
                              seed=args.seed)
        path = save_bundle(result.bundle, settings.data_dir)
        say(f"[demo] meta-trained {settings.learner} on warm users in "
            f"{result.report.get('seconds', 0):.1f}s -> {path.name}")
        ensure_topics(settings)
        worker = WorkerProcess(settings, Path(tmp) / "worker.log").start()
        try:
            with EventProducer(settings) as producer:
                for user in data.users:
                    producer.user(User(user.user_id, user.attributes))
                worker.load_catalog(producer, data.items)  # before the interactions
                producer.interactions(new)
            recs = {}
            shown = 0
            deadline = max(10.0, args.seconds - (time.monotonic() - started) - 10)
            for _, raw in consume(settings, settings.topic("recommendations"), idle_timeout_s=10,
                                  max_messages=len(new), deadline_s=deadline):
                rec = json.loads(raw)
                recs[rec["source_event_id"]] = [i["item_id"] for i in rec["items"]]
                if shown < 5 and len(recs) % max(1, len(new) // 5) == 0:
                    shown += 1
                    top = ", ".join(i["item_id"] for i in rec["items"][:5])
                    say(f"[demo] user {rec['user_id']} after {rec['source_event_id']}: {top} ... "
                        f"({rec['model_version']})")
            online, lines = _online_from_metrics(settings.metrics_port, len(new))
        finally:
            worker.stop()
    hit, pop_hit, n = _hit_rates(warm, new, recs)
    say(f"[demo] {len(recs)}/{len(new)} events got a recommendation through Kafka")
    print(f"[demo] hit@10 for new users' next item: kindling {hit:.3f} vs popularity {pop_hit:.3f} "
          f"({hit / pop_hit if pop_hit else float('inf'):.2f}x) over {n} events, "
          f"{time.monotonic() - started:.0f}s", flush=True)
    say(f"[demo] the worker's online hit@{settings.top_k} (GET /metrics, "
        "kindling_online_*_total):")
    for line in lines:
        say(f"  {line}")
    print("[demo] online hit@10 by support size when the list was made "
          "(model vs popularity's list, live):", flush=True)
    print(f"  {'support':>8} {'events':>7} {'kindling':>9} {'popularity':>11} {'lift':>6}")
    for bucket, row in online.table().items():
        print(f"  {bucket:>8} {row['events']:>7} {row['model']:>9.3f} {row['popularity']:>11.3f} "
              f"{row['lift']:>5.2f}x", flush=True)
    return 0 if len(recs) == len(new) else 1


def _online_from_metrics(port: int, n_events: int, timeout: float = 15.0) -> tuple[Any, list[str]]:
    """The worker's online hit@K counters once every event is counted (they move after a
    batch's recommendations are delivered, so the last batch may lag the topic briefly)."""
    from workers.metrics import read_online

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            counts, lines = read_online(resp.read().decode())
        if counts.events.sum() + counts.unscored >= n_events or time.monotonic() > deadline:
            return counts, lines
        time.sleep(0.3)


def _hit_rates(warm: list, new: list, recs: dict[str, list[str]]) -> tuple[float, float, int]:
    popular = [item for item, _ in Counter(e.item_id for e in warm).most_common()]
    by_user = defaultdict(list)
    for e in new:
        by_user[e.user_id].append(e)
    hits = pop_hits = n = 0
    for events in by_user.values():
        seen: set[str] = set()
        for prev, nxt in zip(events, events[1:], strict=False):
            seen.add(prev.item_id)
            if prev.event_id not in recs:
                continue
            n += 1
            hits += nxt.item_id in recs[prev.event_id]
            pop_top = [i for i in popular if i not in seen][:10]
            pop_hits += nxt.item_id in pop_top
    return (hits / n if n else 0.0), (pop_hits / n if n else 0.0), n
