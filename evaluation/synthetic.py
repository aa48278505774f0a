"""A synthetic interaction log with planted structure, always available (no data download).

Structure planted
-----------------
* **Taste clusters.** Every item belongs to one of ``n_clusters`` clusters; its title words and its
  ``genres`` attribute are drawn mostly from that cluster's vocabulary, so content predicts the
  cluster (new items are rankable from content alone).
* **Users.** Every user has a cluster; the user attributes ``age_band`` and ``region`` equal the
  cluster's preferred values with probability ``attribute_fidelity``, so attributes predict taste
  (zero-shot from attributes is learnable).
* **Events.** A user's events come from their cluster with probability ``in_cluster``, otherwise
  from anywhere; within a pool items are drawn by a Zipf popularity (no repeats per user).
  Ratings are higher in-cluster. Timestamps increase per user; users arrive in id order
  (``u00000`` first), so the last-arriving users are the "new" users of a time split.
* **New items.** A fraction ``new_item_fraction`` of items is released late (in the second half
  of the time span) and can only be consumed after release.

Deterministic given ``seed``; ~10k events in well under a second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from schemas import Interaction, Item, User

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west", "central", "coast")
SYLLABLES = ("ka", "lo", "mi", "ru", "te", "zo", "pa", "ne", "shi", "vo", "da", "qu", "fi", "ber")
GENERIC_WORDS = ("the", "return", "night", "story", "last", "city", "of", "a", "one", "house")
T0 = 1_600_000_000.0  # epoch seconds of the first event: timestamps look like real ones
SPAN = 10_000_000.0  # seconds between the first user's arrival and the end of the log


@dataclass
class SyntheticLog:
    """Items, users (with attributes) and time-ordered rating events, plus the planted truth."""

    items: list[Item]
    users: list[User]
    events: list[Interaction]
    item_cluster: dict[str, int] = field(default_factory=dict)
    user_cluster: dict[str, int] = field(default_factory=dict)
    item_release: dict[str, float] = field(default_factory=dict)
    name: str = "synthetic"

    @property
    def profiles(self) -> dict[str, dict]:
        """User attributes by user id (what a Kindling worker's profile lookup returns)."""
        return {u.user_id: u.attributes for u in self.users}


def _cluster_vocab(n_clusters: int, rng: np.random.Generator) -> list[list[str]]:
    """Six made-up words per cluster, disjoint across clusters."""
    words: set[str] = set()
    vocab = []
    for _ in range(n_clusters):
        mine: list[str] = []
        while len(mine) < 6:
            w = "".join(rng.choice(SYLLABLES, size=3))
            if w not in words:
                words.add(w)
                mine.append(w)
        vocab.append(mine)
    return vocab


def _make_items(
    n_items: int, n_clusters: int, new_item_fraction: float, rng: np.random.Generator
) -> tuple[list[Item], np.ndarray, np.ndarray]:
    clusters = rng.integers(0, n_clusters, size=n_items)
    vocab = _cluster_vocab(n_clusters, rng)
    genre_names = [f"genre{g:02d}" for g in range(2 * n_clusters)]
    release = np.zeros(n_items)
    late = rng.random(n_items) < new_item_fraction
    release[late] = rng.uniform(0.5 * SPAN, 0.9 * SPAN, size=int(late.sum()))
    items = []
    for i in range(n_items):
        c = int(clusters[i])
        own = rng.random() < 0.85  # content matches the cluster most of the time
        src = c if own else int(rng.integers(0, n_clusters))
        words = [*rng.choice(vocab[src], size=2, replace=False), rng.choice(GENERIC_WORDS)]
        title = " ".join(str(w) for w in words)
        genres = [genre_names[2 * src + int(rng.integers(0, 2))]]
        if rng.random() < 0.3:
            genres.append(str(rng.choice(genre_names)))
        items.append(
            Item(f"i{i:05d}", title=title.title(), attributes={"genres": sorted(set(genres))})
        )
    return items, clusters, release


def _make_users(
    n_users: int, n_clusters: int, fidelity: float, rng: np.random.Generator
) -> tuple[list[User], np.ndarray]:
    clusters = rng.integers(0, n_clusters, size=n_users)
    keep_age = rng.random(n_users) < fidelity
    keep_region = rng.random(n_users) < fidelity
    rand_age = rng.integers(0, len(AGE_BANDS), size=n_users)
    rand_region = rng.integers(0, len(REGIONS), size=n_users)
    users = []
    for u in range(n_users):
        c = int(clusters[u])
        age = AGE_BANDS[c % len(AGE_BANDS)] if keep_age[u] else AGE_BANDS[rand_age[u]]
        region = REGIONS[c % len(REGIONS)] if keep_region[u] else REGIONS[rand_region[u]]
        users.append(User(f"u{u:05d}", {"age_band": age, "region": region}))
    return users, clusters


def _pick_items(keys: np.ndarray, release: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Weighted sampling without replacement respecting release times: at each event take the
    highest-keyed unused item already released (Gumbel-max over the eligible items)."""
    order = np.argsort(-keys)[: 4 * len(times) + 32]
    rel = release[order]
    used = np.zeros(order.size, dtype=bool)
    picked = np.empty(len(times), dtype=np.int64)
    for j, t in enumerate(times):
        ok = np.flatnonzero(~used & (rel <= t))
        if ok.size == 0:
            return picked[:j]
        used[ok[0]] = True
        picked[j] = order[ok[0]]
    return picked


def generate(
    n_users: int = 500,
    n_items: int = 800,
    n_clusters: int = 8,
    events_per_user: tuple[int, int] = (5, 40),
    seed: int = 0,
    *,
    in_cluster: float = 0.85,
    attribute_fidelity: float = 0.8,
    new_item_fraction: float = 0.1,
    zipf: float = 0.8,
) -> SyntheticLog:
    """Generate a synthetic log with planted cluster structure.

    Parameters
    ----------
    n_users, n_items, n_clusters : int
        Population sizes.
    events_per_user : (int, int)
        Inclusive range of events per user (uniform).
    seed : int
        Everything is a deterministic function of the arguments.
    in_cluster : float
        Probability weight of the user's own cluster (the rest is spread over all items).
    attribute_fidelity : float
        Probability that each user attribute is the cluster's preferred value.
    new_item_fraction : float
        Items released late (consumable only after their release time).
    zipf : float
        Popularity exponent: item weight ∝ rank^-zipf within a random per-item rank.

    Returns
    -------
    SyntheticLog
        Events sorted by timestamp, kind ``rate``, ratings in 0.5-steps on [0.5, 5].
    """
    rng = np.random.default_rng(seed)
    items, item_c, release = _make_items(n_items, n_clusters, new_item_fraction, rng)
    users, user_c = _make_users(n_users, n_clusters, attribute_fidelity, rng)
    popularity = (1.0 + rng.permutation(n_items)) ** -zipf
    quality = rng.normal(0.0, 0.4, size=n_items)
    starts = np.sort(rng.uniform(0.0, 0.95 * SPAN, size=n_users))
    lo, hi = events_per_user
    counts = rng.integers(lo, hi + 1, size=n_users)
    rows: list[tuple[float, int, int, float]] = []
    for u in range(n_users):
        mine = item_c == user_c[u]
        share = np.where(
            mine, in_cluster / popularity[mine].sum(), (1 - in_cluster) / popularity.sum()
        )
        weight = popularity * share
        keys = np.log(weight) + rng.gumbel(size=n_items)
        # activity spans vary: most users are brief, some stay long (across any time cut)
        duration = min(rng.uniform(0.01, 0.4) * SPAN, SPAN - starts[u])
        offsets = np.sort(rng.uniform(0.0, duration, size=counts[u]))
        times = starts[u] + offsets - offsets[0]  # the first event marks the arrival
        picked = _pick_items(keys, release, times)
        base = np.where(mine[picked], 4.0, 2.3) + quality[picked]
        ratings = np.clip(np.round(2 * (base + rng.normal(0, 0.5, picked.size))) / 2, 0.5, 5.0)
        rows.extend(zip(times[: picked.size], [u] * picked.size, picked, ratings, strict=True))
    rows.sort(key=lambda r: (r[0], r[1]))
    events = [
        Interaction(f"synthetic:{n}", f"u{u:05d}", f"i{i:05d}", "rate", float(r), T0 + float(t))
        for n, (t, u, i, r) in enumerate(rows)
    ]
    return SyntheticLog(
        items=items,
        users=users,
        events=events,
        item_cluster={it.item_id: int(c) for it, c in zip(items, item_c, strict=True)},
        user_cluster={us.user_id: int(c) for us, c in zip(users, user_c, strict=True)},
        item_release={it.item_id: T0 + float(r) for it, r in zip(items, release, strict=True)},
    )


# ------------------------------------------------------------------ cross-domain, planted
PLANTED_SOURCE, PLANTED_TARGET = "books", "movies"
PLANTED_PER_GROUP = 10


def planted_item(domain: str, group: int, j: int) -> str:
    """Item ``j`` of ``group`` in ``domain`` in :func:`planted_cross_domain`'s log."""
    return f"{domain}-{group}-{j}"


def planted_cross_domain(n_users: int = 200, seed: int = 0) -> list[Interaction]:
    """A two-domain log with one planted link: group-g users read 7 of group g's books, then
    watch 5 of group g's movies (4 groups of 10 items per domain, rated 5). Group 0 has 2/5 of
    the users, so popularity points at group 0's movies whatever a user read: a transfer model
    that serves a reader of group g group-g movies has learned the cross-domain link."""
    rng = random.Random(seed)
    events: list[Interaction] = []
    t = 0.0
    for u in range(n_users):
        g = max(u % 5 - 1, 0)
        picks = [(PLANTED_SOURCE, planted_item(PLANTED_SOURCE, g, j))
                 for j in rng.sample(range(PLANTED_PER_GROUP), 7)]
        picks += [(PLANTED_TARGET, planted_item(PLANTED_TARGET, g, j))
                  for j in rng.sample(range(PLANTED_PER_GROUP), 5)]
        for domain, it in picks:
            t += 1.0
            events.append(Interaction(f"e{len(events)}", f"u{u}", it, "rate", 5.0, t, domain))
    return events
