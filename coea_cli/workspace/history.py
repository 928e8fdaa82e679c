"""One history type: every user's interactions in time order, at any period cutoff.

DSIE, the LLM contexts, serving and evaluation all read histories through `History`, so a
"history before period k" means the same everywhere: interactions of periods < k, in time
order (ties keep table order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class UserSequences:
    """Each user's items in time order (CSR layout: items[ptr[u]:ptr[u + 1]])."""

    ptr: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [nnz] int64

    @property
    def n_users(self) -> int:
        return len(self.ptr) - 1

    def of(self, u: int) -> np.ndarray:
        return self.items[self.ptr[u] : self.ptr[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.ptr)

    def users(self) -> np.ndarray:
        """Users with at least one item, ascending."""
        return np.flatnonzero(self.lengths() > 0)


def user_sequences(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n_users: int
) -> UserSequences:
    """Group interactions by user in time order (ties keep table order)."""
    u, i = users.astype(np.int64), items.astype(np.int64)
    order = np.lexsort((np.arange(len(u)), timestamps, u))
    counts = np.bincount(u, minlength=n_users)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return UserSequences(ptr, i[order])


@dataclass
class History:
    """The interaction log of a workspace (data/interactions.parquet), loaded once."""

    users: np.ndarray  # [E] int64, table (time) order
    items: np.ndarray  # [E] int64
    times: np.ndarray  # [E] timestamps
    periods: np.ndarray  # [E] int64
    n_users: int
    n_items: int
    test_period: int
    _cache: dict = field(default_factory=dict, repr=False)

    def before(self, period: int | None) -> UserSequences:
        """Each user's items in periods < period (all periods for None)."""
        key = ("before", period)
        if key not in self._cache:
            mask = slice(None) if period is None else self.periods < period
            self._cache[key] = user_sequences(
                self.users[mask], self.items[mask], self.times[mask], self.n_users
            )
        return self._cache[key]

    def during(self, period: int) -> UserSequences:
        """Each user's items in one period."""
        key = ("during", period)
        if key not in self._cache:
            mask = self.periods == period
            self._cache[key] = user_sequences(
                self.users[mask], self.items[mask], self.times[mask], self.n_users
            )
        return self._cache[key]

    def item_counts(self, before_period: int) -> np.ndarray:
        """Interactions per item in periods < before_period."""
        return np.bincount(self.items[self.periods < before_period], minlength=self.n_items)


# ---------------------------------------------------------------- interest-cluster views


def distinct_last(clusters) -> list[int]:
    """Distinct values ordered by their last occurrence (most recent last).

    Example: [3, 1, 3, 2, 1] -> [3, 2, 1]
    """
    rev = np.asarray(clusters, dtype=np.int64)[::-1]
    values, first = np.unique(rev, return_index=True)
    return values[np.argsort(first)][::-1].tolist()


def recent_distinct(clusters, n: int) -> list[int]:
    """The last n distinct values, most recent last (none for n <= 0).

    Example: [3, 1, 3, 2, 1], n=2 -> [2, 1]
    """
    order = distinct_last(clusters)
    return order[max(0, len(order) - n) :] if n > 0 else []
