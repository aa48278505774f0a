"""The learner protocol every cold-start learner implements.

Pure torch: tensors in, tensors out. No Kafka, no RocksDB, no asyncio. The worker, the replay
harness and the benchmarks all drive learners through exactly this interface, picked by name from
:data:`REGISTRY`.

Shapes
------
``N``  items in the item bank (the catalog), ``B`` users in a micro-batch, ``S`` padded support
length, ``F`` item content-feature width, ``A`` user attribute-feature width.

Lifecycle per micro-batch (what :mod:`engine` does)::

    prepared = learner.prepare(bank)                 # once per catalog/model version, cached
    state = learner.init_state(profiles)             # prior: attributes only (zero-shot)
    state = learner.adapt(state, support, prepared)  # few-shot: k inner steps / prototype / ...
    scores = learner.score(state, prepared)          # (B, N) for ranking
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

#: A user's state: a dict of tensors that all share the leading batch dimension ``B``.
State = dict[str, Tensor]


@dataclass(frozen=True)
class ItemBank:
    """What a learner knows about the catalog, as tensors.

    ``id_index[n]`` is the row of item ``n`` in the learner's trained id-embedding table, or ``-1``
    for an item the model has never seen in training (a new item: it is scored from ``features``
    alone). ``features[n]`` is the item's content vector (zeros when it has none).
    ``popularity[n]`` is a log-count prior the learner may use as a fallback.
    ``recency[n]`` is ``log1p`` of the item's exponentially decayed count as of now
    (:mod:`models.recency`): what is popular *recently*. In training it may be (B, N), each
    episode's counts as of that episode's time; ``None`` when the model version has none.
    """

    id_index: Tensor  # (N,) long
    features: Tensor  # (N, F) float32
    popularity: Tensor  # (N,) float32, log(1 + count) or zeros
    #: (N,) long domain code per item, or None when the catalog has one domain. Cross-domain
    #: learners read it to tell source from target items; single-domain learners ignore it.
    domains: Tensor | None = None
    #: (N,) or, in training only, (B, N) float32 log1p(decayed count); None: no recency signal.
    recency: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.id_index.shape[0])


@dataclass(frozen=True)
class SupportBatch:
    """Padded support sets for ``B`` users, oldest event first, newest last.

    ``items`` are rows of the :class:`ItemBank` (0 where padded; always check ``mask``).
    ``targets`` are in [0, 1] (reward: click/purchase 1, skip 0, rating rescaled).
    ``ratings`` hold the raw rating where the event was a rating, NaN elsewhere.
    """

    items: Tensor  # (B, S) long
    targets: Tensor  # (B, S) float32
    ratings: Tensor  # (B, S) float32
    mask: Tensor  # (B, S) bool

    @property
    def batch_size(self) -> int:
        return int(self.items.shape[0])

    @staticmethod
    def empty(batch_size: int) -> SupportBatch:
        z = torch.zeros(batch_size, 0)
        return SupportBatch(z.long(), z, z, z.bool())


@dataclass
class LearnerConfig:
    """Hyper-parameters shared by the learners; each learner reads what it needs."""

    n_items: int = 0  # rows of the trained id-embedding table (vocabulary size)
    feature_dim: int = 64  # F
    attribute_dim: int = 32  # A
    dim: int = 32  # latent width
    inner_steps: int = 2  # FOMAML/MAML inner steps at serve time
    inner_lr: float = 0.5
    rating_min: float = 0.5
    rating_max: float = 5.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Learner(abc.ABC, torch.nn.Module):
    """Base class: an ``nn.Module`` holding the *global* (meta-learned) parameters.

    Per-user fast weights live only in :data:`State` tensors: a learner never mutates its own
    parameters while adapting.
    """

    name: ClassVar[str] = "base"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__()
        self.config = config

    @abc.abstractmethod
    def prepare(self, bank: ItemBank) -> State:
        """Precompute per-item tensors (e.g. the (N, d) item matrix). Called once per catalog or
        model version; the result is passed back to :meth:`adapt` and :meth:`score`."""

    @abc.abstractmethod
    def init_state(self, profiles: Tensor) -> State:
        """Prior state for ``B`` users from their attribute features ``profiles`` (B, A); a row of
        zeros means "no attributes"."""

    @abc.abstractmethod
    def adapt(self, state: State, support: SupportBatch, prepared: State) -> State:
        """Return a new state adapted to each user's support set (no in-place mutation).
        Rows whose mask is all False keep their prior."""

    @abc.abstractmethod
    def score(self, state: State, prepared: State) -> Tensor:
        """Ranking scores (B, N) for every item of the bank; higher is better."""

    def predict_rating(self, state: State, prepared: State, items: Tensor) -> Tensor:
        """Predicted raw ratings (B, Q) for item rows ``items`` (B, Q). Default: a monotone map
        of the ranking score into the rating range."""
        s = torch.gather(self.score(state, prepared), 1, items)
        lo, hi = self.config.rating_min, self.config.rating_max
        return lo + (hi - lo) * torch.sigmoid(s)


LearnerFactory = Callable[[LearnerConfig], Learner]
REGISTRY: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    """Class decorator: make a learner selectable by its ``name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"learner name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def create(name: str, config: LearnerConfig) -> Learner:
    """Build a learner by registry name."""
    from models import learners  # noqa: F401  (registers the built-in learners)

    try:
        cls = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown learner {name!r}; known: {sorted(REGISTRY)}") from None
    return cls(config)
