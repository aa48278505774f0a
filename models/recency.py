"""Exponentially decayed item counts: the "what is popular *now*" signal of the item prior.

New users arrive at the end of the timeline and favour recent items; an all-time log-count prior
cannot tell a 1996 hit from a 2018 one (measured on ml-latest-small: a ranker by decayed counts
reaches NDCG@10 .52 for new users at 1 event, all-time popularity .41). The decay is per *event*,
not per second: every new event multiplies all counts by ``2 ** (-1 / half_life)`` and adds 1 to
its item. Two consequences make it a good serving signal:

* the total mass converges to ``1 / (1 - 2 ** (-1 / half_life))`` whatever the traffic rate, so a
  quiet period (few events per year) does not wash the signal out, and a worker that sees only
  its own partitions of the stream holds the same *shares* as one that sees everything;
* the state is one vector plus one scalar, updated in O(1) per event.

Learners see ``log1p(count)`` (:func:`recency_feature`) as ``ItemBank.recency``. Training uses
:class:`RecencySnapshots` so that every episode sees the counts as of its own time (no future),
serving uses :class:`DecayedCounts` (the bundle's counts at train end, then updated online).

``river.stats`` has exponentially weighted *scalar* statistics but no vector of per-item decayed
counts; one counter object per item would put a Python loop over the catalog on the hot path, so
this is hand-written numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: Rescale the lazily-decayed accumulator before its growth factor overflows float64 precision.
_RESCALE_AT = 2.0**40


def recency_feature(counts: np.ndarray | Tensor) -> Tensor:
    """The learner input for decayed ``counts`` (any shape): ``log1p(count)``, float32."""
    t = counts if isinstance(counts, Tensor) else torch.from_numpy(np.asarray(counts))
    return torch.log1p(t.to(torch.float32).clamp(min=0.0))


def decayed_counts(rows: np.ndarray, n_items: int, half_life: float) -> np.ndarray:
    """Decayed counts right after the last of ``rows`` (item rows in time order), shape (N,)."""
    rows = np.asarray(rows, dtype=np.int64)
    age = np.arange(rows.size - 1, -1, -1, dtype=np.float64)  # events after each one
    return np.bincount(rows, weights=np.exp2(-age / half_life), minlength=n_items)


class DecayedCounts:
    """Online per-item decayed counts with an O(1) update per event.

    Stored lazily as ``acc * 2 ** (-events / half_life)``: an event adds the current growth factor
    to its item's accumulator instead of decaying the whole vector, and the vector is rescaled
    once the factor gets large (every ~40 half-lives).

    Examples
    --------
    >>> c = DecayedCounts(3, half_life=1.0)
    >>> c.add(0); c.add(1)
    >>> [round(float(x), 3) for x in c.values()]
    [0.5, 1.0, 0.0]
    """

    def __init__(
        self, n_items: int, half_life: float, initial: np.ndarray | None = None
    ) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        self.half_life = float(half_life)
        self._step = 2.0 ** (1.0 / self.half_life)
        self._acc = np.zeros(max(n_items, 0), dtype=np.float64)
        if initial is not None:
            self._acc[: initial.shape[0]] = initial
        self._growth = 1.0
        self.events = 0  # events added since construction

    def __len__(self) -> int:
        return int(self._acc.shape[0])

    def resize(self, n_items: int) -> None:
        """Grow to ``n_items`` rows (new items start at 0; rows are append-only)."""
        if n_items > self._acc.shape[0]:
            grown = np.zeros(max(n_items, 2 * self._acc.shape[0]), dtype=np.float64)
            grown[: self._acc.shape[0]] = self._acc
            self._acc = grown

    def add(self, row: int) -> None:
        """Record one event on item ``row``: all counts decay one step, ``row`` gains 1."""
        self.resize(row + 1)
        self._growth *= self._step
        self._acc[row] += self._growth
        self.events += 1
        if self._growth > _RESCALE_AT:
            self._acc /= self._growth
            self._growth = 1.0

    def values(self, n_items: int | None = None) -> np.ndarray:
        """The decayed counts (float64), the first ``n_items`` rows (zero-padded if longer)."""
        n = len(self) if n_items is None else n_items
        out = np.zeros(n, dtype=np.float64)
        m = min(n, len(self))
        out[:m] = self._acc[:m] / self._growth
        return out


class RecencySnapshots:
    """Decayed and plain item counts of a training stream as of every ``every``-th event.

    ``at(positions)`` (decayed) and ``counts_at(positions)`` (all-time so far) return the counts
    as of the last snapshot at or before each stream position (the number of events already
    seen), so an episode served at stream position ``p`` sees counts from events strictly before
    ``p`` only, at most ``every - 1`` events stale. Both matter: an episode of 2000 that saw the
    all-time counts of the whole log would find its own future in the popularity prior and learn
    to trust it more than it deserves for users arriving at the end of the log. Memory:
    ``2 * (L // every + 1)`` rows of ``N`` float32.
    """

    def __init__(
        self, rows: Sequence[int] | np.ndarray, n_items: int, half_life: float, every: int = 250
    ) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.every, self.half_life = int(every), float(half_life)
        n_snap = rows.size // self.every + 1
        out = np.zeros((n_snap, n_items), dtype=np.float32)
        total = np.zeros((n_snap, n_items), dtype=np.float32)
        cur = np.zeros(n_items, dtype=np.float64)
        decay_block = 2.0 ** (-self.every / self.half_life)
        for k in range(1, n_snap):
            block = rows[(k - 1) * self.every : k * self.every]
            # one block of events at a time: decay the old counts, add the block's own
            cur = cur * decay_block + decayed_counts(block, n_items, self.half_life)
            out[k] = cur
            total[k] = total[k - 1] + np.bincount(block, minlength=n_items)
        self.table = torch.from_numpy(out)
        self.totals = torch.from_numpy(total)

    def _snap(self, positions: Tensor | np.ndarray) -> Tensor:
        pos = torch.as_tensor(positions, dtype=torch.long).clamp(min=0)
        return (pos // self.every).clamp(max=self.table.shape[0] - 1)

    def at(self, positions: Tensor | np.ndarray) -> Tensor:
        """(B, N) decayed counts as of stream ``positions`` (B,)."""
        return self.table[self._snap(positions)]

    def counts_at(self, positions: Tensor | np.ndarray) -> Tensor:
        """(B, N) plain counts of the events before stream ``positions`` (B,)."""
        return self.totals[self._snap(positions)]
