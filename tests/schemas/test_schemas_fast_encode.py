"""The recommendation fast path of ``schemas.encode`` gives exactly the generic encoder's bytes."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RecItem, Recommendation, encode

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
