"""``kindling bench online``: what the online hit@K bookkeeping costs the serving path.

The in-process pipeline (``Recommender.apply`` per event, ``rank`` per micro-batch of
``batch_max``) over the same stream, with and without :meth:`engine.online.OnlineHits.observe`
after each batch, alternated (without, with) ``repeats`` times in one run so both see the same
machine; the best run of each is kept. Also reported: the bookkeeping's own time per event, the
memory per remembered user (tracemalloc), and the in-process online hit@K table of the stream.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from engine.settings import Settings


def bench_online(settings: Settings, n_events: int, repeats: int = 3) -> dict[str, Any]:
    from engine.catalog import Catalog
    from engine.features import HashingFeaturizer
    from engine.online import HitCounts, OnlineHits
    from engine.recommender import Recommender
    from engine.trainer import train_bundle
    from evaluation.synthetic import generate

    data = generate(n_users=3000, n_items=2000, events_per_user=(5, 30), seed=settings.seed)
    catalog = Catalog(HashingFeaturizer(settings.feature_dim, settings.attribute_dim))
    catalog.upsert(data.items)
    cut = len(data.events) // 2
    bundle = train_bundle(settings, data.events[:cut], catalog, steps=100).bundle
    stream = data.events[cut:][:n_events]
    profile_of = data.profiles.get
    best = {"without": 0.0, "with": 0.0}
    observe_s = float("inf")
    counts = HitCounts()
    users = prior_rows = 0
    for _ in range(repeats):
        for mode in ("without", "with"):
            rec = Recommender(settings, bundle, catalog)
            hits = OnlineHits(settings.top_k, max(1, settings.online_hits_users))
            supports: dict[str, bytes] = {}
            spent = 0.0
            run_counts = HitCounts()
            t0 = time.perf_counter()
            for i in range(0, len(stream), settings.batch_max):
                snaps = [rec.apply(e, supports) for e in stream[i : i + settings.batch_max]]
                recs = rec.rank(snaps, profile_of)
                if mode == "with":
                    o0 = time.perf_counter()
                    run_counts += hits.observe(rec, snaps, recs, profile_of)
                    spent += time.perf_counter() - o0
            rate = len(stream) / (time.perf_counter() - t0)
            best[mode] = max(best[mode], rate)
            if mode == "with":
                observe_s = min(observe_s, spent)
                counts, users, prior_rows = run_counts, len(hits), hits.prior_rows
    # Memory per remembered user: the map built again for the same stream under tracemalloc.
    rec = Recommender(settings, bundle, catalog)
    hits = OnlineHits(settings.top_k, max(1, settings.online_hits_users))
    supports = {}
    batches = []
    for i in range(0, len(stream), settings.batch_max):
        snaps = [rec.apply(e, supports) for e in stream[i : i + settings.batch_max]]
        batches.append((snaps, rec.rank(snaps, profile_of)))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for snaps, recs in batches:
        hits.observe(rec, snaps, recs, profile_of)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    return {
        "events": len(stream),
        "batch_size": settings.batch_max,
        "catalog_items": len(catalog),
        "repeats": repeats,
        "events_per_s_without": best["without"],
        "events_per_s_with": best["with"],
        "with_over_without": best["with"] / best["without"],
        "observe_us_per_event": 1e6 * observe_s / len(stream),
        "users_remembered": users,
        "prior_ranking_rows": prior_rows,
        "bytes_per_remembered_user": grown / max(1, len(hits)),
        "unscored": counts.unscored,
        "online_hit_at_k": counts.table(),
    }
