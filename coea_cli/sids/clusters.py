"""Interest clusters: descriptions, genre coherence and code-usage statistics."""

from __future__ import annotations

from collections import Counter

import numpy as np


def level_usage(codes: np.ndarray, size: int) -> dict:
    """Utilisation (share of the K codes used) and perplexity exp(H) of one level's codes.

    Example: codes [0, 0, 1, 1] with K=4 -> utilisation 0.5, perplexity 2.0.
    """
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=size)
    p = counts[counts > 0] / max(len(codes), 1)
    return {
        "size": int(size),
        "used": int((counts > 0).sum()),
        "utilisation": float((counts > 0).sum() / size),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0,
        "largest": int(counts.max()) if len(counts) else 0,
    }


def genre_matrix(categories: list[list[str] | None]):
    """Sparse binary item x genre matrix and the genre names."""
    import scipy.sparse as sp

    names: dict[str, int] = {}
    rows, cols = [], []
    for i, cats in enumerate(categories):
        for c in dict.fromkeys(cats or []):
            rows.append(i)
            cols.append(names.setdefault(c, len(names)))
    g = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(categories), max(len(names), 1))
    )
    return g, list(names)


def genre_coherence(
    labels: np.ndarray,
    categories: list[list[str] | None],
    seed: int = 0,
    exact_limit: int = 3000,
    samples: int = 200_000,
) -> dict:
    """Share of same-cluster item pairs that share a genre vs the share among all pairs.

    Pairs are unordered pairs of distinct items; "share a genre" means at least one common
    category. Exact for up to `exact_limit` items, otherwise estimated from `samples`
    random pairs of each kind (same-cluster pairs drawn uniformly over all such pairs).
    Example: labels [0, 0, 1, 1], genres [[A], [A], [B], [A]] -> same-cluster pairs
    (0,1) yes, (2,3) no -> 0.5; all 6 pairs: (0,1), (0,3), (1,3) share -> 0.5; ratio 1.0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    g, _ = genre_matrix(categories)
    if n <= exact_limit:
        share = (g @ g.T).toarray() > 0
        iu = np.triu_indices(n, 1)
        same = labels[iu[0]] == labels[iu[1]]
        rand_rate = float(share[iu].mean()) if len(iu[0]) else 0.0
        same_rate = float(share[iu][same].mean()) if same.any() else 0.0
        n_same, n_rand, method = int(same.sum()), len(iu[0]), "exact"
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, samples)
        b = (a + rng.integers(1, n, samples)) % n
        rand_rate = float(_shares(g, a, b).mean())
        a, b = _same_cluster_pairs(labels, samples, rng)
        same_rate = float(_shares(g, a, b).mean()) if len(a) else 0.0
        n_same, n_rand, method = len(a), samples, "sampled"
    return {
        "same_cluster": same_rate,
        "random": rand_rate,
        "ratio": same_rate / rand_rate if rand_rate > 0 else None,
        "same_cluster_pairs": n_same,
        "random_pairs": n_rand,
        "method": method,
    }


def _shares(g, a, b) -> np.ndarray:
    return np.asarray(g[a].multiply(g[b]).sum(1)).ravel() > 0


def _same_cluster_pairs(labels, samples, rng):
    """Uniform sample of unordered same-cluster pairs of distinct items."""
    order = np.argsort(labels, kind="stable")
    uniq, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    weight = count * (count - 1) / 2.0
    if weight.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = rng.choice(len(uniq), samples, p=weight / weight.sum())
    i = rng.integers(0, count[c])
    j = (i + rng.integers(1, count[c])) % count[c]
    return order[start[c] + i], order[start[c] + j]


def describe_clusters(
    labels: np.ndarray,
    space,
    categories: list[list[str] | None] | None,
    titles: list[str | None],
    popularity: np.ndarray,
    n_categories: int = 3,
    n_titles: int = 3,
    min_share: float = 0.25,
) -> dict:
    """One row per cluster index of `space` (a ClusterSpace; `labels`: each item's index):
    size, top categories, a short description and its SID prefix.

    Top categories: up to `n_categories` by share of the cluster's items, those held by at
    least `min_share` of them (at least the most common one). Titles: the `n_titles` most
    popular items (period-0 interactions; ties by item id).
    Description: "Comedy, Romance: Sleepless in Seattle; Notting Hill; Clueless".
    """
    from coea_cli.workspace import cluster_token

    cols = {"cluster": [], "prefix": [], "size": [], "top_categories": [], "description": []}
    size = space.size
    order = np.lexsort((np.arange(len(labels)), -np.asarray(popularity), labels))
    bounds = np.searchsorted(labels[order], np.arange(size + 1))
    for c in range(size):
        members = order[bounds[c] : bounds[c + 1]]
        top: list[str] = []
        if categories is not None and len(members):
            counts = Counter(g for i in members for g in dict.fromkeys(categories[i] or []))
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            top = [g for g, k in ranked[:n_categories] if k / len(members) >= min_share]
            top = top or [g for g, _ in ranked[:1]]
        names = [str(titles[i]) for i in members[:n_titles] if titles[i]]
        if not len(members):
            text = "(no items)"
        else:
            text = "; ".join(names) or f"{len(members)} items"
            text = f"{', '.join(top)}: {text}" if top else text
        cols["cluster"].append(c)
        cols["prefix"].append(cluster_token(space.code(c)))
        cols["size"].append(len(members))
        cols["top_categories"].append(top)
        cols["description"].append(text)
    return cols
