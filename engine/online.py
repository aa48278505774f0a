"""Online hit@K: was the item a user just touched in the list last published for that user?

The worker answers this for every event, by the size of the support set the list was made from
(``BUCKETS``), for two lists: the one it published (``model``) and the one popularity would have
published at the same moment (``popularity``: the bundle's popularity order in the list's domain,
minus the items the user has seen). Their ratio is the live lift over popularity, per bucket,
exported by the worker as Prometheus counters (``workers/metrics.py``).

What is remembered, and what it costs. Per user, the two lists last published, as catalog rows
(``2 x top_k`` int32: 80 bytes for top 10) in a bounded in-process LRU map
(``Settings.online_hits_users``; 0 turns this off). Nothing is written to Kafka or RocksDB: the
metric is a statistic, and a second changelog record per event would cost far more than it is
worth. So after a restart, a rebalance or an LRU eviction the first event of a user who already
has a support set is counted as ``unscored`` instead. A user's very first event (support size 0)
is scored against the list the worker *would* have published for them before it (the model's
prior for their attributes and the event's domain, ranked as a recommendation request is), so
bucket 0 measures the cold start itself. Users with the same attributes share a prior, so that
costs one ranking row per distinct (domain, attributes) per model/catalog version, not per user
(with exploration on, priors are per user: explore picks are seeded per user).

Per micro-batch the work is one pass over the events to find each one's previous list (an earlier
event of the same user in this batch, the map, or the prior) and numpy for the rest: popularity's
lists for the whole batch at once, the hit test and the per-bucket counts.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas import RankedItems, Recommendation

if TYPE_CHECKING:  # the recommender imports nothing from here; avoid the cycle at run time
    from engine.recommender import Recommender, Snapshot

#: Support-set sizes the list was made from: 0, 1-2, 3-5, 6-10, more than 10.
BUCKETS: tuple[str, ...] = ("0", "1-2", "3-5", "6-10", ">10")
_BUCKET_LOW = np.array([0, 1, 3, 6, 11])
#: The lists compared: what the worker published, and popularity's list at the same moment.
LISTS: tuple[str, ...] = ("model", "popularity")

ProfileLookup = Callable[[str], Mapping[str, Any] | None]
PRIOR_CACHE_SIZE = 10_000  # distinct (domain, attributes) priors kept


def _item_ids(rec: Recommendation, k: int) -> Sequence[str]:
    """A recommendation's item ids, its first ``k``: the ranker's id column as it is (no
    ``RecItem`` per item), else from the items."""
    items = rec.items
    if isinstance(items, RankedItems):
        return items.ids[:k]
    return [item.item_id for item in items[:k]]


def bucket_of(sizes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Index into :data:`BUCKETS` of each support-set size."""
    return np.searchsorted(_BUCKET_LOW, np.asarray(sizes), side="right") - 1


def size_before(snap: Snapshot) -> int:
    """Support-set size before a fresh event, from the snapshot taken after it: the set holds
    the newest ``capacity`` events, so it held ``min(n_total - 1, len)`` before this one."""
    return min(snap.support.n_total - 1, len(snap.support))


@dataclass
class HitCounts:
    """Events scored and hits per bucket (``hits[l, b]``: list ``LISTS[l]``, bucket ``b``)."""

    events: np.ndarray = field(default_factory=lambda: np.zeros(len(BUCKETS), dtype=np.int64))
    hits: np.ndarray = field(
        default_factory=lambda: np.zeros((len(LISTS), len(BUCKETS)), dtype=np.int64))
    unscored: int = 0  # fresh events whose previous list is not known (restart, eviction)

    def __iadd__(self, other: HitCounts) -> HitCounts:
        self.events += other.events
        self.hits += other.hits
        self.unscored += other.unscored
        return self

    def table(self) -> dict[str, dict[str, float | int]]:
        """``{bucket: {"events", "model", "popularity", "lift"}}`` (hit rates; lift = ratio)."""
        out: dict[str, dict[str, float | int]] = {}
        for b, name in enumerate(BUCKETS):
            n = int(self.events[b])
            rates = {lst: (float(self.hits[i, b]) / n if n else float("nan"))
                     for i, lst in enumerate(LISTS)}
            pop = rates["popularity"]
            out[name] = {"events": n, **rates,
                         "lift": rates["model"] / pop if n and pop > 0 else float("nan")}
        return out


class PopularityLists:
    """Popularity's top-K for many users at once: the bundle's popularity order (ties by item id)
    restricted to the list's domain, minus each user's seen items (support set + the Bloom
    filter of evicted items), exactly the exclusions the model's ranking applies."""

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self._key: tuple[int, int, str] | None = None
        self._orders: dict[str | None, np.ndarray] = {}
        self._domains: list[str | None] = []
        self._slot: dict[str | None, int] = {}
        self._lengths = np.zeros(0, dtype=np.int64)
        self._heads = np.zeros((0, 0), dtype=np.int64)

    def orders(self, recommender: Recommender) -> dict[str | None, np.ndarray]:
        """Catalog rows by falling popularity, per domain (key None: every row)."""
        catalog, bundle = recommender.catalog, recommender.bundle
        key = (catalog.version, len(catalog), bundle.version)
        if key != self._key:
            pop = np.zeros(len(catalog), dtype=np.float64)
            rows = np.fromiter((bundle.vocab_index.get(i, -1) for i in catalog.ids),
                               dtype=np.int64, count=len(catalog))
            known = rows >= 0
            if bundle.popularity.size:
                pop[known] = bundle.popularity[rows[known]]
            # Ties by item id, not catalog row: rows follow arrival order, which differs between
            # workers and replays; ids do not.
            order = np.lexsort((np.array(catalog.ids, dtype=str), -pop))
            codes, names = catalog.domain_codes()
            self._orders = {None: order}
            if len(names) > 1:  # the model masks other domains only when there are several
                ordered_codes = codes[order]
                self._orders.update({name: order[ordered_codes == code]
                                     for name, code in names.items()})
            self._domains = list(self._orders)
            self._slot = {name: i for i, name in enumerate(self._domains)}
            self._lengths = np.array([o.shape[0] for o in self._orders.values()])
            self._heads = np.zeros((len(self._domains), 0), dtype=np.int64)
            self._key = key
        return self._orders

    def _head(self, depth: int) -> np.ndarray:
        """(domains, depth) int64: each order's first ``depth`` rows, -1 past its end."""
        if self._heads.shape[1] < depth:
            heads = np.full((len(self._domains), depth), -1, dtype=np.int64)
            for i, order in enumerate(self._orders.values()):
                head = order[:depth]
                heads[i, : head.shape[0]] = head
            self._heads = heads
        return self._heads[:, :depth]

    def lists(self, recommender: Recommender, snapshots: Sequence[Snapshot]) -> np.ndarray:
        """(B, top_k) int32 catalog rows, best first, -1 where the domain has fewer items."""
        k, b = self.top_k, len(snapshots)
        out = np.full((b, k), -1, dtype=np.int32)
        if not b:
            return out
        orders = self.orders(recommender)
        lengths = np.fromiter((len(s.exclude) for s in snapshots), dtype=np.int64, count=b)
        width = int(lengths.max())
        depth = k + width + 8  # seen items above the cut push it down; Bloom hits are rare
        slot = self._slot
        if len(slot) == 1:
            codes = np.zeros(b, dtype=np.int64)
        else:  # a domain no order knows (none in the catalog) ranks over every row
            codes = np.fromiter((slot.get(s.event.domain, 0) for s in snapshots),
                                dtype=np.int64, count=b)
        candidates = self._head(depth)[codes]
        excluded = np.full((b, max(width, 1)), -2, dtype=np.int64)
        if width:
            excluded[np.arange(width) < lengths[:, None]] = np.fromiter(
                chain.from_iterable(s.exclude for s in snapshots), dtype=np.int64,
                count=int(lengths.sum()))
        seen = (candidates[:, :, None] == excluded[:, None, :]).any(axis=2)
        bloom = recommender.catalog.bloom
        for i in [i for i, s in enumerate(snapshots) if s.support.bloom]:
            valid = candidates[i] >= 0
            seen[i, valid] |= snapshots[i].support.seen_mask(bloom[candidates[i, valid]])
        keep = ~seen & (candidates >= 0)
        place = np.cumsum(keep, axis=1)
        take = keep & (place <= k)
        rows, _ = np.nonzero(take)
        out[rows, place[take] - 1] = candidates[take]
        short = np.nonzero((take.sum(axis=1) < k) & (self._lengths[codes] > depth))[0]
        for i in short:  # more seen items above the cut than the margin: walk further
            out[i] = self._one(orders[self._domains[codes[i]]], snapshots[i], bloom)
        return out

    def _one(self, order: np.ndarray, snap: Snapshot, bloom: np.ndarray) -> np.ndarray:
        seen = np.isin(order, np.asarray(snap.exclude, dtype=np.int64))
        if snap.support.bloom:
            seen |= snap.support.seen_mask(bloom[order])
        rows = order[~seen][: self.top_k]
        out = np.full(self.top_k, -1, dtype=np.int32)
        out[: rows.shape[0]] = rows
        return out


class OnlineHits:
    """The worker's online hit@K bookkeeping (one per process); see the module docstring."""

    def __init__(self, top_k: int, max_users: int) -> None:
        self.top_k = top_k
        self.max_users = max_users
        self.popularity = PopularityLists(top_k)
        self._lists: OrderedDict[str, bytes] = OrderedDict()  # user -> (2, top_k) int32 rows
        self._prior_cache: dict[Any, np.ndarray] = {}  # (domain, attributes) -> (2, top_k)
        self._prior_basis: object | None = None  # the recommender.prepared() they were made on
        self.prior_rows = 0  # ranking rows spent on priors (the bookkeeping's main cost)

    def __len__(self) -> int:
        return len(self._lists)

    @property
    def enabled(self) -> bool:
        return self.max_users > 0

    def observe(self, recommender: Recommender, snapshots: Sequence[Snapshot],
                recs: Sequence[Recommendation],
                profile_of: ProfileLookup | None = None) -> HitCounts:
        """Score a micro-batch's fresh events against each user's previous lists, then remember
        the lists just published (``recs[i]`` was published after ``snapshots[i]``)."""
        counts = HitCounts()
        if not self.enabled or not snapshots or len(recs) != len(snapshots):
            return counts
        published = self._published(recommender, snapshots, recs)
        index = recommender.catalog.index
        latest: dict[str, int] = {}
        sizes = [0] * len(snapshots)
        from_batch: list[tuple[int, int]] = []  # (event, earlier event of the batch)
        from_map: list[tuple[int, bytes]] = []
        from_prior: list[int] = []
        for i, snap in enumerate(snapshots):
            user = snap.event.user_id
            if not snap.duplicate:
                sizes[i] = size = size_before(snap)
                earlier = latest.get(user)
                if earlier is not None:
                    from_batch.append((i, earlier))
                elif (stored := self._lists.get(user)) is not None:
                    from_map.append((i, stored))
                elif size == 0:
                    from_prior.append(i)
                else:
                    counts.unscored += 1
            latest[user] = i
        k = self.top_k
        if from_batch:
            at, earlier = zip(*from_batch, strict=True)
            self._count(counts, snapshots, sizes, index, list(at), published[list(earlier)])
        if from_map:
            at, stored = zip(*from_map, strict=True)
            lists = np.frombuffer(b"".join(stored), dtype=np.int32).reshape(-1, len(LISTS), k)
            self._count(counts, snapshots, sizes, index, list(at), lists)
        if from_prior:
            priors = self._priors(recommender, [snapshots[i] for i in from_prior], profile_of)
            self._count(counts, snapshots, sizes, index, from_prior, priors)
        self._remember(snapshots, published, latest)
        return counts

    def remember(self, recommender: Recommender, snapshots: Sequence[Snapshot],
                 recs: Sequence[Recommendation]) -> None:
        """Remember lists published without an event (answers to recommendation requests)."""
        if self.enabled and snapshots and len(recs) == len(snapshots):
            latest = {s.event.user_id: i for i, s in enumerate(snapshots)}
            self._remember(snapshots, self._published(recommender, snapshots, recs), latest)

    # ---------------------------------------------------------------- helpers
    def _priors(self, recommender: Recommender, snapshots: Sequence[Snapshot],
                profile_of: ProfileLookup | None) -> np.ndarray:
        """(B, 2, top_k): the lists a user with no events would have been served, in the
        event's domain. Without exploration a prior depends only on the domain and the user's
        attributes (and the model, catalog and counts, i.e. ``recommender.prepared()``), so
        users who share them share one ranking row: attributes are usually a few categories."""
        prepared = recommender.prepared()
        if prepared is not self._prior_basis or len(self._prior_cache) > PRIOR_CACHE_SIZE:
            self._prior_cache.clear()
            self._prior_basis = prepared
        cacheable = recommender.explorer is None  # explore picks are seeded per user
        keys: list[Any] = []
        todo: dict[Any, int] = {}
        for i, snap in enumerate(snapshots):
            attrs = profile_of(snap.event.user_id) if profile_of is not None else None
            key = ((snap.event.domain, json.dumps(attrs, sort_keys=True, default=str)
                    if attrs else "") if cacheable else i)
            keys.append(key)
            if key not in self._prior_cache:
                todo.setdefault(key, i)
        if todo:
            probes = [recommender.request(snapshots[i].event.user_id, snapshots[i].event.domain,
                                          {}) for i in todo.values()]
            lists = self._published(recommender, probes, recommender.rank(probes, profile_of))
            self.prior_rows += len(probes)
            fresh = dict(zip(todo, lists, strict=True))
            if not cacheable:
                return np.stack([fresh[key] for key in keys])
            self._prior_cache.update(fresh)
        return np.stack([self._prior_cache[key] for key in keys])

    def _published(self, recommender: Recommender, snapshots: Sequence[Snapshot],
                   recs: Sequence[Recommendation]) -> np.ndarray:
        """(B, 2, top_k) int32: each published list and popularity's list for the same state."""
        k = self.top_k
        index = recommender.catalog.index
        model = np.full((len(recs), k), -1, dtype=np.int32)
        lengths = np.fromiter((min(k, len(r.items)) for r in recs), dtype=np.int64,
                              count=len(recs))
        ids = chain.from_iterable(_item_ids(r, k) for r in recs)
        model[np.arange(k) < lengths[:, None]] = np.fromiter(
            map(index.__getitem__, ids), dtype=np.int32, count=int(lengths.sum()))
        return np.stack([model, self.popularity.lists(recommender, snapshots)], axis=1)

    @staticmethod
    def _count(counts: HitCounts, snapshots: Sequence[Snapshot], sizes: list[int],
               index: Mapping[str, int], at: list[int], lists: np.ndarray) -> None:
        items = np.fromiter((index[snapshots[i].event.item_id] for i in at), dtype=np.int64,
                            count=len(at))
        hit = (lists == items[:, None, None]).any(axis=2)  # (n, lists)
        buckets = bucket_of([sizes[i] for i in at])
        counts.events += np.bincount(buckets, minlength=len(BUCKETS))
        for li in range(len(LISTS)):
            counts.hits[li] += np.bincount(buckets, weights=hit[:, li],
                                           minlength=len(BUCKETS)).astype(np.int64)

    def _remember(self, snapshots: Sequence[Snapshot], published: np.ndarray,
                  latest: Mapping[str, int]) -> None:
        store = self._lists
        for user, i in latest.items():
            store[user] = published[i].tobytes()
            store.move_to_end(user)
        while len(store) > self.max_users:
            store.popitem(last=False)
