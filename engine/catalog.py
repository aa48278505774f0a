"""The item catalog: stable item ids ↔ dense rows, content features, domains.

Rows are append-only, so a row number never changes meaning while a worker runs. Features are
computed in batches and only for items whose content changed (the content digest is compared).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from engine.support import bloom_positions
from schemas import Item

log = logging.getLogger(__name__)


class ItemEncoder(Protocol):
    item_dim: int

    def encode_items(self, items: Sequence[Item]) -> np.ndarray: ...


def content_digest(item: Item) -> bytes:
    return hashlib.blake2b(item.content().encode("utf-8"), digest_size=16).digest()


class Catalog:
    def __init__(self, encoder: ItemEncoder) -> None:
        self.encoder = encoder
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.domains: list[str] = []
        self.has_content: list[bool] = []
        self._digests: list[bytes] = []
        self._features = np.zeros((0, encoder.item_dim), dtype=np.float32)
        self._bloom = np.zeros((0, 3), dtype=np.int64)
        self.version = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    @property
    def features(self) -> np.ndarray:
        return self._features[: len(self.ids)]

    @property
    def bloom(self) -> np.ndarray:
        return self._bloom[: len(self.ids)]

    def row(self, item_id: str) -> int | None:
        return self.index.get(item_id)

    def _append(self, item_id: str, domain: str) -> int:
        row = len(self.ids)
        if row >= self._features.shape[0]:
            cap = max(1024, 2 * self._features.shape[0])
            grown = np.zeros((cap, self._features.shape[1]), dtype=np.float32)
            grown[:row] = self._features[:row]
            self._features = grown
            bloom = np.zeros((cap, self._bloom.shape[1]), dtype=np.int64)
            bloom[:row] = self._bloom[:row]
            self._bloom = bloom
        self.ids.append(item_id)
        self.index[item_id] = row
        self.domains.append(domain)
        self.has_content.append(False)
        self._digests.append(b"")
        self._bloom[row] = bloom_positions([item_id])[0]
        return row

    def upsert(self, items: Sequence[Item]) -> int:
        """Add or update items; encode only new or changed content, in one batch. Returns how
        many items changed."""
        changed: list[tuple[int, Item]] = []
        for item in items:
            row = self.index.get(item.item_id)
            if row is None:
                row = self._append(item.item_id, item.domain)
            digest = content_digest(item)
            self.domains[row] = item.domain
            if self._digests[row] != digest:
                self._digests[row] = digest
                changed.append((row, item))
        if changed:
            vectors = self.encoder.encode_items([item for _, item in changed])
            rows = np.fromiter((r for r, _ in changed), dtype=np.int64, count=len(changed))
            self._features[rows] = vectors
            for r, item in changed:
                self.has_content[r] = bool(item.content())
            self.version += 1
        return len(changed)

    def ensure(self, item_id: str, domain: str = "default") -> int:
        """The row of ``item_id``, adding it without content if it is unknown (it then has only
        an id: a model that never saw it cannot represent it until the next retrain)."""
        row = self.index.get(item_id)
        if row is None:
            row = self._append(item_id, domain)
            self.version += 1
            log.debug("item %s unknown to the catalog: added without content", item_id)
        return row

    def domain_codes(self) -> tuple[np.ndarray, dict[str, int]]:
        names: dict[str, int] = {}
        codes = np.fromiter(
            (names.setdefault(d, len(names)) for d in self.domains), dtype=np.int64, count=len(self)
        )
        return codes, names
