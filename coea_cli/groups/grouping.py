"""Assign users to groups: demographic cells, behaviour k-means, or both (hybrid).

Behaviour features are a user's histogram over interest clusters (SID prefixes).
Groups are fitted on period-0 histories (the initial training period) and never refitted.
A user with period-0 history keeps the group of the fit. Any other user is placed at each
period start p with the history before p (nearest centroid), so nothing from period p or later
decides a group used at p; a user with no history yet is placed by attributes (the most
common group among users of the same demographic cell, then of coarser cells) or, without
attributes, in the largest group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# MovieLens-1M age buckets (also used for raw ages, e.g. MovieLens-100K).
AGE_BUCKETS = ((0, 17, "under 18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"))
AGE_BUCKETS += ((45, 49, "45-49"), (50, 55, "50-55"), (56, 10_000, "56+"))
SKIP_COLUMNS = ("user_id", "original_id")
# Attribute columns with more distinct values than this (zip codes, ids) are not used.
MAX_CATEGORIES = 30


@dataclass
class Grouping:
    """Group of each user (0 = largest group) and a short description of each group."""

    labels: np.ndarray  # [U] int32, at the last period start (the test period)
    descriptions: list[str]
    method: str
    notes: list[str]
    by_period: dict[int, np.ndarray] = field(default_factory=dict)  # period start -> [U]


def age_label(age: float) -> str:
    for lo, hi, label in AGE_BUCKETS:
        if lo <= age <= hi:
            return label
    return "unknown"


def attribute_columns(
    users, n_users: int, basis: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Usable user attributes as string labels, one array [U] per column (in user_id order).

    Strings and booleans are categories; `age` is bucketed as in MovieLens-1M; other numbers
    go into quartile bins; missing values become "unknown"; columns with more than
    MAX_CATEGORIES distinct values (zip codes, free text) are left out. Quartiles and the
    category counts use the users in `basis` (all for None), so users who arrive later change
    nothing for the others.
    """
    if users is None or users.num_rows == 0:
        return {}
    ids = users["user_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for name in users.column_names:
        if name in SKIP_COLUMNS:
            continue
        values = users[name].to_pylist()
        labels = np.full(n_users, "unknown", dtype=object)
        numeric = all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None
        )
        present = [v for v in values if v is not None]
        if not present:
            continue
        if numeric and name.lower() == "age":
            col = [age_label(v) if v is not None else "unknown" for v in values]
        elif numeric:
            col = _quartile_labels(name, values, None if basis is None else basis[ids])
        else:
            col = [str(v) if v is not None and str(v) != "" else "unknown" for v in values]
        labels[ids] = col
        seen = set(col) if basis is None else {c for c, b in zip(col, basis[ids], strict=True) if b}
        if len(seen) < 2 or len(seen) > MAX_CATEGORIES:
            continue
        out[name] = labels
    return out


def _quartile_labels(name: str, values: list, basis: np.ndarray | None = None) -> list[str]:
    x = np.array([np.nan if v is None else float(v) for v in values])
    ref = x if basis is None or not basis.any() else x[basis]
    edges = np.unique(np.nanquantile(ref, [0.0, 0.25, 0.5, 0.75, 1.0]))
    if len(edges) < 2:
        return ["unknown" if np.isnan(v) else f"{name} {v:g}" for v in x]
    bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return [
        "unknown" if np.isnan(v) else f"{edges[b]:g}-{edges[b + 1]:g}"
        for v, b in zip(x, bins, strict=True)
    ]


def prefix_codes(attrs: dict[str, np.ndarray], n_users: int) -> np.ndarray:
    """codes[d, u]: id of user u's cell when only the first d attributes are kept."""
    names = list(attrs)
    codes = np.zeros((len(names) + 1, n_users), dtype=np.int64)
    for d in range(1, len(names) + 1):
        keys = np.array(["\x1f".join(str(attrs[n][u]) for n in names[:d]) for u in range(n_users)])
        codes[d] = np.unique(keys, return_inverse=True)[1]
    return codes


def demographic_cells(
    attrs: dict[str, np.ndarray], n_users: int, min_size: int, max_groups: int
) -> Grouping:
    """Cells of all attributes (e.g. age bucket x gender x occupation), merged upward.

    A cell smaller than `min_size` gives its users to its parent cell (the last attribute
    dropped: occupation, then gender, then age); the most specific small cells go first, so
    the small siblings of a cell pool together. While there are more than `max_groups` cells
    the smallest one is merged upward the same way.
    """
    names = list(attrs)
    codes = prefix_codes(attrs, n_users)
    depth = np.full(n_users, len(names), dtype=np.int64)
    big = int(codes.max()) + 1
    while True:
        ids = depth * big + codes[depth, np.arange(n_users)]
        cells, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
        cell_depth = cells // big
        mergeable = cell_depth > 0
        small = mergeable & (sizes < min_size)
        if small.any():
            pick = _smallest(sizes, cell_depth, small, deepest=True)
        elif len(cells) > max_groups and mergeable.any():
            pick = _smallest(sizes, cell_depth, mergeable, deepest=False)
        else:
            break
        depth[inverse == pick] -= 1
    labels = relabel_by_size(inverse)
    descriptions = []
    for g in range(labels.max() + 1):
        u = int(np.flatnonzero(labels == g)[0])
        kept = [f"{n} {attrs[n][u]}" for n in names[: depth[u]]]
        descriptions.append(", ".join(kept) if kept else "all other users")
    return Grouping(labels, descriptions, "demographic", [])


def _smallest(sizes: np.ndarray, depth: np.ndarray, allowed: np.ndarray, deepest: bool) -> int:
    """Index of the allowed cell to merge next: the smallest (ties: the most specific), or,
    with `deepest`, the smallest of the most specific ones (so sibling cells pool first)."""
    keys = (
        (np.arange(len(sizes)), -depth, sizes)
        if not deepest
        else (np.arange(len(sizes)), sizes, -depth)
    )
    order = np.lexsort(keys)
    return int(order[allowed[order]][0])


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber groups 0..G-1 by size, largest first (ties by old label)."""
    uniq, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.lexsort((uniq, -sizes))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse].astype(np.int32)


def cluster_histograms(
    user_ids: np.ndarray, item_ids: np.ndarray, item_cluster: np.ndarray, n_users: int
) -> np.ndarray:
    """Counts [U, C] of each user's interactions per interest cluster."""
    n_clusters = int(item_cluster.max()) + 1 if len(item_cluster) else 0
    flat = user_ids.astype(np.int64) * n_clusters + item_cluster[item_ids]
    counts = np.bincount(flat, minlength=n_users * n_clusters)
    return counts.reshape(n_users, n_clusters).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def one_hot_attributes(
    attrs: dict[str, np.ndarray], n_users: int, vocab_of: np.ndarray | None = None
) -> np.ndarray:
    """One-hot attributes [U, sum of categories], scaled so each row has unit norm. The
    categories are those of the users in `vocab_of` (all users for None): users who arrive
    later do not move the columns, and a category only they have is a zero block."""
    if not attrs:
        return np.zeros((n_users, 0), dtype=np.float32)
    rows = np.arange(n_users) if vocab_of is None else np.flatnonzero(vocab_of)
    blocks = []
    for labels in attrs.values():
        labels = labels.astype(str)
        vocab = np.unique(labels[rows])
        col = np.searchsorted(vocab, labels)
        known = (col < len(vocab)) & (vocab[np.minimum(col, len(vocab) - 1)] == labels)
        block = np.zeros((n_users, len(vocab)), dtype=np.float32)
        block[np.flatnonzero(known), col[known]] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1) / np.sqrt(len(blocks))


def kmeans_fit(features: np.ndarray, fit_mask: np.ndarray, n_groups: int, seed: int):
    """k-means (sklearn) on the rows in `fit_mask`: (model or None, notes)."""
    from sklearn.cluster import KMeans

    notes = []
    x_fit = features[fit_mask]
    distinct = len(np.unique(x_fit.round(6), axis=0)) if len(x_fit) else 0
    k = min(n_groups, distinct)
    if k < n_groups:
        notes.append(f"only {distinct} distinct users to cluster: {k} groups instead of {n_groups}")
    if k == 0:
        return None, notes
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x_fit), notes


def kmeans_assign(km, features: np.ndarray, fit_mask: np.ndarray, assign_mask: np.ndarray):
    """The fitted labels for `fit_mask` rows, the nearest centroid for other rows in
    `assign_mask`, -1 elsewhere."""
    labels = np.full(len(features), -1, dtype=np.int64)
    if km is None:
        return labels
    labels[fit_mask] = km.labels_
    rest = assign_mask & ~fit_mask
    if rest.any():
        labels[rest] = km.predict(features[rest])
    return labels


def fill_by_attributes(labels: np.ndarray, attrs: dict[str, np.ndarray]) -> np.ndarray:
    """Give users with label -1 the most common label among labelled users of their
    demographic cell, then of coarser cells; the rest get the most common label overall."""
    labels = labels.copy()
    n_users = len(labels)
    missing = labels < 0
    if not missing.any() or missing.all():
        return np.where(missing, 0, labels)
    n_labels = int(labels.max()) + 1
    codes = prefix_codes(attrs, n_users) if attrs else np.zeros((1, n_users), dtype=np.int64)
    known = ~missing  # votes come from the originally labelled users only
    for d in range(codes.shape[0] - 1, -1, -1):
        code = codes[d]
        votes = np.bincount(
            code[known] * n_labels + labels[known], minlength=(code.max() + 1) * n_labels
        ).reshape(-1, n_labels)
        has = votes.sum(axis=1) > 0
        todo = (labels < 0) & has[code]
        labels[todo] = votes[code[todo]].argmax(axis=1)
    return labels


def _by_size(by_period: dict[int, np.ndarray], fit_mask: np.ndarray) -> dict[int, np.ndarray]:
    """Renumber groups so that 0 is the largest among the users of the fit (period 0), the
    same numbering for every period: users who arrive later never renumber the groups."""
    fitted = by_period[max(by_period)][fit_mask]
    n = int(max(labels.max() for labels in by_period.values())) + 1
    sizes = np.bincount(fitted, minlength=n)
    order = np.lexsort((np.arange(n), -sizes))
    mapping = np.empty(n, dtype=np.int64)
    mapping[order] = np.arange(n)
    return {p: mapping[labels].astype(np.int32) for p, labels in by_period.items()}


def behavior_groups(
    hist_fit: np.ndarray, hist_at: dict[int, np.ndarray], attrs: dict, n_groups: int, seed: int
) -> Grouping:
    """k-means over unit cluster histograms (period 0); `hist_at` maps each period start to
    the histograms of the history before it. See the module docstring."""
    fit_mask = hist_fit.sum(axis=1) > 0
    last = hist_at[max(hist_at)]
    if not fit_mask.any():
        fit_mask = last.sum(axis=1) > 0
    km, notes = kmeans_fit(unit_rows(np.where(fit_mask[:, None], hist_fit, last)), fit_mask,
                           n_groups, seed)  # fmt: skip
    by_period = {}
    for p, hist in sorted(hist_at.items()):
        feats = np.where(fit_mask[:, None], unit_rows(hist_fit), unit_rows(hist))
        labels = kmeans_assign(km, feats, fit_mask, feats.any(axis=1))
        if p == max(hist_at):
            n_none = int((labels < 0).sum())
            if n_none:
                how = "by attributes" if attrs else "to the largest group"
                notes.append(f"{n_none} users without history before the test period placed {how}")
        by_period[p] = fill_by_attributes(labels, attrs)
    by_period = _by_size(by_period, fit_mask)
    labels = by_period[max(by_period)]
    descriptions = [f"behaviour group {g}" for g in range(labels.max() + 1)]
    return Grouping(labels, descriptions, "behavior", notes, by_period)


def hybrid_groups(
    hist_fit: np.ndarray,
    hist_at: dict[int, np.ndarray],
    attrs: dict,
    n_groups: int,
    seed: int,
    attr_weight: float,
) -> Grouping:
    """k-means over [unit cluster histogram, attr_weight x unit one-hot attributes].

    Fitted on users with period-0 history; at each period start every other user (including
    those with no history yet, whose histogram part is zero) gets the nearest centroid.
    """
    fit_mask = hist_fit.sum(axis=1) > 0
    last = hist_at[max(hist_at)]
    if not fit_mask.any():
        fit_mask = last.sum(axis=1) > 0
    n_users = len(hist_fit)
    onehot = attr_weight * one_hot_attributes(attrs, n_users, vocab_of=fit_mask)

    def features(hist):
        part = np.where(fit_mask[:, None], unit_rows(hist_fit), unit_rows(hist))
        return np.concatenate([part, onehot], axis=1), part

    km, notes = kmeans_fit(features(last)[0], fit_mask, n_groups, seed)
    by_period = {}
    for p, hist in sorted(hist_at.items()):
        feats, part = features(hist)
        labels = kmeans_assign(km, feats, fit_mask, np.ones(n_users, dtype=bool))
        if p == max(hist_at):
            n_none = int((~part.any(axis=1)).sum())
            if n_none:
                notes.append(
                    f"{n_none} users without history before the test period placed by "
                    "attributes (nearest centroid)"
                )
        by_period[p] = np.where(labels < 0, 0, labels)
    by_period = _by_size(by_period, fit_mask)
    labels = by_period[max(by_period)]
    descriptions = [f"hybrid group {g}" for g in range(labels.max() + 1)]
    return Grouping(labels, descriptions, "hybrid", notes, by_period)


def similarity_matrix(hist: np.ndarray, labels: np.ndarray, n_groups: int) -> dict:
    """Mean cosine similarity of users' cluster histograms within and between groups.

    M[a, b] = mean over pairs (u in a, v in b, u != v) of cos(h_u, h_v). Users with an empty
    histogram are left out. `intra` and `inter` are the pair-weighted means over all pairs in
    the same group and in different groups.
    """
    unit = unit_rows(hist).astype(np.float64)
    keep = unit.any(axis=1)
    unit, lab = unit[keep], labels[keep]
    sums = np.zeros((n_groups, unit.shape[1]))
    np.add.at(sums, lab, unit)
    n = np.bincount(lab, minlength=n_groups).astype(np.float64)
    dot = sums @ sums.T
    self_dot = np.bincount(lab, weights=(unit * unit).sum(axis=1), minlength=n_groups)
    pairs = np.outer(n, n)
    within = dot.diagonal() - self_dot
    within_pairs = n * (n - 1)
    np.fill_diagonal(dot, within)
    np.fill_diagonal(pairs, within_pairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(pairs > 0, dot / pairs, np.nan)
    total_pairs = pairs.sum() - within_pairs.sum()
    intra = within.sum() / within_pairs.sum() if within_pairs.sum() > 0 else float("nan")
    cross = dot.sum() - within.sum()
    inter = cross / total_pairs if total_pairs > 0 else float("nan")
    return {
        "matrix": matrix,
        "intra": float(intra),
        "inter": float(inter),
        "users": int(keep.sum()),
        "users_without_history": int((~keep).sum()),
        "sizes": n.astype(np.int64).tolist(),  # users of each group the matrix covers
    }
