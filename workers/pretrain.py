"""``kindling finetune-encoder``: fine-tune the text encoder's last layer on co-interactions."""

from __future__ import annotations

import argparse
import json

from engine.settings import Settings


def run_finetune(settings: Settings, args: argparse.Namespace) -> int:
    """Read a log and its item file, fine-tune (see :func:`engine.encoders.finetune_encoder`)
    and save the model folder to ``--out``; serve it with ``KINDLING_ENCODER=<that folder>``."""
    import torch

    from engine.encoders import TransformerEncoder, finetune_encoder
    from streams.sources import items_beside, read_items, read_log

    torch.set_num_threads(max(1, settings.torch_threads))
    events = read_log(args.log).events
    items_file = args.items or items_beside(args.log)
    if items_file is None:
        raise SystemExit("no item file beside the log: pass --items")
    items = read_items(items_file).items
    name = settings.encoder if settings.encoder not in ("", "hashing") else "minilm"
    encoder = TransformerEncoder(None if name == "minilm" else name)
    report = finetune_encoder(encoder, items, events, steps=args.steps, out=args.out,
                              seed=settings.seed)
    print(json.dumps(report))
    return 0


def run_pretrain(settings: Settings, args: argparse.Namespace) -> int:
    """Pretrain the item tower (``--method autoencoder|infonce|both``, ``--objective``), report
    the objective's held-out metrics, meta-train from it and compare the held-out cold-start
    loss with the same meta-training from the default quick initialiser
    (``models.training.pretrain_items``). ``--save`` writes the pretrained model as the next
    version under ``data_dir/models``."""
    import copy
    import math

    import numpy as np
    import torch

    from engine.bundle import ModelBundle
    from engine.catalog import Catalog
    from engine.encoders import make_encoder, with_encoder_dim
    from engine.trainer import _counts, _vocab, histories_from_events, learner_config, save_bundle
    from models.base import create
    from models.pretrain import autoencoder_pretrain, evaluate_objective, infonce_pretrain
    from models.training import heldout_loss, meta_train, pretrain_items

    torch.set_num_threads(max(1, settings.torch_threads))
    if args.synthetic or not args.log:
        from evaluation.synthetic import generate

        data = generate(seed=settings.seed)
        events, items, profiles = data.events, data.items, data.profiles
    else:
        from streams.sources import items_beside, read_items, read_log

        events = read_log(args.log).events
        found = args.items or items_beside(args.log)
        items, profiles = (read_items(found).items if found else []), {}
    encoder = make_encoder(settings)
    settings = with_encoder_dim(settings, encoder)
    catalog = Catalog(encoder)
    catalog.upsert(items)
    hist = histories_from_events(events, catalog, settings, profiles)
    users = sorted(hist)
    np.random.default_rng(settings.seed).shuffle(users)
    n_held = max(1, len(users) // 10)
    held_users, train_users = set(users[:n_held]), users[n_held:]
    train = [hist[u] for u in train_users if len(hist[u]) >= 2]
    held = [hist[u] for u in held_users if len(hist[u]) >= 2]
    vocab = _vocab(events, set(train_users))
    pop = np.log1p(_counts(events, vocab)).astype(np.float32)
    torch.manual_seed(settings.seed)
    base = create(settings.learner, learner_config(settings, len(vocab)))
    bank = ModelBundle(copy.deepcopy(base), vocab, "tmp", pop).bank(catalog)
    report: dict = {"users": len(train), "heldout_users": len(held), "items": len(vocab)}

    pretrained = copy.deepcopy(base)
    if args.method in ("autoencoder", "both"):
        report["autoencoder"] = {
            "before": evaluate_objective(pretrained, held, bank, seed=settings.seed),
            "train": autoencoder_pretrain(pretrained, train, bank, objective=args.objective,
                                          epochs=args.epochs, seed=settings.seed),
        }
        report["autoencoder"]["after"] = evaluate_objective(pretrained, held, bank,
                                                            seed=settings.seed)
    if args.method in ("infonce", "both"):
        report["infonce"] = infonce_pretrain(pretrained, train, bank, steps=args.infonce_steps,
                                             seed=settings.seed)
    default = copy.deepcopy(base)
    pretrain_items(default, train, bank, epochs=2, seed=settings.seed)
    for name, model in (("pretrained", pretrained), ("default_init", default)):
        meta_train(model, train, bank, steps=args.steps, first_order=None, seed=settings.seed)
        model.eval()
        loss = heldout_loss(model, held, bank) if held else math.nan
        report[f"heldout_loss_{name}"] = loss
    if args.save:
        bundle = ModelBundle(pretrained, vocab, "candidate", pop, {"report": report})
        report["saved"] = str(save_bundle(bundle, settings.data_dir))
    print(json.dumps(report, default=float))
    return 0
