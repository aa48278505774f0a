"""Catalog: stable rows, encode only new/changed content, ensure without content, versions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.support import bloom_positions
from schemas import Item


class CountingEncoder:
    """Wraps the hashing featurizer and records every item it is asked to encode."""

    def __init__(self) -> None:
        self.inner = HashingFeaturizer(16, 8)
        self.item_dim = self.inner.item_dim
        self.calls: list[list[str]] = []

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        self.calls.append([i.item_id for i in items])
        return self.inner.encode_items(items)


def items(n: int, start: int = 0) -> list[Item]:
    return [Item(f"i{k}", title=f"title {k}", attributes={"g": f"g{k % 3}"})
            for k in range(start, start + n)]


def test_upsert_encodes_only_new_or_changed() -> None:
    enc = CountingEncoder()
    cat = Catalog(enc)
    assert cat.upsert(items(5)) == 5
    assert enc.calls == [[f"i{k}" for k in range(5)]]  # one batch
    v = cat.version
    # identical content: nothing encoded, version unchanged
    assert cat.upsert(items(5)) == 0
    assert len(enc.calls) == 1 and cat.version == v
    # one changed, one new, three unchanged
    batch = items(5) + items(1, start=5)
    batch[2] = Item("i2", title="a different title")
    assert cat.upsert(batch) == 2
    assert enc.calls[-1] == ["i2", "i5"]
    assert cat.version == v + 1
    np.testing.assert_allclose(
        cat.features[cat.row("i2")], enc.inner.encode_items([batch[2]])[0]
    )


def test_rows_are_stable_and_append_only() -> None:
    cat = Catalog(CountingEncoder())
    cat.upsert(items(3))
    rows = {i: cat.row(i) for i in ("i0", "i1", "i2")}
    assert rows == {"i0": 0, "i1": 1, "i2": 2}
    cat.upsert(list(reversed(items(3))) + items(2000, start=3))  # grows past initial capacity
    cat.upsert([Item("i1", title="changed")])
    assert {i: cat.row(i) for i in rows} == rows
    assert len(cat) == 2003 and cat.ids[:3] == ["i0", "i1", "i2"]
    assert cat.features.shape == (2003, 16)
    assert cat.row("i2002") == 2002
    # features of earlier rows survive the growth
    np.testing.assert_allclose(
        cat.features[0], CountingEncoder().inner.encode_items(items(1))[0]
    )
    np.testing.assert_array_equal(cat.bloom, bloom_positions(cat.ids))


def test_ensure_adds_unknown_without_content() -> None:
    enc = CountingEncoder()
    cat = Catalog(enc)
    cat.upsert(items(2))
    v = cat.version
    row = cat.ensure("new", "books")
    assert row == 2 and "new" in cat and cat.domains[row] == "books"
    assert cat.has_content[row] is False
    assert not cat.features[row].any()
    assert len(enc.calls) == 1  # nothing encoded
    assert cat.version == v + 1
    # known item: same row, no version bump
    assert cat.ensure("new") == row and cat.ensure("i0") == 0
    assert cat.version == v + 1
    # content arriving later for an ensured item is encoded into the same row
    assert cat.upsert([Item("new", "books", title="now with words")]) == 1
    assert cat.row("new") == row and cat.has_content[row] is True
    assert cat.features[row].any()


def test_item_without_content_marked() -> None:
    cat = Catalog(CountingEncoder())
    cat.upsert([Item("bare"), Item("rich", title="x y z")])
    assert cat.has_content == [False, True]


def test_domain_codes() -> None:
    cat = Catalog(CountingEncoder())
    cat.upsert([Item("a", "books"), Item("b", "films"), Item("c", "books")])
    codes, names = cat.domain_codes()
    assert names == {"books": 0, "films": 1}
    assert codes.tolist() == [0, 1, 0]
