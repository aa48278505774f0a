"""Explore slots on the live path: bandit statistics, their codec, and the final top-K list.

The ranker's top-K keeps its first ``K - explore_slots`` items. Each of the last
``explore_slots`` positions is filled in turn: with probability ``p_u`` (the user's exploration
rate) by the policy's pick among the next ``explore_pool`` best-scored items, otherwise by the
next-best item. ``p_u = explore_epsilon * explore_decay / (explore_decay + n_u)`` where ``n_u``
is the user's lifetime event count, so exploration decays as the support set grows. The item's
``propensity`` is the exact probability that this slot shows it given the slots before it:
``p_u * pi(item) + (1 - p_u) * [item is the next-best]`` (``pi`` is a Monte-Carlo frequency for
the Thompson policies). ``why="explore"`` marks a pick that differs from the next-best item.

Randomness is one generator per (seed, user, event): a list never depends on micro-batching, and
the worker and the replay produce the same lists.

State. Per-item statistics (count, reward sum, squared sum) are keyed ``"<partition>/<item>"``
where ``partition`` is the user's Kafka partition (murmur2, Kafka's default partitioner). Faust
tables are partitioned by the key of the event being processed (interactions are keyed by user),
so an item-keyed table written by the interactions agent would silently hold one partial count
per partition and return whichever it finds first. Keying per partition makes the choice
explicit: each partition runs its own bandit over the users it owns; the state moves with the
partition on a rebalance and a recommendation depends only on that partition's history (the
price: each bandit sees 1/P of the traffic). Per-user statistics (events, reward sum, explore
slots shown, explore hits) are a small JSON record keyed by user id. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.bandits import ArmContext, Policy, create_policy
from schemas import Interaction, RatingScale
from schemas.errors import SchemaError

if TYPE_CHECKING:
    from engine.catalog import Catalog
    from engine.recommender import Snapshot
    from engine.settings import Settings
    from models.base import SupportBatch

log = logging.getLogger(__name__)

_ITEM = struct.Struct("<Qdd")  # count, reward sum, squared reward sum
RECENT_EXPLORES = 32  # explore picks remembered per user to count later hits

#: One exploration slate entry: (catalog row, score, why, propensity).
SlateEntry = tuple[int, float, str, float]


class RewardError(SchemaError):
    """A reward outside [0, 1] (or not finite): the event goes to the DLQ, stats stay clean."""


def checked_reward(event: Interaction, scale: RatingScale) -> float:
    reward = float(event.reward(scale))
    if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
        raise RewardError(f"reward {reward!r} of {event.kind} value {event.value!r} outside [0, 1]",
                          "value")
    return reward


def stats_partition(user_id: str, partitions: int) -> int:
    """The Kafka partition of a user-keyed record under the default (murmur2) partitioner."""
    from kafka.partitioner.default import murmur2

    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % max(1, partitions)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def event_rng(seed: int, user_id: str, event_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, _digest(user_id), _digest(event_id)])


# --------------------------------------------------------------------------------- codecs
def encode_item_stats(n: int, total: float, sq: float) -> bytes:
    return _ITEM.pack(int(n), float(total), float(sq))


def decode_item_stats(raw: bytes | None) -> tuple[int, float, float]:
    if not raw:
        return 0, 0.0, 0.0
    if len(raw) != _ITEM.size:
        raise ValueError(f"corrupt item-stats record: {len(raw)} bytes")
    n, total, sq = _ITEM.unpack(raw)
    return n, total, sq


@dataclass
class UserStats:
    n: int = 0
    reward: float = 0.0
    explored: int = 0
    hits: int = 0
    recent: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return json.dumps({"n": self.n, "reward": round(self.reward, 6), "explored": self.explored,
                           "hits": self.hits, "recent": self.recent},
                          separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserStats:
        if not raw:
            return cls()
        d = json.loads(raw)
        return cls(int(d["n"]), float(d["reward"]), int(d["explored"]), int(d["hits"]),
                   list(d["recent"]))


def item_key(partition: int, item_id: str) -> bytes:
    return f"{partition}/{item_id}".encode()


class BatchRng:
    """Per-row generators behind the ``numpy.random.Generator`` calls the policies make, so row
    ``b``'s draws depend only on its own (user, event) seed, never on the rest of the batch."""

    def __init__(self, generators: Sequence[np.random.Generator]) -> None:
        self.gens = list(generators)

    def _stack(self, draw: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
        return np.stack([draw(g, b) for b, g in enumerate(self.gens)], axis=1)

    def random(self, size: tuple[int, ...]) -> np.ndarray:
        return self._stack(lambda g, _: g.random((size[0], *size[2:])))

    def standard_normal(self, size: tuple[int, ...]) -> np.ndarray:
        return self._stack(lambda g, _: g.standard_normal((size[0], *size[2:])))

    def beta(self, a: np.ndarray, b: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        return self._stack(lambda g, r: g.beta(a[r], b[r], size=(size[0], *size[2:])))


# ------------------------------------------------------------------------------- explorer
class Explorer:
    """Keeps the bandit statistics and turns the ranker's scored pool into the final list."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        items: MutableMapping[bytes, bytes] | None = None,
        users: MutableMapping[bytes, bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.policy: Policy = create_policy(settings.policy)
        self.items: MutableMapping[bytes, bytes] = {} if items is None else items
        self.users: MutableMapping[bytes, bytes] = {} if users is None else users
        self.scale = RatingScale(settings.rating_low, settings.rating_high)
        # Per partition: (3, capacity) stats aligned with catalog rows + a loaded mask, so a
        # batch gathers (B, M) statistics by fancy indexing; the table is read once per item.
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._log: list[tuple[int, int, float]] = []  # this batch's (partition, row, reward)
        self.rejected = 0

    @property
    def active(self) -> bool:
        return self.settings.policy != "none" and self.settings.explore_slots > 0

    def depth(self, k: int, n_items: int) -> int:
        """How many ranked items the ranker must return: the exploit head plus the pool."""
        if not self.active:
            return k
        return min(n_items, k + self.settings.explore_pool)

    def clear_cache(self) -> None:
        """Forget cached statistics (after a rebalance the table is the only truth)."""
        self._cache.clear()

    # --------------------------------------------------------------- per event
    def observe(self, event: Interaction, fresh: bool) -> int:
        """Record a fresh event's reward; returns this event's position in the batch log.
        Raises :class:`RewardError` before touching anything for an invalid reward."""
        if not fresh:
            return len(self._log)
        reward = checked_reward(event, self.scale)
        part = stats_partition(event.user_id, self.settings.partitions)
        row = self.catalog.ensure(event.item_id, event.domain)
        stats = self._gather(part, np.array([row]))[:, 0] + (1.0, reward, reward * reward)
        values, _ = self._cache[part]
        values[:, row] = stats
        self.items[item_key(part, event.item_id)] = encode_item_stats(int(stats[0]), *stats[1:])
        if self.active:  # the log only serves slates(), which clears it
            self._log.append((part, row, reward))
        ukey = event.user_id.encode()
        user = UserStats.from_bytes(self.users.get(ukey))
        user.n += 1
        user.reward += reward
        if event.item_id in user.recent:
            user.hits += 1
            user.recent.remove(event.item_id)
        self.users[ukey] = user.to_bytes()
        return len(self._log)

    def shown(self, user_id: str, explored: Sequence[str]) -> None:
        """Remember the explore picks shown to a user (to count hits when they come back)."""
        if not explored:
            return
        ukey = user_id.encode()
        user = UserStats.from_bytes(self.users.get(ukey))
        user.explored += len(explored)
        user.recent = (user.recent + [i for i in explored if i not in user.recent])[
            -RECENT_EXPLORES:]
        self.users[ukey] = user.to_bytes()

    def _gather(self, part: int, rows: np.ndarray) -> np.ndarray:
        """(3, *rows.shape) count / sum / squared sum of catalog ``rows`` in ``part``."""
        size = len(self.catalog)
        values, loaded = self._cache.get(part, (np.zeros((3, 0)), np.zeros(0, dtype=bool)))
        if values.shape[1] < size:
            cap = max(1024, 2 * size)
            grown, seen = np.zeros((3, cap)), np.zeros(cap, dtype=bool)
            grown[:, : values.shape[1]] = values
            seen[: loaded.shape[0]] = loaded
            values, loaded = grown, seen
            self._cache[part] = (values, loaded)
        missing = np.unique(rows[~loaded[rows]])
        ids = self.catalog.ids
        for row in missing.tolist():  # first touch of an item in this partition only
            values[:, row] = decode_item_stats(self.items.get(item_key(part, ids[row])))
        loaded[missing] = True
        return values[:, rows]

    # --------------------------------------------------------------- per micro-batch
    def exploration_rate(self, n_events: int) -> float:
        s = self.settings
        return min(1.0, s.explore_epsilon) * s.explore_decay / (s.explore_decay + n_events)

    def slates(
        self,
        snapshots: Sequence[Snapshot],
        pool_scores: np.ndarray,
        pool_rows: np.ndarray,
        k: int,
        support: SupportBatch,
        support_scores: np.ndarray,
        why_of: Callable[[int, bool], str],
    ) -> list[list[SlateEntry]]:
        """Final lists: ``pool_*`` (B, depth) are the ranker's best items, best first."""
        try:
            return self._slates(snapshots, pool_scores, pool_rows, k, support, support_scores,
                                why_of)
        finally:
            self._log.clear()

    def _slates(
        self,
        snapshots: Sequence[Snapshot],
        pool_scores: np.ndarray,
        pool_rows: np.ndarray,
        k: int,
        support: SupportBatch,
        support_scores: np.ndarray,
        why_of: Callable[[int, bool], str],
    ) -> list[list[SlateEntry]]:
        b_size, depth = pool_rows.shape
        head = max(0, k - self.settings.explore_slots)
        finite = np.isfinite(pool_scores)
        personal = [bool(s.rows) for s in snapshots]
        placed_cols: list[list[int]] = [list(range(min(head, depth))) for _ in range(b_size)]
        out: list[list[SlateEntry]] = [
            [(int(pool_rows[b, c]), float(pool_scores[b, c]), why_of(int(pool_rows[b, c]),
                                                                     personal[b]), 1.0)
             for c in placed_cols[b] if finite[b, c]]
            for b in range(b_size)
        ]
        if depth <= head:
            return out
        rng = BatchRng([event_rng(self.settings.seed, s.event.user_id, s.event.event_id)
                        for s in snapshots])
        ctx = self._context(snapshots, pool_scores, pool_rows, support, support_scores)
        rates = np.array([self.exploration_rate(s.support.n_total) for s in snapshots])
        available = finite.copy()
        available[:, :head] = False
        for _ in range(head, min(k, depth)):
            coins = rng.random((1, b_size))[0]
            ctx.available = available
            choice = self.policy.choose(ctx, rng)
            greedy = np.where(available.any(axis=1), available.argmax(axis=1), -1)
            explore = coins < rates
            column = np.where(explore, choice.column, greedy)
            prob = rates * np.where(column == choice.column, choice.probability, 0.0) + (
                1 - rates) * (column == greedy)
            for b in range(b_size):
                c = int(column[b])
                if c < 0:
                    continue
                available[b, c] = False
                row = int(pool_rows[b, c])
                why = "explore" if c != greedy[b] else why_of(row, personal[b])
                out[b].append((row, float(pool_scores[b, c]), why, float(prob[b])))
        return out

    def _context(
        self,
        snapshots: Sequence[Snapshot],
        pool_scores: np.ndarray,
        pool_rows: np.ndarray,
        support: SupportBatch,
        support_scores: np.ndarray,
    ) -> ArmContext:
        b_size, depth = pool_rows.shape
        parts = np.array([stats_partition(s.event.user_id, self.settings.partitions)
                          for s in snapshots])
        stats = np.zeros((3, b_size, depth))
        for part in np.unique(parts).tolist():
            rows_of = parts == part
            stats[:, rows_of] = self._gather(part, pool_rows[rows_of])
        n, total, sq = stats[0], stats[1], stats[2]
        self._undo_later(snapshots, parts, pool_rows, n, total, sq)
        prior = 1.0 / (1.0 + np.exp(-np.clip(np.nan_to_num(pool_scores, neginf=-30.0), -30, 30)))
        ctx = ArmContext(n, total, sq, prior, np.isfinite(pool_scores))
        if self.policy.contextual:
            feats = self.catalog.features
            norms = np.linalg.norm(feats, axis=1, keepdims=True)
            unit = feats / np.maximum(norms, 1e-9)
            ctx.x = unit[pool_rows].astype(np.float64)
            hist_rows = support.items.numpy()
            mask = support.mask.numpy()
            ctx.hist_x = unit[hist_rows].astype(np.float64)
            hist_prior = 1.0 / (1.0 + np.exp(-np.clip(support_scores, -30, 30)))
            ctx.hist_r = np.where(mask, support.targets.numpy() - hist_prior, 0.0)
            ctx.hist_mask = mask
        return ctx

    def _undo_later(
        self,
        snapshots: Sequence[Snapshot],
        parts: np.ndarray,
        pool_rows: np.ndarray,
        n: np.ndarray,
        total: np.ndarray,
        sq: np.ndarray,
    ) -> None:
        """Give each row the statistics as of right after its own event: subtract rewards that
        later events of the same batch and partition added (micro-batch independence)."""
        if not self._log:
            return
        d_part, d_row, d_reward = (np.array(c) for c in zip(*self._log, strict=True))
        # explore_seq < 0: a snapshot made without apply() sees the statistics as they are now.
        seq = np.array([s.explore_seq if s.explore_seq >= 0 else len(self._log)
                        for s in snapshots])
        later = (np.arange(len(self._log))[None] >= seq[:, None]) & (d_part[None] == parts[:, None])
        hit = (pool_rows[:, :, None] == d_row[None, None]) & later[:, None, :]  # (B, M, D)
        n -= hit.sum(axis=2)
        total -= hit @ d_reward
        sq -= hit @ (d_reward**2)

