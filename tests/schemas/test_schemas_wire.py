"""Wire format: round-trips, every class of bad input -> SchemaError with a readable reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    MAX_PAYLOAD_BYTES,
    Interaction,
    Item,
    RatingScale,
    RecItem,
    Recommendation,
    SchemaError,
    User,
    decode_interaction,
    decode_item,
    decode_recommendation,
    decode_user,
    encode,
)
from schemas.wire import MAX_NESTING

DECODERS = [decode_interaction, decode_item, decode_user, decode_recommendation]


def _event(**fields) -> bytes:
    doc = {"v": 1, "event_id": "e1", "user_id": "u1", "item_id": "i1", "kind": "click", "ts": 5.0}
    doc.update(fields)
    doc = {k: v for k, v in doc.items() if v is not _DROP}
    return json.dumps(doc).encode("utf-8")


_DROP = object()


# ------------------------------------------------------------------------------ round-trips


def test_interaction_round_trip() -> None:
    rec = Interaction("e1", "u1", "i1", "rate", 4.5, 123.0, "books", {"page": "home", "n": [1, 2]})
    assert decode_interaction(encode(rec)) == rec


def test_interaction_round_trip_unicode() -> None:
    rec = Interaction("évènement-✓", "ユーザー", "item🙂", "purchase", 1.0, 0.0)
    assert decode_interaction(encode(rec)) == rec


def test_item_round_trip() -> None:
    rec = Item("i1", "music", "Title", "Some text", {"genres": ["a", "b"], "year": 1999})
    assert decode_item(encode(rec)) == rec


def test_user_round_trip() -> None:
    rec = User("u1", {"age_band": "25-34", "region": "north"})
    assert decode_user(encode(rec)) == rec


def test_recommendation_round_trip() -> None:
    rec = Recommendation(
        "u1",
        (RecItem("i1", 0.5, "exploit", 1.0), RecItem("i2", -0.25, "explore", 0.125)),
        "v3-fomaml",
        "e9",
        produced_at=17.5,
    )
    assert decode_recommendation(encode(rec)) == rec


def test_decoder_accepts_str_and_defaults() -> None:
    rec = decode_interaction('{"event_id":"e","user_id":"u","item_id":"i","kind":"skip"}')
    assert rec.value == 0.0 and rec.domain == "default" and rec.context == {}
    assert rec.reward() == 0.0


def test_rating_rescaled_by_scale() -> None:
    scale = RatingScale(1.0, 10.0)
    rec = decode_interaction(_event(kind="rate", value=10.0), scale)
    assert rec.reward(scale) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ bad input


def _reason(decoder, raw) -> str:
    with pytest.raises(SchemaError) as info:
        decoder(raw)
    text = str(info.value)
    assert text and len(text) < 300, text
    return text.lower()


@pytest.mark.parametrize("decoder", DECODERS)
def test_not_json(decoder) -> None:
    assert "not json" in _reason(decoder, b"{nope")


@pytest.mark.parametrize("decoder", DECODERS)
def test_not_utf8(decoder) -> None:
    assert "utf-8" in _reason(decoder, b'{"user_id": "\xff\xfe"}')


@pytest.mark.parametrize("raw", [b"[1, 2]", b"3", b'"text"', b"null"])
def test_top_level_not_object(raw: bytes) -> None:
    assert "object" in _reason(decode_interaction, raw)


def test_none_payload() -> None:
    assert "empty" in _reason(decode_user, None)


@pytest.mark.parametrize("name", ["event_id", "user_id", "item_id"])
def test_missing_id(name: str) -> None:
    text = _reason(decode_interaction, _event(**{name: _DROP}))
    assert name in text and "missing" in text


@pytest.mark.parametrize("value", ["", "   "])
@pytest.mark.parametrize("name", ["event_id", "user_id", "item_id"])
def test_empty_id(name: str, value: str) -> None:
    text = _reason(decode_interaction, _event(**{name: value}))
    assert name in text and "empty" in text


def test_id_too_long_or_control_chars() -> None:
    assert "longer" in _reason(decode_interaction, _event(item_id="x" * 257))
    assert "control" in _reason(decode_interaction, _event(item_id="a\nb"))


def test_unknown_kind() -> None:
    text = _reason(decode_interaction, _event(kind="like"))
    assert "kind" in text and "like" in text


def test_missing_kind() -> None:
    assert "kind" in _reason(decode_interaction, _event(kind=_DROP))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals(literal: str) -> None:
    raw = b'{"event_id":"e","user_id":"u","item_id":"i","kind":"rate","value":' + literal.encode()
    text = _reason(decode_interaction, raw + b"}")
    assert "non-finite" in text or "finite" in text


def test_non_finite_in_context_rejected() -> None:
    raw = b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","context":{"x":NaN}}'
    assert "finite" in _reason(decode_interaction, raw)


def test_overflowing_number_rejected() -> None:
    # 1e400 parses as inf without any literal: must still be refused
    raw = b'{"event_id":"e","user_id":"u","item_id":"i","kind":"rate","value":1e400}'
    assert "finite" in _reason(decode_interaction, raw)


@pytest.mark.parametrize("value", [-0.5, 5.5, 100])
def test_rating_out_of_range(value: float) -> None:
    text = _reason(decode_interaction, _event(kind="rate", value=value))
    assert "value" in text and "outside" in text


def test_rating_range_follows_scale() -> None:
    scale = RatingScale(1.0, 10.0)
    assert decode_interaction(_event(kind="rate", value=7.0), scale).value == 7.0
    with pytest.raises(SchemaError):
        decode_interaction(_event(kind="rate", value=0.5), scale)


def test_rating_without_value() -> None:
    assert "value" in _reason(decode_interaction, _event(kind="rate"))


def test_payload_over_limit() -> None:
    raw = _event(context={"pad": "x" * MAX_PAYLOAD_BYTES})
    assert len(raw) > MAX_PAYLOAD_BYTES
    assert "limit" in _reason(decode_interaction, raw)


def test_payload_just_under_limit_accepted() -> None:
    base = len(_event(context={"pad": ""}))
    raw = _event(context={"pad": "x" * (MAX_PAYLOAD_BYTES - base)})
    assert len(raw) == MAX_PAYLOAD_BYTES
    assert decode_interaction(raw).item_id == "i1"


@pytest.mark.parametrize(
    "fields, field_name",
    [
        ({"value": True}, "value"),
        ({"value": "1.0"}, "value"),
        ({"ts": False}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": -1.0}, "ts"),
        ({"user_id": True}, "user_id"),
        ({"item_id": ["i"]}, "item_id"),
        ({"event_id": {"a": 1}}, "event_id"),
        ({"kind": 3}, "kind"),
        ({"context": [1, 2]}, "context"),
        ({"context": "x"}, "context"),
        ({"domain": 1.5}, "domain"),
    ],
)
def test_wrong_types(fields: dict, field_name: str) -> None:
    assert field_name in _reason(decode_interaction, _event(**fields))


def test_item_wrong_types() -> None:
    assert "title" in _reason(decode_item, b'{"item_id":"i","title":5}')
    assert "attributes" in _reason(decode_item, b'{"item_id":"i","attributes":[1]}')


def test_recommendation_bad_entries() -> None:
    assert "items" in _reason(decode_recommendation, b'{"user_id":"u","items":{}}')
    assert "items" in _reason(decode_recommendation, b'{"user_id":"u","items":[1]}')
    text = _reason(decode_recommendation, b'{"user_id":"u","items":[{"item_id":"i","why":"x"}]}')
    assert "why" in text
    text = _reason(decode_recommendation, b'{"user_id":"u","items":[{"item_id":"i","score":true}]}')
    assert "score" in text


def _nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[return-value]


def test_nesting_limit_in_context() -> None:
    ok = _event(context=_nested(MAX_NESTING - 1))
    assert decode_interaction(ok).context
    text = _reason(decode_interaction, _event(context=_nested(MAX_NESTING + 1)))
    assert "context" in text and "nested" in text


def test_deep_json_not_recursion_error() -> None:
    raw = b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","context":' + (
        b"[" * 100_000
    ) + b"]" * 100_000 + b"}"
    assert len(raw) <= MAX_PAYLOAD_BYTES * 4  # (may be rejected by size or by depth)
    _reason(decode_interaction, raw)
    raw = b"[" * 30_000 + b"]" * 30_000
    _reason(decode_interaction, raw)


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_bad_version(version) -> None:
    text = _reason(decode_user, json.dumps({"v": version, "user_id": "u"}).encode())
    assert "version" in text


def test_lone_surrogate_escape_rejected_or_harmless() -> None:
    from engine.support import UserSupport

    raw = b'{"event_id":"e\\ud800","user_id":"u","item_id":"i\\udfff","kind":"view"}'
    try:
        event = decode_interaction(raw)
    except SchemaError as exc:
        assert "surrogate" in exc.reason and exc.field == "event_id"
        return  # fixed: rejected at the door
    support = UserSupport()
    support.add(event, 20, 16)
    support.to_bytes()


@pytest.mark.parametrize(
    ("decoder", "raw", "field_name"),
    [
        (decode_interaction, b'{"event_id":"e","user_id":"u\\udfff","item_id":"i","kind":"view"}',
         "user_id"),
        (decode_interaction,
         b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","context":{"\\ud800":1}}',
         "context"),
        (decode_interaction,
         b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","context":{"a":["\\ud800"]}}',
         "context"),
        (decode_item, b'{"item_id":"i","title":"t\\udc00"}', "title"),
        (decode_item, b'{"item_id":"i","attributes":{"g":{"x":"\\ud83d"}}}', "attributes"),
        (decode_user, b'{"user_id":"u","attributes":{"\\udbff":"x"}}', "attributes"),
    ],
)
def test_lone_surrogates_anywhere_are_schema_errors(decoder, raw: bytes, field_name: str) -> None:
    with pytest.raises(SchemaError) as info:
        decoder(raw)
    assert info.value.field == field_name and "surrogate" in info.value.reason


def test_paired_surrogate_escapes_are_fine() -> None:
    # "\ud83d\ude00" is a valid escape pair for one emoji, not a lone surrogate.
    event = decode_interaction(
        b'{"event_id":"e","user_id":"u","item_id":"\\ud83d\\ude00","kind":"view"}'
    )
    assert event.item_id == "\U0001f600"


# ------------------------------------------------------------------------------ properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["v", "event_id", "user_id", "item_id", "kind", "value", "ts", "domain", "context",
             "items", "why", "score", "title", "attributes", "x"]
        ),
        children,
        max_size=6,
    ),
    max_leaves=20,
)

FAST = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _only_schema_errors(raw) -> None:
    for decoder in DECODERS:
        try:
            decoder(raw)
        except SchemaError as exc:
            assert str(exc)


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_schema_error(raw: bytes) -> None:
    _only_schema_errors(raw)


@FAST
@given(json_values)
def test_arbitrary_json_only_schema_error(value) -> None:
    _only_schema_errors(json.dumps(value).encode("utf-8"))


@FAST
@given(
    st.fixed_dictionaries(
        {
            "event_id": st.one_of(st.text(max_size=5), st.integers(), st.none()),
            "user_id": st.one_of(st.text(max_size=5), st.booleans()),
            "item_id": st.text(max_size=5),
            "kind": st.sampled_from(["view", "click", "rate", "purchase", "skip", "bad"]),
            "value": st.one_of(st.floats(), st.integers(), st.text(max_size=3)),
            "context": json_values,
        }
    )
)
def test_event_shaped_json_only_schema_error(doc: dict) -> None:
    _only_schema_errors(json.dumps(doc).encode("utf-8"))


def test_dead_letter_of_a_huge_message_still_fits_in_kafka() -> None:
    from schemas import DeadLetter, encode
    from schemas.wire import MAX_DLQ_ORIGINAL_BYTES

    raw = bytes(range(256)) * 4000  # ~1 MB; bytes >= 0x80 JSON-escape to six characters
    letter = encode(DeadLetter("r" * 50_000, "t", 1, 2, raw, b"\xff" * 10_000))
    assert len(letter) < 1_000_000
    doc = json.loads(letter)
    assert doc["truncated"] is True and doc["original_bytes"] == len(raw)
    assert doc["original_latin1"].encode("latin-1") == raw[:MAX_DLQ_ORIGINAL_BYTES]
    assert len(doc["reason"]) <= 1000 and len(doc["key_latin1"]) <= 1024
    small = json.loads(encode(DeadLetter("why", "t", 0, 0, b"\x00\xffok")))
    assert small["truncated"] is False
    assert small["original_latin1"].encode("latin-1") == b"\x00\xffok"

