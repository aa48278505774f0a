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
import math
import struct
from collections.abc import Iterable, Iterator
from itertools import accumulate, repeat
from typing import Any, NamedTuple

import numpy as np

from schemas import Interaction, RatingScale
from schemas.errors import SchemaError

# Format 2 widened the item-id length field to 2 bytes: wire ids may be 256 characters, i.e. up
# to 1,024 UTF-8 bytes, which overflowed format 1's 1-byte field. Format 3 added the offset
# watermark (int64) after the header. Format 4 (written now) is the compact one: counts, the
# watermark and id lengths are varints; timestamps are the newest event's (float64) plus every
# event's offset from it as float32 (exact for the recent events that matter, ~0.01 s a day back,
# ~2 s a year back); and the fixed-width fields are laid out in columns so one struct call packs
# them. A 12-event user with 6-byte item ids takes 305 bytes instead of 367, which is what keeps
# 1M users under 0.3 GiB (``kindling bench kafka``). Older formats are still read (a changelog
# written by an older worker must restore).
_FORMAT = 4
_KIND_CODES = {"view": 0, "click": 1, "rate": 2, "purchase": 3, "skip": 4}
_KINDS = {v: k for k, v in _KIND_CODES.items()}
_HEADER = struct.Struct("<BIHHH")  # formats 1-3: format, n_total, n_events, n_evicted, bloom
_EVENT = struct.Struct("<QBfdH")  # formats 2-3: event hash, kind, value, ts, len(item_id)
_EVENT_BY_FORMAT = {1: struct.Struct("<QBfdB"), 2: _EVENT, 3: _EVENT}
_OFFSET = struct.Struct("<q")  # last_offset, format 3
_F32_MAX = 3.4028234663852886e38  # the largest finite float32
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


def target_of(kind: str, value: float, scale: RatingScale) -> float:
    """The learning target of one support event (what the inner loop fits)."""
    if kind == "rate":
        return scale.to_unit(value)
    if kind == "skip":
        return 0.0
    if kind == "view":
        return value if 0.0 <= value <= 1.0 else 0.5
    return 1.0


def rating_of(kind: str, value: float) -> float:
    """The rating one support event carries (NaN unless it is a rating)."""
    return value if kind == "rate" else math.nan


class SupportEvent(NamedTuple):
    """One event of a support set, as :attr:`UserSupport.events` lists them (a view: the set
    itself keeps its events as columns)."""

    event_hash: int
    item_id: str
    kind: str
    value: float
    ts: float

    def target(self, scale: RatingScale) -> float:
        return target_of(self.kind, self.value, scale)

    def rating(self) -> float:
        return rating_of(self.kind, self.value)


class UserSupport:
    """Most recent ``capacity`` events (oldest first), ids of recently evicted events, a Bloom
    filter of evicted items (to keep excluding items seen long ago), a lifetime count, and the
    interactions-topic offset of the newest event processed (-1: none known).

    The events are kept as five columns (hashes, item ids, kinds, values, timestamps), the
    layout of the stored record: decoding, appending, encoding and reading a snapshot's items
    touch lists of numbers and strings, never an object per event. This runs for every user of
    every micro-batch. :attr:`events` builds :class:`SupportEvent` tuples for readers that want
    them."""

    __slots__ = ("hashes", "ids", "kinds", "values", "stamps", "evicted_ids", "bloom",
                 "n_total", "last_offset")

    def __init__(self, events: Iterable[SupportEvent] = (), evicted_ids: list[int] | None = None,
                 bloom: bytearray | None = None, n_total: int = 0,
                 last_offset: int = -1) -> None:
        rows = list(events)
        cols: list[Any] = ([list(c) for c in zip(*rows, strict=True)] if rows
                           else [[] for _ in range(5)])
        self.hashes: list[int] = cols[0]
        self.ids: list[str] = cols[1]
        self.kinds: list[str] = cols[2]
        self.values: list[float] = cols[3]
        self.stamps: list[float] = cols[4]
        self.evicted_ids: list[int] = [] if evicted_ids is None else evicted_ids
        self.bloom: bytearray = bytearray() if bloom is None else bloom
        self.n_total = n_total
        self.last_offset = last_offset

    @classmethod
    def _of_columns(cls, hashes: list[int], ids: list[str], kinds: list[str],
                    values: list[float], stamps: list[float], evicted_ids: list[int],
                    bloom: bytearray, n_total: int, last_offset: int) -> UserSupport:
        out = cls.__new__(cls)
        out.hashes, out.ids, out.kinds, out.values, out.stamps = hashes, ids, kinds, values, stamps
        out.evicted_ids, out.bloom = evicted_ids, bloom
        out.n_total, out.last_offset = n_total, last_offset
        return out

    @property
    def events(self) -> list[SupportEvent]:
        """The events, oldest first, as tuples (a new list: changing it changes nothing)."""
        return list(map(tuple.__new__, repeat(SupportEvent),
                        zip(self.hashes, self.ids, self.kinds, self.values, self.stamps,
                            strict=True)))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[SupportEvent]:
        return iter(self.events)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserSupport):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self) -> str:
        return (f"UserSupport(events={self.events!r}, evicted_ids={self.evicted_ids!r}, "
                f"bloom={bytes(self.bloom)!r}, n_total={self.n_total}, "
                f"last_offset={self.last_offset})")

    def copy(self) -> UserSupport:
        """An independent copy."""
        return self._of_columns(list(self.hashes), list(self.ids), list(self.kinds),
                                list(self.values), list(self.stamps), list(self.evicted_ids),
                                bytearray(self.bloom), self.n_total, self.last_offset)

    def seen_event(self, digest: int) -> bool:
        return digest in self.evicted_ids or digest in self.hashes

    def add(self, event: Interaction, capacity: int, dedup_window: int) -> bool:
        """Append ``event``; evict the oldest beyond ``capacity``. Returns False (and changes
        nothing) when the event id was already applied."""
        if capacity < 1:
            raise ValueError("support capacity must be at least 1")
        digest = event_hash(event.event_id)
        if self.seen_event(digest):
            return False
        self.hashes.append(digest)
        self.ids.append(event.item_id)
        self.kinds.append(event.kind)
        self.values.append(float(event.value))
        self.stamps.append(float(event.ts))
        self.n_total += 1
        if len(self.ids) > capacity:
            drop = len(self.ids) - capacity
            for item_id in self.ids[:drop]:
                self._remember_item(item_id)
            if dedup_window > 0:
                self.evicted_ids.extend(self.hashes[:drop])
            for column in (self.hashes, self.ids, self.kinds, self.values, self.stamps):
                del column[:drop]
        if len(self.evicted_ids) > dedup_window:
            del self.evicted_ids[: len(self.evicted_ids) - dedup_window]
        return True

    def _remember_item(self, item_id: str) -> None:
        if not self.bloom:
            self.bloom = bytearray(BLOOM_BYTES)
        for pos in _bloom_positions(item_id):
            self.bloom[pos >> 3] |= 1 << (pos & 7)

    def item_ids(self) -> list[str]:
        return list(self.ids)

    def seen_mask(self, positions: np.ndarray) -> np.ndarray | None:
        """Boolean (N,) mask of catalog items probably evicted from this support set, given the
        catalog's :func:`bloom_positions`; ``None`` when nothing was ever evicted."""
        if not self.bloom:
            return None
        bits = np.unpackbits(np.frombuffer(bytes(self.bloom), dtype=np.uint8), bitorder="little")
        return bits[positions].all(axis=1)

    # ------------------------------------------------------------------------------ codec
    def to_bytes(self) -> bytes:
        # Columnar, so the fixed-width fields pack in one struct call: [header varints]
        # [newest ts: float64] [hashes][kinds][values][ts offsets: float32] [id lengths] [ids]
        # [evicted ids] [Bloom]
        n = len(self.ids)
        parts = [bytes((_FORMAT,)), _varint(self.n_total), _varint(n),
                 _varint(len(self.evicted_ids)), _varint(len(self.bloom)),
                 _varint(self.last_offset + 1)]
        if n:
            item_ids = self.ids
            joined = "".join(item_ids)
            if joined.isascii():  # the usual case: one encode, byte lengths = string lengths
                blob = joined.encode("ascii")
                lengths = list(map(len, item_ids))
            else:
                raws = [i.encode("utf-8") for i in item_ids]
                blob = b"".join(raws)
                lengths = list(map(len, raws))
            longest = max(lengths)
            if longest > MAX_ITEM_ID_BYTES:
                raise SchemaError(f"item id is {longest} UTF-8 bytes, over {MAX_ITEM_ID_BYTES}")
            stamps = self.stamps
            newest = stamps[-1]
            offsets = list(map(newest.__sub__, stamps))  # newest - ts, per event
            if max(offsets) > _F32_MAX or min(offsets) < -_F32_MAX:
                # absurd but finite wire timestamps (1e300 next to 1.7e9): saturate, not crash
                offsets = [min(max(o, -_F32_MAX), _F32_MAX) for o in offsets]
            parts.append(struct.pack(
                f"<d{n}Q{n}B{n}f{n}f", newest, *self.hashes,
                *map(_KIND_CODES.__getitem__, self.kinds), *self.values, *offsets))
            # one byte per length while every id is under 128 bytes (the usual case)
            parts.append(bytes(lengths) if longest < 0x80 else b"".join(map(_varint, lengths)))
            parts.append(blob)
        parts.append(struct.pack(f"<{len(self.evicted_ids)}Q", *self.evicted_ids))
        parts.append(bytes(self.bloom))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserSupport:
        if not raw:
            return cls()
        try:
            if raw[0] == _FORMAT:
                return cls._from_format_4(raw)
            fmt, n_total, n_events, n_evicted, n_bloom = _HEADER.unpack_from(raw, 0)
            layout = _EVENT_BY_FORMAT.get(fmt)
            if layout is None:
                raise SchemaError(f"unknown support-set format {fmt}")
            offset = _HEADER.size
            last_offset = -1
            if fmt >= 3:
                (last_offset,) = _OFFSET.unpack_from(raw, offset)
                offset += _OFFSET.size
            cols: tuple[list[Any], ...] = ([], [], [], [], [])
            for _ in range(n_events):
                digest, kind, value, ts, n = layout.unpack_from(raw, offset)
                offset += layout.size
                if offset + n > len(raw):
                    raise SchemaError("corrupt support-set record: truncated item id")
                item_id = raw[offset : offset + n].decode("utf-8")
                offset += n
                for column, field_value in zip(cols, (digest, item_id, _KINDS[kind], value, ts),
                                               strict=True):
                    column.append(field_value)
            return cls._tail(raw, offset, cols, n_evicted, n_bloom, n_total, last_offset)
        except (struct.error, KeyError, UnicodeDecodeError, IndexError) as exc:
            raise SchemaError(f"corrupt support-set record: {exc!r}") from None

    @classmethod
    def _from_format_4(cls, raw: bytes) -> UserSupport:
        pos = 1
        n_total, pos = _read_varint(raw, pos)
        n, pos = _read_varint(raw, pos)
        n_evicted, pos = _read_varint(raw, pos)
        n_bloom, pos = _read_varint(raw, pos)
        last_offset, pos = _read_varint(raw, pos)
        cols: tuple[list[Any], ...] = ([], [], [], [], [])
        if n:
            fixed = struct.unpack_from(f"<d{n}Q{n}B{n}f{n}f", raw, pos)
            pos += 8 + 17 * n
            newest = fixed[0]
            head = raw[pos : pos + n]
            lengths: Iterable[int]
            if len(head) == n and max(head) < 0x80:
                lengths = head  # every length is a one-byte varint
                pos += n
            else:
                lengths = []
                for _ in range(n):
                    length, pos = _read_varint(raw, pos)
                    lengths.append(length)
            cuts = list(accumulate(lengths, initial=0))
            end = pos + cuts[-1]
            if end > len(raw):
                raise SchemaError("corrupt support-set record: truncated item id")
            blob = raw[pos:end]
            # one decode for the whole column when it is ASCII (offsets in bytes = in chars)
            text: str | bytes = blob.decode("ascii") if blob.isascii() else blob
            ids = list(map(text.__getitem__, map(slice, cuts, cuts[1:])))
            if text is blob:
                ids = [i.decode("utf-8") for i in ids]
            pos = end
            cols = (list(fixed[1 : n + 1]), ids,
                    list(map(_KINDS.__getitem__, fixed[n + 1 : 2 * n + 1])),
                    list(fixed[2 * n + 1 : 3 * n + 1]),
                    list(map(newest.__sub__, fixed[3 * n + 1 :])))
        return cls._tail(raw, pos, cols, n_evicted, n_bloom, n_total, last_offset - 1)

    @classmethod
    def _tail(cls, raw: bytes, offset: int, cols: tuple[list[Any], ...], n_evicted: int,
              n_bloom: int, n_total: int, last_offset: int) -> UserSupport:
        evicted = list(struct.unpack_from(f"<{n_evicted}Q", raw, offset))
        offset += 8 * n_evicted
        bloom = bytearray(raw[offset : offset + n_bloom])
        if len(bloom) != n_bloom or offset + n_bloom != len(raw):
            raise SchemaError(
                f"corrupt support-set record: {len(raw)} bytes, expected {offset + n_bloom}"
            )
        return cls._of_columns(*cols, evicted, bloom, n_total, last_offset)


# Small single-byte varints are the common case (counts, id lengths): precomputed.
_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    """Unsigned LEB128 (protobuf's varint)."""
    if n < 128:
        if n < 0:
            raise ValueError("varint of a negative number")
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); IndexError when truncated (reported as a corrupt record)."""
    b = raw[pos]
    if b < 128:
        return b, pos + 1
    n, shift = 0, 0
    while True:
        b = raw[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 128:
            return n, pos
        shift += 7
        if shift > 70:
            raise SchemaError("corrupt support-set record: varint too long")
