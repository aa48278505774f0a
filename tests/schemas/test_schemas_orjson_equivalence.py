"""The orjson fast path of the wire decoders accepts exactly what the standard parser accepts and
gives the same records; whatever it refuses gets the standard parser's reason, as before."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import SchemaError, decode_interaction, decode_item, decode_recommendation, wire


def standard(decoder, raw: bytes):
    """``decoder`` with orjson disabled: what the wire format gave before the fast path."""
    real = wire.orjson.loads

    def refuse(_raw):
        raise wire.orjson.JSONDecodeError("disabled", "", 0)

    wire.orjson.loads = refuse
    try:
        return outcome(decoder, raw)
    finally:
        wire.orjson.loads = real


def outcome(decoder, raw: bytes):
    with mock.patch.object(wire.time, "time", lambda: 1.0):  # the default ts of an event
        try:
            return "ok", decoder(raw)
        except SchemaError as exc:
            return "error", str(exc)


EDGE_CASES = [
    b'{"event_id":"e","user_id":123456789012345678901234567890,"item_id":"i","kind":"view"}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","context":{"n":1' + b"0" * 25
    + b"}}",
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"rate","value":1e400}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"rate","value":NaN}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","value":-Infinity}',
    b'\xef\xbb\xbf{"event_id":"e","user_id":"u","item_id":"i","kind":"view"}',
    b'{"event_id":"e\\ud800","user_id":"u","item_id":"i","kind":"view"}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","x":"a\x01b"}',
    b'{"event_id":"e","user_id":"u","item_id":"\xff","kind":"view"}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","x":' + b"[" * 600 + b"]" * 600
    + b"}",
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","x":' + b"[" * 5000 + b"]" * 5000
    + b"}",
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","v":1e19}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","v":1.0}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view"} x',
    b'{"event_id":"e","event_id":"f","user_id":"u","item_id":"i","kind":"view"}',
    b'{"event_id":"e","user_id":"u","item_id":"i","kind":"rate","value":4.999999999999999999}',
    b'[1, 2]', b'"text"', b"12345678901234567890123", b"", b" ",
]


@pytest.mark.parametrize("raw", EDGE_CASES)
def test_edge_cases_decode_as_the_standard_parser_does(raw: bytes) -> None:
    assert outcome(decode_interaction, raw) == standard(decode_interaction, raw)


def test_huge_integer_id_stays_exact() -> None:
    event = decode_interaction(EDGE_CASES[0])
    assert event.user_id == "123456789012345678901234567890"
    assert decode_interaction(EDGE_CASES[1]).context == {"n": 10**25}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)
event_docs = st.fixed_dictionaries(
    {"event_id": st.text(max_size=6) | st.integers(), "user_id": st.text(max_size=6),
     "item_id": st.text(min_size=1, max_size=6),
     "kind": st.sampled_from(["view", "click", "rate", "purchase", "skip", "like"])},
    optional={"value": json_values, "ts": json_values, "domain": json_values,
              "context": json_values, "v": st.sampled_from([1, 1.0, 2, True, 2**70]),
              "extra": json_values},
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_docs, st.sampled_from([True, False]))
def test_event_shaped_documents_decode_as_before(doc: dict, ascii_only: bool) -> None:
    raw = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert outcome(decode_interaction, raw) == standard(decode_interaction, raw)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 60))
def test_mutated_bytes_decode_as_before(noise: bytes, at: int) -> None:
    base = b'{"event_id":"e1","user_id":"u1","item_id":"i1","kind":"rate","value":4.5,"ts":1.5}'
    raw = base[:at] + noise + base[at:]
    for decoder in (decode_interaction, decode_item, decode_recommendation):
        assert outcome(decoder, raw) == standard(decoder, raw)
