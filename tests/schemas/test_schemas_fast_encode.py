"""The recommendation fast path of ``schemas.encode`` gives exactly the generic encoder's bytes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RankedItems, RecItem, Recommendation, encode

text = st.text(min_size=1, max_size=12)
number = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)
whys = st.sampled_from(["exploit", "explore", "content", "é\"\\"])
items = st.builds(RecItem, text, number, whys, number)
recs = st.builds(Recommendation, text, st.lists(items, max_size=12).map(tuple), text, text,
                 number, st.sampled_from(["", "books", "ユーザー"]))


def generic(rec: Recommendation) -> bytes:
    return json.dumps(rec.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(recs)
def test_fast_path_bytes_equal_the_generic_encoder(rec: Recommendation) -> None:
    finite = all(math.isfinite(round(x, 6)) for i in rec.items for x in (i.score, i.propensity))
    if finite and math.isfinite(rec.produced_at):
        assert encode(rec) == generic(rec)
    else:  # non-finite numbers fall back to the generic path, which refuses them
        try:
            generic(rec)
        except ValueError:
            pass
        else:  # pragma: no cover - would mean allow_nan=False stopped refusing
            raise AssertionError("generic encoder accepted a non-finite number")
        try:
            encode(rec)
        except ValueError:
            return
        raise AssertionError("fast path accepted a non-finite number")


@settings(max_examples=300, deadline=None)
@given(recs)
def test_columnar_items_encode_and_compare_as_the_tuple(rec: Recommendation) -> None:
    """RankedItems (what the ranker builds) is the same recommendation as the tuple of RecItems:
    equal, same item ids, same bytes (or the same refusal of a non-finite number)."""
    items = rec.items
    columns = RankedItems([i.item_id for i in items], [i.score for i in items],
                          [i.why for i in items], [i.propensity for i in items])
    same = Recommendation(rec.user_id, columns, rec.model_version, rec.source_event_id,
                          rec.produced_at, rec.domain)
    assert same == rec and same.item_ids() == rec.item_ids() and list(columns) == list(items)
    try:
        expected = encode(rec)
    except ValueError:
        with pytest.raises(ValueError):
            encode(same)
        return
    assert encode(same) == expected
