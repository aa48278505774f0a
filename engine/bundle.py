"""A servable model version: a learner, its item vocabulary, its popularity prior, its version."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.catalog import Catalog
from models.base import ItemBank, Learner, LearnerConfig, create
from models.recency import recency_feature

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v(\d+)")


@dataclass
class ModelBundle:
    learner: Learner
    vocab: list[str]
    version: str
    popularity: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    metadata: dict = field(default_factory=dict)
    #: (V,) float32 exponentially decayed counts of the vocabulary at train end (None: the learner
    #: has no recency input). Served as they are, or, with ``settings.recency_online``, as the
    #: start of the Recommender's online counts (:class:`models.recency.DecayedCounts`).
    recency: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.learner.eval()
        self.vocab_index = {item_id: row for row, item_id in enumerate(self.vocab)}
        if self.popularity.shape[0] != len(self.vocab):
            self.popularity = np.zeros(len(self.vocab), dtype=np.float32)
        if self.recency is not None and self.recency.shape[0] != len(self.vocab):
            self.recency = np.zeros(len(self.vocab), dtype=np.float32)

    @property
    def recency_half_life(self) -> float | None:
        """Half-life (events) of the learner's recency input, or None if it has none."""
        half = self.learner.config.extra.get("recency_half_life")
        return float(half) if half else None

    @classmethod
    def untrained(cls, learner_name: str, config: LearnerConfig) -> ModelBundle:
        """A model with no training: id embeddings unused, content features only. Serves content
        similarity until the first retrain is promoted."""
        torch.manual_seed(config.seed)
        return cls(create(learner_name, config), [], "v0-untrained")

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        from models.checkpoint import load

        learner, vocab, meta = load(directory)
        stored = meta.get("metadata", {})
        popularity = np.asarray(stored.get("popularity", []), dtype=np.float32)
        recency = stored.get("recency")
        return cls(learner, vocab, str(meta.get("version", Path(directory).name)), popularity, meta,
                   None if recency is None else np.asarray(recency, dtype=np.float32))

    def _id_index(self, catalog: Catalog) -> np.ndarray:
        return np.fromiter(
            (self.vocab_index.get(i, -1) for i in catalog.ids), dtype=np.int64, count=len(catalog)
        )

    def vocab_aligned(self, counts: np.ndarray, catalog: Catalog) -> np.ndarray:
        """Per-catalog-row ``counts`` -> per-vocabulary-row (float32; 0 where not in catalog)."""
        id_index = self._id_index(catalog)[: counts.shape[0]]
        out = np.zeros(len(self.vocab), dtype=np.float32)
        known = id_index >= 0
        out[id_index[known]] = counts[: id_index.shape[0]][known]
        return out

    def recency_counts(self, catalog: Catalog) -> np.ndarray:
        """The train-end decayed counts per catalog row (0 for items outside the vocabulary)."""
        id_index = self._id_index(catalog)
        out = np.zeros(len(catalog), dtype=np.float64)
        known = id_index >= 0
        if self.recency is not None and self.recency.size:
            out[known] = self.recency[id_index[known]]
        return out

    def bank(self, catalog: Catalog, recency: np.ndarray | None = None) -> ItemBank:
        """The learner's view of ``catalog``. ``recency``: current decayed counts per catalog row
        (the Recommender's online state); default the bundle's train-end counts."""
        id_index = self._id_index(catalog)
        pop = np.zeros(len(catalog), dtype=np.float32)
        known = id_index >= 0
        if self.popularity.size:
            pop[known] = self.popularity[id_index[known]]
        return ItemBank(
            id_index=torch.from_numpy(id_index),
            features=torch.from_numpy(catalog.features.copy()),
            popularity=torch.from_numpy(pop),
            domains=self._domain_codes(catalog),
            recency=self._recency_input(catalog, recency),
        )

    def _recency_input(self, catalog: Catalog, counts: np.ndarray | None) -> torch.Tensor | None:
        if self.recency_half_life is None:
            return None
        counts = self.recency_counts(catalog) if counts is None else counts
        padded = np.zeros(len(catalog), dtype=np.float64)
        padded[: min(len(catalog), counts.shape[0])] = counts[: len(catalog)]
        return recency_feature(padded)

    def _domain_codes(self, catalog: Catalog) -> torch.Tensor:
        """Per-item domain codes. A cross-domain learner names its domains in
        ``config.extra["domains"]`` (source first, target second); its codes are positions in that
        list (-1 for any other domain), so they mean the same thing in training and serving
        whatever order the catalog met the domains in. Other learners get the catalog's codes."""
        codes, names = catalog.domain_codes()
        own = self.learner.config.extra.get("domains")
        if own and len(codes):
            lookup = np.array([own.index(n) if n in own else -1 for n in names], dtype=np.int64)
            codes = lookup[codes]
        return torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))


def versions_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "models"


def latest_version(data_dir: str | Path) -> Path | None:
    """The newest promoted version directory (``v<N>-...``) under ``data_dir/models``."""
    root = versions_dir(data_dir)
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _VERSION_DIR.match(p.name)) and (p / "meta.json").is_file()
    ]
    return max(found)[1] if found else None


def next_version_name(data_dir: str | Path, learner_name: str) -> str:
    latest = latest_version(data_dir)
    n = 1 if latest is None else int(_VERSION_DIR.match(latest.name).group(1)) + 1  # type: ignore[union-attr]
    return f"v{n}-{learner_name}-{time.strftime('%Y%m%dT%H%M%S')}"
