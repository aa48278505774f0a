"""RecommendationRequest on the wire, and the optional ``domain`` of a Recommendation."""

from __future__ import annotations

import json

import pytest

from schemas import (
    RecItem,
    Recommendation,
    RecommendationRequest,
    SchemaError,
    decode_recommendation,
    decode_request,
    encode,
)


def test_request_round_trips() -> None:
    req = RecommendationRequest("r-1", "u7", "movies", 123.5)
    assert decode_request(encode(req)) == req


def test_request_defaults_domain_and_time() -> None:
    req = decode_request(b'{"request_id": "r", "user_id": 42}')
    assert req.user_id == "42" and req.domain == "default" and req.requested_at > 0


@pytest.mark.parametrize(("doc", "field"), [
    ({"user_id": "u"}, "request_id"),
    ({"request_id": "r"}, "user_id"),
    ({"request_id": "r", "user_id": " "}, "user_id"),
    ({"request_id": "r", "user_id": "u", "domain": ""}, "domain"),
    ({"request_id": "r", "user_id": "u", "domain": 3.5}, "domain"),
    ({"request_id": "r", "user_id": "u", "domain": "a\nb"}, "domain"),
    ({"request_id": "r", "user_id": "u", "requested_at": -1}, "requested_at"),
    ({"request_id": "r", "user_id": "u", "requested_at": "soon"}, "requested_at"),
    ({"request_id": "r", "user_id": "u", "v": 2}, "v"),
    ({"request_id": "x" * 300, "user_id": "u"}, "request_id"),
])
def test_bad_requests_are_rejected_with_the_field(doc: dict, field: str) -> None:
    with pytest.raises(SchemaError) as err:
        decode_request(json.dumps(doc).encode())
    assert err.value.field == field, err.value.describe()


@pytest.mark.parametrize("raw", [None, b"", b"[]", b"\xff\xfe", b'{"request_id": NaN}'])
def test_malformed_payloads_are_schema_errors(raw: bytes | None) -> None:
    with pytest.raises(SchemaError):
        decode_request(raw)


def test_recommendation_domain_is_written_only_when_set() -> None:
    items = (RecItem("m1", 0.5),)
    plain = Recommendation("u", items, "v1", "e1", 1.0)
    assert "domain" not in json.loads(encode(plain))  # event-driven output: bytes unchanged
    assert decode_recommendation(encode(plain)).domain == ""
    answer = Recommendation("u", items, "v1", "r1", 1.0, domain="movies")
    assert json.loads(encode(answer))["domain"] == "movies"
    assert decode_recommendation(encode(answer)) == answer
