"""UserSupport: de-duplication, bounded capacity, Bloom of evicted items, compact codec."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from engine.settings import Settings
from engine.support import BLOOM_BYTES, UserSupport, bloom_positions, event_hash
from schemas import Interaction, SchemaError

DEFAULTS = Settings()
CAP = DEFAULTS.support_capacity
WINDOW = DEFAULTS.dedup_window
# format 4: format byte + varints (n_total, n_events, n_evicted, Bloom size, offset + 1)
HEADER_SMALL = 6  # every varint one byte (counts < 128, no offset)
NEWEST_TS = 8  # the newest event's timestamp (float64), when there are events
EVENT_FIXED = 17  # per event: hash, kind, value, ts offset (float32); then id length, id


def ev(n: int, item: str | None = None, kind: str = "rate", value: float = 4.5) -> Interaction:
    return Interaction(f"e{n}", "u1", item or f"i{n:05d}", kind, value, 1000.0 + n)


def filled(n: int, capacity: int = CAP, window: int = WINDOW) -> UserSupport:
    s = UserSupport()
    for i in range(n):
        assert s.add(ev(i), capacity, window)
    return s


def test_defaults_are_what_the_tests_assume() -> None:
    assert CAP == 20 and WINDOW > 0


def test_duplicate_event_id_is_ignored() -> None:
    s = filled(3)
    before = s.to_bytes()
    assert s.add(ev(1), CAP, WINDOW) is False
    # same id, different content: still a duplicate
    assert s.add(Interaction("e2", "u1", "other", "click", 1.0, 9.0), CAP, WINDOW) is False
    assert s.to_bytes() == before
    assert len(s) == 3 and s.n_total == 3


def test_duplicate_survives_codec() -> None:
    s = UserSupport.from_bytes(filled(3).to_bytes())
    assert s.add(ev(0), CAP, WINDOW) is False


def test_capacity_evicts_oldest_default_20() -> None:
    s = filled(CAP + 5)
    assert len(s) == CAP
    assert s.item_ids() == [f"i{n:05d}" for n in range(5, CAP + 5)]  # oldest -> newest
    assert s.n_total == CAP + 5
    assert [e.ts for e in s] == sorted(e.ts for e in s)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        UserSupport().add(ev(0), 0, WINDOW)


def test_evicted_ids_deduplicated_within_window() -> None:
    capacity, window = 3, 4
    s = filled(3 + window, capacity, window)  # evicted e0..e3
    for n in range(window):
        assert s.add(ev(n), capacity, window) is False, n
    # one more eviction pushes e0 out of the window: it is then accepted again
    assert s.add(ev(100), capacity, window)
    assert len(s.evicted_ids) == window
    assert event_hash("e0") not in s.evicted_ids
    assert s.add(ev(0), capacity, window) is True


def test_no_dedup_memory_when_window_zero() -> None:
    s = filled(4, capacity=2, window=0)
    assert s.evicted_ids == []
    assert s.add(ev(0), 2, 0) is True


def test_bloom_marks_evicted_items() -> None:
    catalog = [f"i{n:05d}" for n in range(200)]
    positions = bloom_positions(catalog)
    assert positions.shape == (200, 3)
    s = filled(CAP)
    assert s.seen_mask(positions) is None  # nothing evicted yet
    s = filled(CAP + 10)
    mask = s.seen_mask(positions)
    assert mask is not None and mask.dtype == bool and mask.shape == (200,)
    assert mask[:10].all()  # the evicted ones are all flagged
    # a Bloom filter may have false positives, but not many with 10 items in 1024 bits
    assert mask[CAP + 10 :].sum() <= 5
    # the mask survives the codec
    again = UserSupport.from_bytes(s.to_bytes()).seen_mask(positions)
    assert np.array_equal(mask, again)


def test_codec_round_trip_unicode() -> None:
    s = UserSupport()
    items = ["film-é", "ユーザー", "🙂🙂", "plain"]
    kinds = ["view", "click", "rate", "skip"]
    for n, (item, kind) in enumerate(zip(items, kinds, strict=True)):
        s.add(Interaction(f"e{n}", "u", item, kind, 0.5 * (n + 1), 1.7e9 + n), 3, 8)
    back = UserSupport.from_bytes(s.to_bytes())
    assert back.item_ids() == items[1:]
    assert [e.kind for e in back] == kinds[1:]
    assert [e.value for e in back] == [1.0, 1.5, 2.0]
    assert [e.ts for e in back] == [1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 3]
    assert back.evicted_ids == s.evicted_ids and back.bloom == s.bloom
    assert back.n_total == 4
    assert back.to_bytes() == s.to_bytes()


def test_empty_round_trip() -> None:
    assert UserSupport.from_bytes(None).events == []
    assert UserSupport.from_bytes(b"").to_bytes() == UserSupport().to_bytes()
    assert UserSupport.from_bytes(UserSupport().to_bytes()).n_total == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[:3],  # truncated header
        lambda raw: raw[:30],  # truncated inside the events
        lambda raw: b"\x09" + raw[1:],  # unknown format
        # columns: newest ts, 5 hashes, then 5 kinds: the first kind code made unknown
        lambda raw: raw[: HEADER_SMALL + 48] + b"\x77" + raw[HEADER_SMALL + 49 :],
        lambda raw: raw[:HEADER_SMALL] + b"\xff" * 12,  # an event cut short by garbage
    ],
)
def test_corrupt_bytes_raise_schema_error(corrupt) -> None:
    raw = filled(5).to_bytes()
    with pytest.raises(SchemaError):
        UserSupport.from_bytes(corrupt(raw))


def test_endless_varint_is_corrupt() -> None:
    with pytest.raises(SchemaError):
        UserSupport.from_bytes(b"\x04" + b"\xff" * 40 + b"\x01")


def test_bad_utf8_item_raises_schema_error() -> None:
    raw = bytearray(UserSupport.from_bytes(filled(1).to_bytes()).to_bytes())
    # one event: newest ts, fixed columns, id length (1 byte)
    raw[HEADER_SMALL + NEWEST_TS + EVENT_FIXED + 1] = 0xFF  # first byte of the item id
    with pytest.raises(SchemaError):
        UserSupport.from_bytes(bytes(raw))


def test_truncated_bloom_is_corrupt() -> None:
    # (regression: a truncated Bloom used to be accepted and seen_mask raised IndexError)
    raw = filled(CAP + 2).to_bytes()
    # a catalog large enough that some item hashes into the missing last byte
    catalog = bloom_positions([f"i{n:05d}" for n in range(2000)])
    assert (catalog >= 8 * (BLOOM_BYTES - 1)).any()
    with pytest.raises(SchemaError):
        UserSupport.from_bytes(raw[:-1]).seen_mask(catalog)
    with pytest.raises(SchemaError):
        UserSupport.from_bytes(raw + b"\x00")  # trailing garbage


def test_long_valid_item_id_encodes() -> None:
    # 200 two-byte characters: 400 UTF-8 bytes, over format 1's 1-byte length field
    s = UserSupport()
    s.add(Interaction("e", "u", "é" * 200, "click"), CAP, WINDOW)
    assert UserSupport.from_bytes(s.to_bytes()).item_ids() == ["é" * 200]
    longest = "\U0001f600" * 256  # the wire's longest id: 256 four-byte characters
    s.add(Interaction("e2", "u", longest, "click"), CAP, WINDOW)
    assert UserSupport.from_bytes(s.to_bytes()).item_ids()[-1] == longest


def test_format_1_records_are_still_read() -> None:
    # A changelog written before the length field was widened must still restore.
    old_event = struct.Struct("<QBfdB")
    item = b"i1"
    raw = (struct.pack("<BIHHH", 1, 7, 1, 0, 0)
           + old_event.pack(event_hash("e1"), 2, 4.5, 1000.0, len(item)) + item)
    s = UserSupport.from_bytes(raw)
    assert s.n_total == 7 and s.item_ids() == ["i1"] and s.events[0].kind == "rate"
    assert s.seen_event(event_hash("e1"))
    assert s.last_offset == -1  # no watermark known: every offset is new
    back = UserSupport.from_bytes(s.to_bytes())  # rewritten as format 4
    assert s.to_bytes()[0] == 4 and back.item_ids() == ["i1"] and back.last_offset == -1


def test_format_2_records_are_still_read() -> None:
    item = "é".encode()
    raw = (struct.pack("<BIHHH", 2, 30, 1, 1, BLOOM_BYTES)
           + struct.pack("<QBfdH", event_hash("e9"), 1, 1.0, 5.0, len(item)) + item
           + struct.pack("<Q", event_hash("e3")) + bytes(range(BLOOM_BYTES)))
    s = UserSupport.from_bytes(raw)
    assert s.n_total == 30 and s.item_ids() == ["é"] and s.events[0].kind == "click"
    assert s.evicted_ids == [event_hash("e3")] and s.bloom == bytearray(range(BLOOM_BYTES))
    assert s.last_offset == -1
    back = UserSupport.from_bytes(s.to_bytes())
    assert (back.n_total, back.item_ids(), back.evicted_ids, back.bloom, back.last_offset) == (
        30, ["é"], s.evicted_ids, s.bloom, -1)


@pytest.mark.parametrize("last_offset", [-1, 0, 12345, 2**63 - 1])
def test_offset_watermark_round_trip(last_offset: int) -> None:
    s = filled(CAP + 3)
    s.last_offset = last_offset
    back = UserSupport.from_bytes(s.to_bytes())
    assert back.last_offset == last_offset
    assert back.item_ids() == s.item_ids() and back.evicted_ids == s.evicted_ids
    assert back.to_bytes() == s.to_bytes()


def test_format_3_records_are_still_read() -> None:
    item = b"i00007"
    raw = (struct.pack("<BIHHH", 3, 21, 1, 1, 0) + struct.pack("<q", 4242)
           + struct.pack("<QBfdH", event_hash("e7"), 2, 3.5, 1.6e9 + 0.25, len(item)) + item
           + struct.pack("<Q", event_hash("e1")))
    s = UserSupport.from_bytes(raw)
    assert (s.n_total, s.item_ids(), s.last_offset) == (21, ["i00007"], 4242)
    assert s.events[0].ts == 1.6e9 + 0.25 and s.evicted_ids == [event_hash("e1")]
    back = UserSupport.from_bytes(s.to_bytes())
    assert back.to_bytes()[0] == 4 and back.events[0].ts == 1.6e9 + 0.25  # newest: exact
    assert (back.n_total, back.item_ids(), back.last_offset, back.evicted_ids) == (
        21, ["i00007"], 4242, s.evicted_ids)


@pytest.mark.parametrize("ts", [0.0, -86400.5, 1.7e9 + 0.001, 4.1e9, 1e15])
def test_newest_timestamp_is_exact_older_ones_close(ts: float) -> None:
    s = UserSupport()
    older = [ts - 86400.0 * 365, ts - 3600.0004, ts + 60.25]  # out of order is allowed
    for n, t in enumerate([*older, ts]):
        s.add(Interaction(f"e{n}", "u", f"i{n}", "click", 1.0, t), CAP, WINDOW)
    back = [e.ts for e in UserSupport.from_bytes(s.to_bytes())]
    assert back[-1] == ts
    # float32 offsets from the newest: relative precision 2**-24 of the offset
    for got, want in zip(back[:-1], older, strict=True):
        assert abs(got - want) <= abs(ts - want) * 2**-23, (got, want)


def test_absurd_timestamp_spread_saturates_instead_of_crashing() -> None:
    # found by `kindling fuzz`: ts 1e300 beside 1.6e9 overflowed the float32 offset
    s = UserSupport()
    s.add(Interaction("a", "u", "i", "click", 1.0, 1.6e9), CAP, WINDOW)
    s.add(Interaction("b", "u", "j", "click", 1.0, 1e300), CAP, WINDOW)
    back = UserSupport.from_bytes(s.to_bytes())
    assert back.events[-1].ts == 1e300 and back.item_ids() == ["i", "j"]
    s.add(Interaction("c", "u", "k", "click", 1.0, 5.0), CAP, WINDOW)  # and the other way
    assert UserSupport.from_bytes(s.to_bytes()).events[1].ts == 5.0 + 3.4028234663852886e38


def test_codec_is_stable_once_written() -> None:
    s = filled(CAP + 5)
    once = UserSupport.from_bytes(s.to_bytes())
    assert UserSupport.from_bytes(once.to_bytes()).to_bytes() == once.to_bytes()


def test_twenty_events_are_compact() -> None:
    per_event = EVENT_FIXED + 1 + 6  # + id length + 6-byte id
    s = filled(CAP)
    assert len(s.to_bytes()) == HEADER_SMALL + NEWEST_TS + CAP * per_event
    s = filled(CAP + 50)  # steady state: full window of evicted ids and a Bloom
    # n_total (70) needs 1 varint byte, the Bloom size (128) 2
    bound = HEADER_SMALL + 1 + NEWEST_TS + CAP * per_event + 8 * WINDOW + BLOOM_BYTES
    assert len(s.to_bytes()) == bound
    assert bound < 0.9 * (19 + CAP * 29 + 8 * WINDOW + BLOOM_BYTES)  # format 3: 855 bytes


def test_truncated_format_3_item_id_is_corrupt() -> None:
    item = b"i00007"
    raw = (struct.pack("<BIHHH", 3, 1, 1, 0, 0) + struct.pack("<q", 5)
           + struct.pack("<QBfdH", event_hash("e"), 2, 3.5, 1.0, len(item)) + item)
    assert UserSupport.from_bytes(raw).item_ids() == ["i00007"]
    for cut in range(1, len(item) + 1):
        with pytest.raises(SchemaError):
            UserSupport.from_bytes(raw[:-cut])
