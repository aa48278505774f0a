"""``kindling train``: offline meta-training from a log, promoted as the next model version."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine.catalog import Catalog
from engine.settings import Settings
from engine.trainer import save_bundle, train_bundle

log = logging.getLogger(__name__)

#: Offline meta-training steps (the live retrain timer uses KINDLING_RETRAIN_STEPS): the few-shot
#: NDCG on ml-latest-small new users was still rising at 1,500 (the replay harness's default).
OFFLINE_STEPS = 1500


def run_train(settings: Settings, args: argparse.Namespace) -> int:
    from engine.encoders import make_encoder, with_encoder_dim
    from evaluation.synthetic import generate
    from streams.sources import items_beside, read_items, read_log

    encoder = make_encoder(settings)  # hashing by default; KINDLING_ENCODER=minilm for MiniLM
    settings = with_encoder_dim(settings, encoder)
    catalog = Catalog(encoder)
    profiles = None
    if args.synthetic or not args.log:
        data = generate(seed=settings.seed)
        catalog.upsert(data.items)
        events, profiles = data.events, data.profiles
    else:
        items_path = items_beside(args.log)
        if items_path is not None:
            catalog.upsert(list(read_items(items_path)))
        events = list(read_log(args.log))
    steps = args.steps if args.steps is not None else OFFLINE_STEPS
    result = train_bundle(settings, events, catalog, steps=steps, profiles=profiles,
                          seed=settings.seed)
    if args.out:
        from models.checkpoint import save

        path = save(result.bundle.learner, Path(args.out), vocab=result.bundle.vocab,
                    version=Path(args.out).name, metadata={"report": result.report,
                    "popularity": result.bundle.popularity.tolist(),
                    **({} if result.bundle.recency is None
                       else {"recency": result.bundle.recency.tolist()})})
    else:
        path = save_bundle(result.bundle, settings.data_dir)
    summary = {k: v for k, v in result.report.items() if not isinstance(v, dict | list)}
    print(json.dumps({"model": str(path), **summary}))
    return 0
