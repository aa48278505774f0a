"""A user's few-shot support set: bounded, de-duplicated by event id, compact on disk.

The support set is the only per-user state the serving path needs. It is stored as one compact
binary value per user (in a RocksDB-backed Faust table in the worker, a dict in replay), so the
de-duplication memory is written in the *same* changelog record as the event's effect: after a
crash, a redelivered event finds its own id and is not applied twice.

Ids alone remember only ``capacity + dedup_window`` events, and a restart after SIGKILLs under a
backlog can redeliver more than that (``kindling chaos``). So the record also keeps ``last_offset``,
the interactions-topic offset of the newest event applied: a user's events all come from one
partition (keyed by user id), in offset order, so any offset at or below it is a redelivery. The
watermark is only valid while the topic keeps its offsets: a deleted and recreated topic restarts
at 0 and its events would look redelivered (``KINDLING_OFFSET_DEDUP=false`` turns it off).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from schemas import Interaction, RatingScale
from schemas.errors import SchemaError

# Format 2 widened the item-id length field to 2 bytes: wire ids may be 256 characters, i.e. up
# to 1,024 UTF-8 bytes, which overflowed format 1's 1-byte field. Format 1 records are still read
# (a changelog written by an older worker must restore).
# Format 3 adds the offset watermark (int64) after the header; formats 1 and 2 read as -1.
_FORMAT = 3
_KIND_CODES = {"view": 0, "click": 1, "rate": 2, "purchase": 3, "skip": 4}
_KINDS = {v: k for k, v in _KIND_CODES.items()}
_HEADER = struct.Struct("<BIHHH")  # format, n_total, n_events, n_evicted_ids, bloom bytes
_EVENT = struct.Struct("<QBfdH")  # event hash, kind, value, ts, len(item_id) in bytes
_EVENT_BY_FORMAT = {1: struct.Struct("<QBfdB"), 2: _EVENT, 3: _EVENT}
_OFFSET = struct.Struct("<q")  # last_offset, format 3 on
MAX_ITEM_ID_BYTES = 0xFFFF
BLOOM_BYTES = 128
BLOOM_HASHES = 3


def event_hash(event_id: str) -> int:
    """A stable 64-bit digest of an event id (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _bloom_positions(item_id: str) -> list[int]:
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=4 * BLOOM_HASHES).digest()
    bits = BLOOM_BYTES * 8
    return [int.from_bytes(digest[4 * i : 4 * i + 4], "little") % bits for i in range(BLOOM_HASHES)]


def bloom_positions(item_ids: list[str]) -> np.ndarray:
    """(N, BLOOM_HASHES) bit positions for a catalog, computed once, for vectorised look-ups."""
    return np.array([_bloom_positions(i) for i in item_ids], dtype=np.int64).reshape(
        len(item_ids), BLOOM_HASHES
    )


@dataclass(slots=True)
class SupportEvent:
    event_hash: int
    item_id: str
    kind: str
    value: float
    ts: float

    def target(self, scale: RatingScale) -> float:
        if self.kind == "rate":
            return scale.to_unit(self.value)
        if self.kind == "skip":
            return 0.0
        if self.kind == "view":
            return self.value if 0.0 <= self.value <= 1.0 else 0.5
        return 1.0

    def rating(self) -> float:
        return self.value if self.kind == "rate" else float("nan")


@dataclass
class UserSupport:
    """Most recent ``capacity`` events (oldest first), ids of recently evicted events, a Bloom
    filter of evicted items (to keep excluding items seen long ago), a lifetime count, and the
    interactions-topic offset of the newest event processed (-1: none known)."""

    events: list[SupportEvent] = field(default_factory=list)
    evicted_ids: list[int] = field(default_factory=list)
    bloom: bytearray = field(default_factory=bytearray)
    n_total: int = 0
    last_offset: int = -1

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[SupportEvent]:
        return iter(self.events)

    def seen_event(self, digest: int) -> bool:
        return digest in self.evicted_ids or any(e.event_hash == digest for e in self.events)

    def add(self, event: Interaction, capacity: int, dedup_window: int) -> bool:
        """Append ``event``; evict the oldest beyond ``capacity``. Returns False (and changes
        nothing) when the event id was already applied."""
        if capacity < 1:
            raise ValueError("support capacity must be at least 1")
        digest = event_hash(event.event_id)
        if self.seen_event(digest):
            return False
        self.events.append(
            SupportEvent(digest, event.item_id, event.kind, float(event.value), float(event.ts))
        )
        self.n_total += 1
        while len(self.events) > capacity:
            old = self.events.pop(0)
            self._remember_item(old.item_id)
            if dedup_window > 0:
                self.evicted_ids.append(old.event_hash)
        if len(self.evicted_ids) > dedup_window:
            del self.evicted_ids[: len(self.evicted_ids) - dedup_window]
        return True

    def _remember_item(self, item_id: str) -> None:
        if not self.bloom:
            self.bloom = bytearray(BLOOM_BYTES)
        for pos in _bloom_positions(item_id):
            self.bloom[pos >> 3] |= 1 << (pos & 7)

    def item_ids(self) -> list[str]:
        return [e.item_id for e in self.events]

    def seen_mask(self, positions: np.ndarray) -> np.ndarray | None:
        """Boolean (N,) mask of catalog items probably evicted from this support set, given the
        catalog's :func:`bloom_positions`; ``None`` when nothing was ever evicted."""
        if not self.bloom:
            return None
        bits = np.unpackbits(np.frombuffer(bytes(self.bloom), dtype=np.uint8), bitorder="little")
        return bits[positions].all(axis=1)

    # ------------------------------------------------------------------------------ codec
    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(
                _FORMAT, self.n_total, len(self.events), len(self.evicted_ids), len(self.bloom)
            ),
            _OFFSET.pack(self.last_offset),
        ]
        for e in self.events:
            raw = e.item_id.encode("utf-8")
            if len(raw) > MAX_ITEM_ID_BYTES:
                raise SchemaError(f"item id is {len(raw)} UTF-8 bytes, over {MAX_ITEM_ID_BYTES}")
            parts.append(_EVENT.pack(e.event_hash, _KIND_CODES[e.kind], e.value, e.ts, len(raw)))
            parts.append(raw)
        parts.append(struct.pack(f"<{len(self.evicted_ids)}Q", *self.evicted_ids))
        parts.append(bytes(self.bloom))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserSupport:
        if not raw:
            return cls()
        try:
            fmt, n_total, n_events, n_evicted, n_bloom = _HEADER.unpack_from(raw, 0)
            layout = _EVENT_BY_FORMAT.get(fmt)
            if layout is None:
                raise SchemaError(f"unknown support-set format {fmt}")
            offset = _HEADER.size
            last_offset = -1
            if fmt >= 3:
                (last_offset,) = _OFFSET.unpack_from(raw, offset)
                offset += _OFFSET.size
            events = []
            for _ in range(n_events):
                digest, kind, value, ts, n = layout.unpack_from(raw, offset)
                offset += layout.size
                item_id = raw[offset : offset + n].decode("utf-8")
                offset += n
                events.append(SupportEvent(digest, item_id, _KINDS[kind], value, ts))
            evicted = list(struct.unpack_from(f"<{n_evicted}Q", raw, offset))
            offset += 8 * n_evicted
            bloom = bytearray(raw[offset : offset + n_bloom])
            if len(bloom) != n_bloom or offset + n_bloom != len(raw):
                raise SchemaError(
                    f"corrupt support-set record: {len(raw)} bytes, expected {offset + n_bloom}"
                )
        except (struct.error, KeyError, UnicodeDecodeError) as exc:
            raise SchemaError(f"corrupt support-set record: {exc}") from None
        return cls(events=events, evicted_ids=evicted, bloom=bloom, n_total=n_total,
                   last_offset=last_offset)
