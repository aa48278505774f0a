"""Cheap, deterministic content features: signed feature hashing of item and user fields.

This is the always-available featurizer (no model download, microseconds per item). The
transformer text encoder plugs in behind the same ``encode_items`` signature.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from schemas import Item

_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens_of(value: Any, prefix: str) -> Iterable[str]:
    if isinstance(value, list | tuple):
        for v in value:
            yield f"{prefix}={str(v).lower()}"
    elif isinstance(value, str) and "|" in value:
        for v in value.split("|"):
            yield f"{prefix}={v.lower()}"
    else:
        yield f"{prefix}={str(value).lower()}"


def _hash_into(tokens: Iterable[tuple[str, float]], dim: int) -> np.ndarray:
    vec = np.zeros(dim, dtype=np.float32)
    for token, weight in tokens:
        h = zlib.crc32(token.encode("utf-8"))
        sign = 1.0 if (h >> 31) & 1 else -1.0
        vec[h % dim] += sign * weight
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


class HashingFeaturizer:
    """Items: title/text words (weight 0.5) and attribute ``key=value`` tokens (weight 1);
    users: attribute ``key=value`` tokens. Output rows are L2-normalised; no content → zeros."""

    def __init__(self, item_dim: int = 64, user_dim: int = 32) -> None:
        self.item_dim = item_dim
        self.user_dim = user_dim

    def item_tokens(self, item: Item) -> list[tuple[str, float]]:
        words = _TOKEN.findall(f"{item.title} {item.text}".lower())
        toks = [(f"w={w}", 0.5) for w in words if not w.isdigit() or len(w) != 4]
        for key, value in item.attributes.items():
            toks.extend((t, 1.0) for t in _tokens_of(value, key.lower()))
        return toks

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        out = np.zeros((len(items), self.item_dim), dtype=np.float32)
        for row, item in enumerate(items):
            out[row] = _hash_into(self.item_tokens(item), self.item_dim)
        return out

    def encode_user(self, attributes: dict[str, Any]) -> np.ndarray:
        toks = [(t, 1.0) for k, v in attributes.items() for t in _tokens_of(v, k.lower())]
        return _hash_into(toks, self.user_dim)
