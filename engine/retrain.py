"""Periodic retraining: snapshot recent state, train off the event loop, promote only if not worse.

The worker's retrain timer (``workers/app.py``) writes a *snapshot* of the support sets, items
and user attributes it holds, then runs ``kindling retrain SNAPSHOT`` as a child process, so the
training loop never holds the worker's GIL or event loop. The child:

1. reads the snapshot back through the wire schemas (the same validation as live input);
2. trains a candidate with :func:`engine.trainer.train_bundle` (users split: 10% held out);
3. compares candidate and incumbent (the newest promoted version) on the *same* held-out users'
   few-shot loss, and saves the candidate as the next version only if it is not worse. A
   transfer learner (``settings.learner`` one of :data:`models.transfer.TRANSFER_LEARNERS`)
   holds out users active in both domains instead and is compared by NDCG@10 of their
   transfer episodes (:func:`engine.trainer.transfer_score`: last source events, no target
   event), promoted only if not lower;
4. appends the outcome as one JSON line to ``data_dir/retrain.jsonl``.

Running workers hot-swap to a promoted version through their model watcher. Snapshot files are
wire-format JSON lines: no pickle crosses the process boundary.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.bundle import ModelBundle, latest_version
from engine.catalog import Catalog
from engine.settings import Settings
from engine.support import UserSupport
from engine.trainer import (
    histories_from_events,
    promote_if_better,
    promote_transfer_if_better,
    train_bundle,
)
from schemas import (
    Interaction,
    Item,
    SchemaError,
    User,
    decode_interaction,
    decode_item,
    decode_user,
    encode,
)
from schemas.wire import RatingScale

log = logging.getLogger(__name__)

INTERACTIONS, ITEMS, USERS = "interactions.jsonl", "items.jsonl", "users.jsonl"
OUTCOMES = "retrain.jsonl"


@dataclass
class RetrainOutcome:
    promoted: bool
    reason: str
    version: str | None = None
    incumbent: str | None = None
    candidate_loss: float = math.nan
    incumbent_loss: float = math.nan
    #: what the two figures above are: "heldout_loss" (lower is better) or, for a transfer
    #: learner, "heldout_ndcg" (higher is better)
    metric: str = "heldout_loss"
    users: int = 0
    events: int = 0
    seconds: float = 0.0
    finished_at: float = 0.0  # Unix time
    report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = asdict(self)
        for key in ("candidate_loss", "incumbent_loss"):
            if not math.isfinite(doc[key]):
                doc[key] = None
        return json.dumps(doc, default=str)


def support_events(
    user_id: str, support: UserSupport, domain_of: Mapping[str, str]
) -> list[Interaction]:
    """A support-set record back as interactions (ids derived from the stored event hashes)."""
    return [
        Interaction(
            event_id=f"{user_id}#{e.event_hash:016x}",
            user_id=user_id,
            item_id=e.item_id,
            kind=e.kind,
            value=e.value,
            ts=e.ts,
            domain=domain_of.get(e.item_id, "default"),
        )
        for e in support.events
    ]


def write_snapshot(
    directory: str | Path,
    supports: Iterable[tuple[str, bytes]],
    items: Iterable[bytes],
    users: Iterable[tuple[str, Mapping[str, Any]]],
    domain_of: Mapping[str, str],
    max_users: int,
) -> tuple[Path, int, int]:
    """Write a snapshot; returns (directory, users, events). ``items`` are wire-format records."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    n_users = n_events = 0
    with (root / INTERACTIONS).open("wb") as out:
        for user_id, raw in supports:
            if n_users >= max_users:
                break
            try:
                events = support_events(user_id, UserSupport.from_bytes(raw), domain_of)
            except SchemaError as exc:
                log.error("snapshot: unreadable support set of user %s: %s", user_id, exc)
                continue
            for event in events:
                out.write(encode(event) + b"\n")
            n_users += 1
            n_events += len(events)
    with (root / ITEMS).open("wb") as out:
        for raw in items:
            out.write(raw.strip() + b"\n")
    with (root / USERS).open("wb") as out:
        for user_id, attributes in users:
            out.write(encode(User(user_id=user_id, attributes=dict(attributes))) + b"\n")
    return root, n_users, n_events


def read_snapshot(
    directory: str | Path, scale: RatingScale
) -> tuple[list[Interaction], list[Item], dict[str, dict[str, Any]]]:
    root = Path(directory)
    events = [decode_interaction(line, scale) for line in _lines(root / INTERACTIONS)]
    items = [decode_item(line) for line in _lines(root / ITEMS)]
    profiles = {}
    for line in _lines(root / USERS):
        user = decode_user(line)
        profiles[user.user_id] = dict(user.attributes)
    return events, items, profiles


def _lines(path: Path) -> Iterable[bytes]:
    if not path.exists():
        return []
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def retrain_from_snapshot(
    settings: Settings, directory: str | Path, *, seed: int | None = None
) -> RetrainOutcome:
    """Train a candidate on the snapshot and promote it only if its held-out loss is not worse
    than the incumbent's on the same users. The outcome is appended to
    ``data_dir/retrain.jsonl``."""
    started = time.perf_counter()
    scale = RatingScale(settings.rating_low, settings.rating_high)
    events, items, profiles = read_snapshot(directory, scale)
    users = {e.user_id for e in events}
    incumbent_path = latest_version(settings.data_dir)
    outcome = RetrainOutcome(False, "", incumbent=incumbent_path.name if incumbent_path else None,
                             users=len(users), events=len(events))
    if len(users) < settings.retrain_min_users:
        outcome.reason = (
            f"too few users: {len(users)} < retrain_min_users={settings.retrain_min_users}"
        )
        return _record(settings, outcome, started)
    from engine.encoders import make_encoder, with_encoder_dim

    encoder = make_encoder(settings)  # the worker's encoder: train on what will be served
    settings = with_encoder_dim(settings, encoder)
    catalog = Catalog(encoder)
    catalog.upsert(items)
    if seed is None:
        # A different seed each round: the next attempt after a rejection is a new candidate.
        seed = settings.seed + len(read_outcomes(settings.data_dir))
    result = train_bundle(settings, events, catalog, steps=settings.retrain_steps,
                          profiles=profiles, seed=seed)
    outcome.report = {k: v for k, v in result.report.items() if not isinstance(v, dict | list)}
    held_events = [e for e in events if e.user_id in set(result.heldout_users)]
    held = [h for h in histories_from_events(held_events, catalog, settings, profiles).values()
            if len(h) >= 2]
    incumbent = ModelBundle.load(incumbent_path) if incumbent_path else None
    domains = result.report.get("domains")
    if domains:  # a transfer learner: NDCG@10 on held-out users active in both domains
        promoted, losses = promote_transfer_if_better(
            result.bundle, incumbent, held, catalog, settings.data_dir, domains=domains,
            capacity=settings.support_capacity, tolerance=settings.retrain_tolerance)
        outcome.metric = "heldout_ndcg"
        what = "held-out transfer NDCG@10"
        better, worse = "not below", "below"
    else:
        promoted, losses = promote_if_better(result.bundle, incumbent, held, catalog,
                                             settings.data_dir,
                                             tolerance=settings.retrain_tolerance)
        what, better, worse = "held-out loss", "not worse than", "worse than"
    outcome.promoted = promoted
    outcome.candidate_loss = losses["candidate"]
    outcome.incumbent_loss = losses["incumbent"]
    outcome.version = result.bundle.version if promoted else None
    outcome.reason = f"{what} {better if promoted else worse} the incumbent's"
    return _record(settings, outcome, started)


def _record(settings: Settings, outcome: RetrainOutcome, started: float) -> RetrainOutcome:
    outcome.seconds = time.perf_counter() - started
    outcome.finished_at = time.time()
    path = Path(settings.data_dir) / OUTCOMES
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(outcome.to_json() + "\n")
    log.info("retrain %s: %s (%s: candidate %.4f, incumbent %.4f, %d users, %.1f s)",
             "promoted " + str(outcome.version) if outcome.promoted else "rejected", outcome.reason,
             outcome.metric, outcome.candidate_loss, outcome.incumbent_loss, outcome.users,
             outcome.seconds)
    return outcome


def read_outcomes(data_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(data_dir) / OUTCOMES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
