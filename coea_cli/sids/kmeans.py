"""Deterministic k-means (k-means++ seeding, Lloyd iterations) in numpy.

Empty clusters are re-seeded with the points farthest from their centres, so every
cluster ends non-empty whenever there are at least k distinct points.
"""

from __future__ import annotations

import numpy as np


def sq_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [n, k] (clipped at 0)."""
    d = (x * x).sum(1, keepdims=True) - 2.0 * (x @ centers.T) + (centers * centers).sum(1)[None]
    return np.maximum(d, 0.0, out=d)


def assign(x: np.ndarray, centers: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre per point -> (labels int64 [n], squared distance float32 [n])."""
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), chunk):
        d = sq_distances(x[s : s + chunk], centers)
        labels[s : s + chunk] = d.argmin(1)
        dist[s : s + chunk] = d[np.arange(len(d)), labels[s : s + chunk]]
    return labels, dist


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability proportional to D(x)^2.

    When all remaining points coincide with chosen centres, further centres are drawn
    uniformly (they may then duplicate).
    """
    n = len(x)
    centers = np.empty((k, x.shape[1]), dtype=x.dtype)
    centers[0] = x[rng.integers(n)]
    closest = sq_distances(x, centers[:1])[:, 0].astype(np.float64)
    for j in range(1, k):
        total = closest.sum()
        if total > 0:
            idx = int(np.searchsorted(np.cumsum(closest), rng.random() * total))
            idx = min(idx, n - 1)
        else:
            idx = int(rng.integers(n))
        centers[j] = x[idx]
        np.minimum(closest, sq_distances(x, centers[j : j + 1])[:, 0], out=closest)
    return centers


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    iters: int = 30,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster `x` [n, d] into k groups -> (centres float32 [k, d], labels int64 [n]).

    Deterministic for a seed. Raises ValueError when n < k.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if k < 1 or n < k:
        raise ValueError(f"k-means needs 1 <= k <= n points (k={k}, n={n})")
    rng = np.random.default_rng(seed)
    centers = kmeans_pp(x, k, rng)
    labels, dist = assign(x, centers)
    prev = np.inf
    for _ in range(iters):
        centers = _means(x, labels, dist, centers)
        labels, dist = assign(x, centers)
        inertia = float(dist.sum())
        if prev - inertia <= tol * max(prev, 1e-12):
            break
        prev = inertia
    return repair_empty(x, centers, labels, dist)


def _means(x, labels, dist, centers):
    """Cluster means; an empty cluster takes the point farthest from its centre."""
    import scipy.sparse as sp

    k, n = len(centers), len(x)
    onehot = sp.csr_matrix((np.ones(n, np.float32), (labels, np.arange(n))), shape=(k, n))
    counts = np.asarray(onehot.sum(1)).ravel()
    new = np.asarray(onehot @ x, dtype=np.float32)
    filled = counts > 0
    new[filled] /= counts[filled, None]
    empty = np.flatnonzero(~filled)
    if len(empty):
        new[empty] = x[np.argsort(-dist, kind="stable")[: len(empty)]]
    return new


def repair_empty(x, centers, labels, dist, rounds: int = 10):
    """Give every empty cluster a point: the farthest points become their centres.

    Returns (centres, labels). Clusters stay empty only when x has fewer than k distinct
    points.
    """
    k = len(centers)
    for _ in range(rounds):
        counts = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if not len(empty):
            break
        donors = np.flatnonzero(counts[labels] > 1)  # points whose cluster can spare them
        if not len(donors):
            break
        far = donors[np.argsort(-dist[donors], kind="stable")[: len(empty)]]
        centers = centers.copy()
        centers[empty[: len(far)]] = x[far]
        labels, dist = assign(x, centers)
    return centers, labels
