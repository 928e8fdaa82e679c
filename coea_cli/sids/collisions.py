"""Collision handling: balanced reassignment on the last level, then a dedup level.

Items collide when they share all L codes. Within each group of items sharing the first
L-1 codes, colliding groups are re-solved as a balanced assignment of items to last-level
codes: cost = squared distance of the item's last-level residual to each code, each code
taking at most ceil(m / K) of the m items, restricted to each item's `candidates` nearest
codes (an item whose optimal slot is outside them keeps its code). Exact (Hungarian,
scipy's linear_sum_assignment) for groups up to `exact_limit` cells, greedy by distance
beyond. What still collides gets a dedup level: 0, 1, 2, ... within each bucket, nearest
to its code first, so every item ends with a unique SID.
"""

from __future__ import annotations

import numpy as np

from coea_cli.sids.kmeans import sq_distances

_FAR = 1e12


def bucket_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense id of each row's code tuple and the size of its bucket."""
    if codes.shape[1] == 0:
        inv = np.zeros(len(codes), dtype=np.int64)
    else:
        _, inv = np.unique(codes, axis=0, return_inverse=True)
        inv = inv.ravel()
    sizes = np.bincount(inv)
    return inv, sizes[inv]


def collision_stats(codes: np.ndarray) -> dict:
    """rate = 1 - distinct tuples / N (share of items needing a non-zero dedup code);
    in_collisions = share of items in a bucket of two or more; largest bucket."""
    n = len(codes)
    inv, size = bucket_ids(codes)
    distinct = int(inv.max()) + 1 if n else 0
    return {
        "rate": 1.0 - distinct / max(n, 1),
        "in_collisions": float((size > 1).mean()) if n else 0.0,
        "largest_bucket": int(size.max()) if n else 0,
        "distinct": distinct,
    }


def rebalance_last_level(
    codes: np.ndarray,
    residual: np.ndarray,
    codebook: np.ndarray,
    candidates: int = 16,
    exact_limit: int = 2_000_000,
) -> tuple[np.ndarray, int]:
    """Reassign last-level codes inside colliding prefix groups -> (new codes, items moved)."""
    codes = codes.copy()
    k = len(codebook)
    prefix, _ = bucket_ids(codes[:, :-1])
    _, full_size = bucket_ids(codes)
    groups = np.unique(prefix[full_size > 1])
    if not len(groups):
        return codes, 0
    order = np.argsort(prefix, kind="stable")
    starts = np.searchsorted(prefix[order], groups)
    ends = np.searchsorted(prefix[order], groups, side="right")
    moved = 0
    for s, e in zip(starts, ends, strict=True):
        idx = order[s:e]
        cost = sq_distances(residual[idx].astype(np.float64), codebook.astype(np.float64))
        if candidates < k:
            near = np.argpartition(cost, candidates - 1, axis=1)[:, :candidates]
            allowed = np.zeros_like(cost, dtype=bool)
            np.put_along_axis(allowed, near, True, axis=1)
            cost = np.where(allowed, cost, _FAR)
        new = balanced_assign(cost, exact_limit)
        keep = cost[np.arange(len(idx)), new] >= _FAR
        new[keep] = codes[idx[keep], -1]
        moved += int((codes[idx, -1] != new).sum())
        codes[idx, -1] = new
    return codes, moved


def balanced_assign(cost: np.ndarray, exact_limit: int = 2_000_000) -> np.ndarray:
    """Assign m items to k slots of capacity ceil(m/k) minimising the total cost."""
    m, k = cost.shape
    cap = -(-m // k)
    if m * k * cap <= exact_limit:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(np.repeat(cost, cap, axis=1))
        out = np.empty(m, dtype=np.int64)
        out[rows] = cols // cap
        return out
    return _greedy_assign(cost, cap)


def _greedy_assign(cost: np.ndarray, cap: int) -> np.ndarray:
    """Items in order of their best cost take their nearest code with room left."""
    m, k = cost.shape
    room = np.full(k, cap)
    out = np.empty(m, dtype=np.int64)
    prefs = np.argsort(cost, axis=1, kind="stable")
    for i in np.argsort(cost.min(1), kind="stable"):
        for c in prefs[i]:
            if room[c] > 0:
                out[i] = c
                room[c] -= 1
                break
    return out


def dedup_level(codes: np.ndarray, residual: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Dedup code per item: rank within its bucket of identical codes (0 = nearest)."""
    n = len(codes)
    inv, _ = bucket_ids(codes)
    diff = residual - codebook[codes[:, -1]]
    dist = (diff.astype(np.float64) ** 2).sum(1)
    order = np.lexsort((np.arange(n), dist, inv))
    sorted_inv = inv[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    start_of = np.repeat(first, np.diff(np.r_[first, n]))
    dup = np.empty(n, dtype=np.int64)
    dup[order] = np.arange(n) - start_of
    return dup
