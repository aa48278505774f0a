"""From events to a servable model version: the one training pipeline.

``kindling train``, the worker's periodic retrain agent, the replay harness and the demo all call
:func:`train_bundle`; promotion goes through :func:`promote_if_better`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.bundle import ModelBundle, next_version_name, versions_dir
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.settings import Settings
from models.base import LearnerConfig, create
from models.hybrid import HybridLearner, Selection, install, interactions, select
from models.recency import RecencySnapshots, decayed_counts
from models.training import (
    UserHistory,
    calibrate_recency,
    cold_start_batches,
    has_recency_weight,
    heldout_loss,
    latest_users,
    meta_train,
    pretrain_items,
    rescale_recency,
    should_promote,
)
from models.transfer import TRANSFER_LEARNERS
from models.transfer.training import fit_transfer, transfer_domains
from schemas import Interaction, RatingScale

log = logging.getLogger(__name__)


#: Meta-training defaults (``models.training.meta_train`` keywords), chosen on ml-latest-small
#: few-shot users: strong decoupled weight decay (few warm users, many item parameters),
#: supports of 0-10 events that are mostly a user's *first* events (what cold users look like),
#: and episodes drawn with a recency weight so item biases track what is popular now.
META_RECIPE: dict[str, Any] = {
    # After meta-training, rescale the prior's recency weight for NDCG@10 on this fraction of the
    # training users, the latest to arrive (models.training.calibrate_recency); 0 turns it off.
    "calibrate_recency": 0.2,
    "batch_users": 32,
    "lr": 0.01,
    "weight_decay": 1.0,
    "support_range": (0, 10),
    "p_first": 0.8,
    "recency_half_life": 3 * 365 * 86400.0,  # seconds (event timestamps are Unix seconds)
}

#: Per-learner changes to :data:`META_RECIPE`. The gradient-based learners train only on
#: first-event supports: with the recency prior, fomaml at p_first 0.8 adapted *away* from what
#: new users consume (its un-adapted prior scored higher at every support size); at 1.0 it
#: measured NDCG@10 .506/.476/.456/.421 vs .492/.467/.433/.399 at 1/3/5/10 events, maml
#: .479/.487/.475/.443 vs .434/.449/.435/.395. proto prefers 0.8 (.447/.441/.443/.405 vs
#: .404/.419/.421/.412, both with undecayed scalars). Their scalars (prior weights, inner
#: learning rates) are not decayed: MAE .82 vs .96 at 1 event, NDCG@10 equal within .006;
#: matching needs its attention scalars decayed (.521/.493/.463/.426 vs .416/.397/.405/.391).
LEARNER_RECIPES: dict[str, dict[str, Any]] = {
    "fomaml": {"p_first": 1.0, "decay_scalars": False},
    "maml": {"p_first": 1.0, "decay_scalars": False},
}

#: The hybrid's held-out probe users when recency calibration is off (else its fraction).
SELECTION_FRACTION = 0.2
#: At most this many held-out users (the latest) make the hybrid's choices.
SELECTION_USERS = 600
#: Support sizes of the held-out episodes the hybrid's gates are chosen on (each gate bucket of
#: models.hybrid.GATE_EDGES gets at least one).
SELECTION_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20)

#: Half-life, in events, of the decayed item counts behind ``ItemBank.recency`` (the learned
#: "popular lately" item prior, :mod:`models.recency`). Measured on ml-latest-small new users, a
#: ranker by such counts alone: NDCG@10 at 1 event .24 (1,000), .51 (2,000), .52 (3,000-5,000),
#: .51 (10,000) vs .41 for all-time counts. Stored in the learner config, so serving decays the
#: same way the model was trained.
RECENCY_HALF_LIFE_EVENTS = 3000.0


def learner_config(settings: Settings, n_items: int = 0, learner: str | None = None
                   ) -> LearnerConfig:
    """The learner hyper-parameters the settings fix; a transfer ``learner`` also gets the
    settings' ``[source, target]`` domains when they name both."""
    config = LearnerConfig(
        n_items=n_items,
        feature_dim=settings.feature_dim,
        attribute_dim=settings.attribute_dim,
        inner_steps=settings.inner_steps,
        rating_min=settings.rating_low,
        rating_max=settings.rating_high,
        seed=settings.seed,
    )
    if learner in TRANSFER_LEARNERS and configured_domains(settings):
        config.extra["domains"] = configured_domains(settings)
    return config


def configured_domains(settings: Settings) -> list[str] | None:
    """``[source, target]`` from ``transfer_source_domain``/``transfer_target_domain``, or None
    unless both are set."""
    source, target = settings.transfer_source_domain, settings.transfer_target_domain
    if source and target:
        if source == target:
            raise ValueError(f"transfer source and target domain are both {source!r}")
        return [source, target]
    return None


def transfer_domains_of(settings: Settings, events: Sequence[Interaction]) -> list[str]:
    """The ``[source, target]`` a transfer learner trains for: the settings' if they name both,
    else inferred from the events' domain counts
    (:func:`models.transfer.training.transfer_domains`)."""
    return configured_domains(settings) or transfer_domains(Counter(e.domain for e in events))


def histories_from_events(
    events: Sequence[Interaction],
    catalog: Catalog,
    settings: Settings,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    featurizer: HashingFeaturizer | None = None,
) -> dict[str, UserHistory]:
    """Group events by user (time order) into catalog-row histories; items are added to the
    catalog if needed."""
    featurizer = featurizer or HashingFeaturizer(settings.feature_dim, settings.attribute_dim)
    scale = RatingScale(settings.rating_low, settings.rating_high)
    per_user: dict[str, list[Interaction]] = defaultdict(list)
    # each event's position in the whole time-ordered stream (for as-of-then recency counts)
    positions: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(sorted(events, key=lambda e: (e.ts, e.event_id))):
        per_user[e.user_id].append(e)
        positions[e.user_id].append(i)
    out = {}
    for user_id, evs in per_user.items():
        rows = [catalog.ensure(e.item_id, e.domain) for e in evs]
        attrs = (profiles or {}).get(user_id)
        profile = (
            featurizer.encode_user(dict(attrs))
            if attrs
            else np.zeros(settings.attribute_dim, np.float32)
        )
        out[user_id] = UserHistory(
            items=torch.tensor(rows, dtype=torch.long),
            targets=torch.tensor([e.reward(scale) for e in evs], dtype=torch.float32),
            ratings=torch.tensor(
                [e.value if e.kind == "rate" else math.nan for e in evs], dtype=torch.float32
            ),
            profile=torch.from_numpy(profile),
            times=torch.tensor([e.ts for e in evs], dtype=torch.float64),
            positions=torch.tensor(positions[user_id], dtype=torch.long),
        )
    return out


@dataclass
class TrainResult:
    bundle: ModelBundle
    report: dict[str, Any]
    heldout_users: list[str]

    def __iter__(self):  # ``bundle, report = train_bundle(...)`` also works
        return iter((self.bundle, self.report))


def train_bundle(
    settings: Settings,
    events: Sequence[Interaction],
    catalog: Catalog,
    *,
    learner: str | None = None,
    steps: int = 300,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    pretrain_epochs: int = 2,
    version: str | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a new model version on ``events``; ``heldout_fraction`` of users are kept out of
    training to measure the held-out cold-start loss (reported as ``heldout_loss``)."""
    name = learner or settings.learner
    histories = histories_from_events(events, catalog, settings, profiles)
    users = sorted(histories)
    rng = np.random.default_rng(seed)
    rng.shuffle(users)
    domains = transfer_domains_of(settings, events) if name in TRANSFER_LEARNERS else None
    if domains is not None:
        # a transfer model is judged on users it can transfer for: held out among the users with
        # events in both domains (the others always train)
        both = set(overlap_users(events, domains))
        pool = [u for u in users if u in both]
        n_held = int(len(pool) * heldout_fraction) if len(pool) >= 20 else 0
        held = pool[:n_held]
        train = [u for u in users if u not in set(held)]
    else:
        n_held = int(len(users) * heldout_fraction) if len(users) >= 20 else 0
        held, train = users[:n_held], users[n_held:]
    vocab = _vocab(events, set(train))
    counts = _counts(events, vocab)
    torch.manual_seed(seed)
    config = learner_config(settings, len(vocab))
    stream = None
    if name not in TRANSFER_LEARNERS:
        config.extra["recency_half_life"] = RECENCY_HALF_LIFE_EVENTS
        histories, stream = _training_stream(histories, train)
    if domains is not None:  # cross-domain: the learner names its [source, target] domains
        config.extra["domains"] = domains
    model = create(name, config)
    bundle = ModelBundle(model, vocab, version or "candidate", np.log1p(counts).astype(np.float32))
    recency = None
    if stream is not None:
        # Serving starts from the counts at train end; each episode sees the counts as of its time.
        at_end = decayed_counts(stream, len(catalog), RECENCY_HALF_LIFE_EVENTS)
        bundle.recency = bundle.vocab_aligned(at_end, catalog)
        recency = RecencySnapshots(stream, len(catalog), RECENCY_HALF_LIFE_EVENTS)
    bank = bundle.bank(catalog)
    train_h = [histories[u] for u in train if len(histories[u]) >= 2]
    held_h = [histories[u] for u in held if len(histories[u]) >= 2]
    report: dict[str, Any] = {"learner": name, "users": len(train), "heldout_users": len(held),
                              "events": len(events), "items": len(vocab)}
    if name in TRANSFER_LEARNERS and train_h and steps > 0:
        model, trained = fit_transfer(name, train_h, bank, config, steps=steps, seed=seed,
                                      max_source=settings.support_capacity)
        bundle.learner = model  # fit_transfer builds the learner (LightGCN sizes its graph)
        report.update(trained)
    elif train_h and steps > 0:
        # a composite learner (the hybrid) meta-trains its core with the core's recipe
        core_name = getattr(model, "core", model).name
        merged = {**META_RECIPE, **LEARNER_RECIPES.get(core_name, {}), **(recipe or {})}
        calibrate = float(merged.pop("calibrate_recency", 0.0))

        def fit(target: Any, users: list[UserHistory], n_steps: int) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if pretrain_epochs:
                out["pretrain"] = pretrain_items(target, users, bank, epochs=pretrain_epochs,
                                                 seed=seed)
            trained = meta_train(target, users, bank, steps=n_steps, first_order=None,
                                 seed=seed, recency=recency, **merged)
            out.update({k: v for k, v in trained.items() if k != "losses"})
            return out

        hybrid = isinstance(model, HybridLearner)
        scale, selection = None, None
        seconds: dict[str, float] = {}
        fraction = calibrate if calibrate > 0 else (SELECTION_FRACTION if hybrid else 0.0)
        calibrating = calibrate > 0 and recency is not None and has_recency_weight(model)
        if fraction > 0 and (calibrating or hybrid):
            # Held out: a probe trained without the latest users makes its choices on them (a
            # model that has trained on them prefers its own weights to any prior): the recency
            # multiplier, and for the hybrid its item-item table, gates and rating shrinks.
            late = latest_users(train_h, fraction)
            held_out = {id(h) for h in late}
            kept = [h for h in train_h if id(h) not in held_out]
            if late and len(kept) >= len(late):  # else the probe would learn from too few
                t0 = time.perf_counter()
                probe = create(name, config)
                fit(probe, kept, max(1, steps // 2))
                probe.eval()
                seconds["probe"] = time.perf_counter() - t0
                if calibrating:
                    t0 = time.perf_counter()
                    scale = calibrate_recency(probe, late, bank, recency=recency)
                    rescale_recency(probe, float(scale["scale"]))
                    seconds["recency_calibration"] = time.perf_counter() - t0
                if hybrid:
                    t0 = time.perf_counter()
                    selection = _select_hybrid(probe, kept, late, bank, recency, settings)
                    seconds["hybrid_selection"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report.update(fit(model, train_h, steps))
        seconds["train"] = time.perf_counter() - t0
        if scale is not None:
            rescale_recency(model, float(scale["scale"]))
            report["recency_calibration"] = scale
            report["recency_scale"] = float(scale["scale"])  # a scalar for retrain.jsonl
        if hybrid and selection is not None:
            t0 = time.perf_counter()
            install(model, interactions(train_h, bank.id_index, len(vocab)), selection,
                    neighbours=settings.itemitem_neighbours, max_items=settings.itemitem_max_items)
            seconds["hybrid_install"] = time.perf_counter() - t0
            report["hybrid"] = selection.report
        report["phase_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
        log.info("trained %s: %s", name, report["phase_seconds"])
    model.eval()
    if train_h and steps > 0 and not isinstance(catalog.encoder, HashingFeaturizer):
        # A text encoder's vectors: fit text -> item space on the warm items and fold it into the
        # item tower, so a new item lands where warm items with similar text are (warm items'
        # vectors unchanged). Measured on MovieLens new items with MiniLM: NDCG@10 0.038 -> 0.093.
        from models.common import TowerLearner
        from models.content import fold_projection

        tower_learner = getattr(model, "core", model)  # the hybrid's item tower is its core's
        if isinstance(tower_learner, TowerLearner):
            with torch.no_grad():
                report["projection"] = fold_projection(tower_learner, bank, seed=seed)
    if domains is not None:
        report["domains"] = domains
        report["heldout_ndcg"] = (transfer_score(bundle, held_h, catalog, domains,
                                                 settings.support_capacity)
                                  if held_h else math.nan)
    else:
        report["heldout_loss"] = heldout_loss(model, held_h, bank) if held_h else math.nan
    bundle.metadata = {"report": report}
    return TrainResult(bundle, report, held)


def overlap_users(events: Sequence[Interaction], domains: Sequence[str]) -> list[str]:
    """Users with events in both ``domains`` (sorted)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.domain in domains:
            seen[e.user_id].add(e.domain)
    return sorted(u for u, d in seen.items() if len(d) == len(set(domains)))


def transfer_score(
    bundle: ModelBundle,
    histories: Sequence[UserHistory],
    catalog: Catalog,
    domains: Sequence[str],
    capacity: int,
    *,
    shots: Sequence[int] = (0,),
) -> float:
    """Mean NDCG@10 of ``bundle`` on held-out users' transfer episodes (support = their last
    ``capacity - k`` source events + first ``k`` target events, query = their later target
    events), ranking the target domain's items; averaged over ``shots``. Any learner can be
    scored, transfer or not (the serving version a transfer candidate must beat may be either):
    domains come from the catalog's names, not from the learner."""
    from models.transfer.episodes import episode_ndcg, transfer_episodes
    from models.transfer.learners import SOURCE, TARGET

    codes, names = catalog.domain_codes()
    lookup = np.array([TARGET if n == domains[1] else SOURCE if n == domains[0] else -1
                       for n in names], dtype=np.int64)
    domain = torch.from_numpy(lookup[codes]) if len(codes) else torch.zeros(0, dtype=torch.long)
    bank = bundle.bank(catalog)
    learner = bundle.learner
    values = []
    with torch.inference_mode():
        prepared = learner.prepare(bank)
        for k in shots:
            ep = transfer_episodes(histories, domain, k, capacity)
            if not ep.users:
                continue
            state = learner.init_state(torch.zeros(len(ep.users), learner.config.attribute_dim))
            scores = learner.score(learner.adapt(state, ep.support, prepared), prepared)
            values.append(float(episode_ndcg(scores, ep, domain == TARGET).mean()))
    return float(np.mean(values)) if values else math.nan


def promote_transfer_if_better(
    candidate: ModelBundle,
    incumbent: ModelBundle | None,
    heldout: Sequence[UserHistory],
    catalog: Catalog,
    data_dir: str | Path,
    *,
    domains: Sequence[str],
    capacity: int,
    tolerance: float = 0.0,
) -> tuple[bool, dict[str, float]]:
    """Score candidate and incumbent with :func:`transfer_score` on the same held-out users
    (users active in both domains) and save the candidate as the next version only if its NDCG@10
    is not lower than the incumbent's minus ``tolerance``. Returns (promoted, scores)."""
    new = transfer_score(candidate, heldout, catalog, domains, capacity)
    old = (transfer_score(incumbent, heldout, catalog, domains, capacity)
           if incumbent is not None and incumbent.vocab else None)
    scores = {"candidate": new, "incumbent": math.nan if old is None else old}
    if old is not None and math.isfinite(old) and not (math.isfinite(new)
                                                       and new >= old - tolerance):
        log.info("transfer candidate rejected: held-out NDCG@10 %.4f below %.4f", new, old)
        return False, scores
    save_bundle(candidate, data_dir, extra={"promotion": scores})
    return True, scores


def _select_hybrid(
    probe: HybridLearner,
    kept: Sequence[UserHistory],
    late: Sequence[UserHistory],
    bank: Any,
    recency: RecencySnapshots | None,
    settings: Settings,
) -> Selection:
    """The hybrid's choices on the held-out ``late`` users (at most :data:`SELECTION_USERS`),
    from ``probe`` (trained on ``kept`` only) and tables fitted on ``kept`` only."""
    users = list(late)[-SELECTION_USERS:]
    episodes = ((n, cs) for n in SELECTION_SIZES
                for cs in cold_start_batches(probe, users, bank, n, recency=recency))
    n_vocab = probe.config.n_items
    return select(probe, interactions(kept, bank.id_index, n_vocab), episodes, bank,
                  neighbours=settings.itemitem_neighbours, max_items=settings.itemitem_max_items)


def bundle_heldout_loss(
    bundle: ModelBundle, histories: Sequence[UserHistory], catalog: Catalog
) -> float:
    if not histories:
        return math.nan
    bundle.learner.eval()
    return heldout_loss(bundle.learner, histories, bundle.bank(catalog))


def promote_if_better(
    candidate: ModelBundle,
    incumbent: ModelBundle | None,
    heldout: Sequence[UserHistory],
    catalog: Catalog,
    data_dir: str | Path,
    *,
    tolerance: float = 0.0,
) -> tuple[bool, dict[str, float]]:
    """Compare both on the same held-out users; save the candidate as the next version only if
    it is not worse. Returns (promoted, losses)."""
    new = bundle_heldout_loss(candidate, heldout, catalog)
    old = bundle_heldout_loss(incumbent, heldout, catalog) if incumbent is not None else None
    losses = {"candidate": new, "incumbent": math.nan if old is None else old}
    if incumbent is not None and not incumbent.vocab:
        old = None  # an untrained bootstrap model never blocks the first trained one
    if not should_promote(new, old, tolerance=tolerance):
        log.info("candidate rejected: held-out loss %.4f worse than %.4f", new, old or math.nan)
        return False, losses
    save_bundle(candidate, data_dir, extra={"promotion": losses})
    return True, losses


def save_bundle(bundle: ModelBundle, data_dir: str | Path, extra: dict | None = None) -> Path:
    from models.checkpoint import save

    name = next_version_name(data_dir, bundle.learner.name)
    bundle.version = name
    metadata = {**bundle.metadata, **(extra or {}), "popularity": bundle.popularity.tolist()}
    if bundle.recency is not None:
        metadata["recency"] = bundle.recency.tolist()
    # Written under a temporary name and renamed: a watching worker never sees half a version.
    final = versions_dir(data_dir) / name
    tmp = versions_dir(data_dir) / f".tmp-{name}"
    save(bundle.learner, tmp, vocab=bundle.vocab, version=name, metadata=metadata)
    os.replace(tmp, final)
    log.info("promoted model version %s", name)
    return final


def _training_stream(
    histories: dict[str, UserHistory], train: Sequence[str]
) -> tuple[dict[str, UserHistory], np.ndarray]:
    """The training users' events as one time-ordered stream of catalog rows, and the histories
    with ``positions`` renumbered in that stream (held-out users' events are not in it)."""
    pos = [histories[u].positions for u in train]
    if not pos or any(p is None for p in pos):
        return histories, np.zeros(0, dtype=np.int64)
    flat = torch.cat(pos).numpy()  # type: ignore[arg-type]
    order = np.sort(flat)
    rows = torch.cat([histories[u].items for u in train]).numpy()[np.argsort(flat, kind="stable")]
    out = dict(histories)
    for u in train:
        h = histories[u]
        new_pos = torch.from_numpy(np.searchsorted(order, h.positions.numpy()))  # type: ignore[union-attr]
        out[u] = replace(h, positions=new_pos)
    return out, rows


def _vocab(events: Sequence[Interaction], users: set[str]) -> list[str]:
    seen: dict[str, None] = {}
    for e in events:
        if e.user_id in users:
            seen.setdefault(e.item_id, None)
    return list(seen)


def _counts(events: Sequence[Interaction], vocab: list[str]) -> np.ndarray:
    index = {item: i for i, item in enumerate(vocab)}
    counts = np.zeros(len(vocab), dtype=np.float64)
    for e in events:
        i = index.get(e.item_id)
        if i is not None:
            counts[i] += 1
    return counts
