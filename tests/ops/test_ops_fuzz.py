"""Fuzzing the in-process serving path: only SchemaError on input, every one dead-lettered."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.fuzz import FuzzHarness, FuzzResult, interleave
from schemas import SchemaError, decode_interaction
from workers.cli import main

FUZZ = settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def harness() -> FuzzHarness:
    torch.set_num_threads(1)
    return FuzzHarness(seed=0, n_items=120)


def _one(harness: FuzzHarness, topic: str, raw: bytes) -> FuzzResult:
    result = FuzzResult()
    harness.process([("hypothesis", topic, raw)], result)
    assert not result.crashes, result.crashes
    return result


def test_two_thousand_generated_cases_never_crash(harness: FuzzHarness) -> None:
    result = harness.run(harness.cases(2_000, seed=11), batch_max=64)
    assert result.cases == 2_000
    assert result.crashes == []
    # every category ran, and both outcomes happened: rejected input and served events
    assert len(result.by_category) == 11 and min(result.by_category.values()) >= 180
    assert result.dead_letters > 500 and result.good > 100
    assert result.recommendations == result.good
    assert result.dead_letters + result.good + result.items + result.users == result.cases


def test_harness_reports_a_crash(harness: FuzzHarness, monkeypatch) -> None:
    # The property is only worth something if a non-SchemaError is caught and counted.
    def broken(events, supports, offsets=None, bind=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(harness.recommender, "apply_batch", broken)
    result = harness.run(harness.good_events(3))  # one batch: its apply_batch crashes once
    assert len(result.crashes) == 1 and "boom" in result.crashes[0]["error"]


def test_harness_rejects_a_reasonless_schema_error(harness: FuzzHarness, monkeypatch) -> None:
    def reasonless(raw, scale=None):
        raise SchemaError("")

    monkeypatch.setattr("ops.fuzz.decode_interaction", reasonless)
    result = harness.run(harness.good_events(1))
    assert len(result.crashes) == 1 and "without a reason" in result.crashes[0]["error"]


@FUZZ
@given(raw=st.binary(max_size=400), topic=st.sampled_from(["interactions", "items", "users"]))
def test_random_bytes(harness: FuzzHarness, raw: bytes, topic: str) -> None:
    _one(harness, topic, raw)


# Every code point, lone surrogates included (Hypothesis leaves them out of text() by default).
any_char = st.characters(codec=None, exclude_categories=())
odd_text = st.text(any_char, max_size=40)
json_leaf = (st.none() | st.booleans() | st.integers() | st.floats() | odd_text)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(odd_text, kids, max_size=3),
    max_leaves=12,
)


def _dumps(doc: object) -> bytes:
    # ensure_ascii escapes lone surrogates as "\ud800", the way a hostile producer would send them
    return json.dumps(doc, allow_nan=True).encode("utf-8")


@FUZZ
@given(
    event_id=odd_text, user_id=odd_text | st.integers(), item_id=odd_text,
    kind=st.sampled_from(["view", "click", "rate", "purchase", "skip", "x"]),
    value=st.floats() | st.integers(min_value=-(10**400), max_value=10**400),
    ts=st.floats() | st.integers(),
    domain=odd_text, context=json_value,
)
def test_odd_unicode_and_numbers_in_events(harness: FuzzHarness, **fields: object) -> None:
    _one(harness, "interactions", _dumps(fields))


@FUZZ
@given(item_id=odd_text, title=odd_text | json_leaf, attributes=json_value, user_attrs=json_value)
def test_odd_items_and_users(harness: FuzzHarness, item_id: str, title: object,
                             attributes: object, user_attrs: object) -> None:
    _one(harness, "items", _dumps({"item_id": item_id, "title": title, "attributes": attributes}))
    _one(harness, "users", _dumps({"user_id": item_id, "attributes": user_attrs}))
    # and an event on that item by that user is served (or rejected) without a crash
    _one(harness, "interactions", _dumps({"event_id": "h", "user_id": item_id,
                                          "item_id": item_id, "kind": "click"}))


@FUZZ
@given(depth=st.integers(1, 3_000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting(harness: FuzzHarness, depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = opener * depth + "1" + closer * depth
    raw = ('{"event_id":"d","user_id":"u","item_id":"i","kind":"view","context":{"x":'
           + body + "}}").encode()
    _one(harness, "interactions", raw)


def test_found_bugs_stay_fixed() -> None:
    # Crashes the fuzzer found: a 400-digit integer (OverflowError in float()) and a value too
    # large for the support-set codec's float32 (OverflowError in struct.pack).
    for raw in (b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","ts":1' + b"0" * 400
                + b"}",
                b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","value":1e39}'):
        with pytest.raises(SchemaError) as info:
            decode_interaction(raw)
        assert info.value.field in {"ts", "value"} and info.value.reason


def test_interleave_spreads_bad_cases() -> None:
    good = [("good", "interactions", b"g")] * 90
    bad = [("bad", "interactions", b"b")] * 5
    mixed = interleave(good, bad, 0.1)
    assert len(mixed) == 100 and sum(c[0] == "bad" for c in mixed) == 10
    assert [c for c in mixed if c[0] == "good"] == good
    assert max(i for i, c in enumerate(mixed) if c[0] == "bad") > 80  # spread, not bunched


def test_fuzz_command_prints_json(capsys) -> None:
    code = main(["fuzz", "--cases", "330", "--throughput-events", "300", "--repeats", "1",
                 "--json", "--torch-threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert out["fuzz"]["cases"] == 330 and out["fuzz"]["crashes"] == 0
    assert out["fuzz"]["dead_letters"] > 0
    t = out["throughput"]
    assert t["good_per_s_clean"] > 0 and t["good_per_s_mixed"] > 0 and t["bad_events_mixed_in"] > 0
    assert code == (0 if t["ratio"] >= 0.9 else 1)
