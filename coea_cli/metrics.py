"""Offline metrics for `coea evaluate`: quality, novelty, diversity and serendipity.

Conventions shared by every function:

- ``recs``: int array ``[U, K]``, item ids per user in rank order. Negative values (``-1``) are
  padding for short lists and are ignored. An item repeated in a row counts only at its first
  position. Only the first ``k`` columns are used; when ``k > K`` all ``K`` columns are used.
- ``truth``: list of ``U`` int arrays, the held-out relevant items per user. Users with empty
  truth are excluded from every average that uses ``truth`` (``n_evaluated`` counts the rest).
- ``history``: list of ``U`` int arrays, the items each user saw in training.
- ``item_cluster``: int array ``[n_items]``, interest cluster (index) of each item.
- ``item_pop``: int array ``[n_items]``, training popularity of each item.
- ``item_emb``: float array ``[n_items, d]``.

Per-user values are averaged over users (macro average). An average over no users is ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (5, 10, 20)

# Embedding rows gathered at once in the blocked loops (memory bound, not speed).
_BLOCK_FLOATS = 1 << 22


def protocol(ks: Sequence[int] = DEFAULT_KS) -> str:
    """Text describing the offline protocol, printed by ``evaluate`` before any number."""
    k_text = ", ".join(str(k) for k in ks)
    return (
        "Protocol: full ranking over all items (no sampled negatives). "
        "Models, popularity, clusters and histories use only the periods before the test period. "
        "Items a user saw in training are removed from that user's ranking. "
        "Relevant items = the user's interactions in the held-out test period; users without any "
        "are excluded. "
        f"K = {k_text}; each metric is computed per user on the top-K and averaged over users."
    )


PROTOCOL = protocol()


# ---------------------------------------------------------------- helpers


def _topk(recs, k: int) -> np.ndarray:
    """First k columns as int64, padding set to -1 and repeated items after the first set to -1."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be a 2-D array [users, K], got shape {recs.shape}")
    top = recs[:, :k].astype(np.int64, copy=True)
    top[top < 0] = -1
    if top.shape[1] > 1:
        order = np.argsort(top, axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, axis=1)
        repeat = np.zeros(top.shape, dtype=bool)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        top[repeat] = -1
    return top


def _flatten(lists, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user lists -> (row index, value) pairs; negative values dropped."""
    if len(lists) != n_rows:
        raise ValueError(f"expected {n_rows} per-user lists, got {len(lists)}")
    arrays = [np.asarray(a, dtype=np.int64).ravel() for a in lists]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=n_rows)
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    keep = values >= 0
    return rows[keep], values[keep]


def _pair_isin(rows_a, vals_a, rows_b, vals_b) -> np.ndarray:
    """For each pair (rows_a[i], vals_a[i]): is it among the pairs (rows_b, vals_b)?"""
    base = max(int(vals_a.max(initial=0)), int(vals_b.max(initial=0))) + 1
    keys = _sorted_unique(rows_b * base + vals_b)
    query = rows_a * base + vals_a
    if keys.size == 0:
        return np.zeros(query.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return keys[pos] == query


def _in_lists(top: np.ndarray, lists) -> np.ndarray:
    """Bool [U, k]: top[u, j] is a valid item contained in lists[u]."""
    rows_b, vals_b = _flatten(lists, top.shape[0])
    valid = top >= 0
    rows_a = np.nonzero(valid)[0]
    out = np.zeros(top.shape, dtype=bool)
    out[valid] = _pair_isin(rows_a, top[valid], rows_b, vals_b)
    return out


def _unexpected(top: np.ndarray, history, item_cluster) -> np.ndarray:
    """Bool [U, k]: top[u, j] is a valid item whose cluster is absent from u's history."""
    item_cluster = np.asarray(item_cluster, dtype=np.int64)
    h_rows, h_items = _flatten(history, top.shape[0])
    valid = top >= 0
    rows_a = np.nonzero(valid)[0]
    seen = _pair_isin(rows_a, item_cluster[top[valid]], h_rows, item_cluster[h_items])
    out = np.zeros(top.shape, dtype=bool)
    out[valid] = ~seen
    return out


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based; faster than np.unique's hashing on large int keys)."""
    values = np.sort(values)
    if values.size:
        values = values[np.concatenate([[True], values[1:] != values[:-1]])]
    return values


def _n_truth(truth, n_rows: int) -> np.ndarray:
    """Number of distinct relevant items per user."""
    rows, items = _flatten(truth, n_rows)
    base = int(items.max(initial=0)) + 1
    keys = _sorted_unique(rows * base + items)
    return np.bincount(keys // base, minlength=n_rows)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _row_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of values over mask per row, for rows with at least one masked entry."""
    count = mask.sum(axis=1)
    keep = count > 0
    return (np.where(mask, values, 0.0).sum(axis=1)[keep]) / count[keep]


def _unit_rows(item_emb) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (cosine 0 to everything)."""
    emb = np.asarray(item_emb, dtype=np.float64)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)


def _blocks(n_rows: int, width: int):
    step = max(1, _BLOCK_FLOATS // max(1, width))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


# Quality from precomputed masks: rel [U, k] and n_rel [U] (distinct relevant per user).


def _hr(rel, n_rel):
    return _mean(rel[n_rel > 0].any(axis=1).astype(np.float64))


def _precision(rel, n_rel, k):
    return _mean(rel[n_rel > 0].sum(axis=1) / k)


def _recall(rel, n_rel):
    ev = n_rel > 0
    return _mean(rel[ev].sum(axis=1) / n_rel[ev])


def _ndcg(rel, n_rel, k):
    ev = n_rel > 0
    gains = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = rel[ev] @ gains[: rel.shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(gains)])[np.minimum(n_rel[ev], k)]
    return _mean(dcg / ideal)


def _serendipity_rank(rel, top, item_pop, k):
    n_items = item_pop.size
    ranks = _popularity_ranks(item_pop)
    valid = top >= 0
    pop_rank = ranks[np.where(valid, top, 0)]
    p_any = np.where(pop_rank > 0, (n_items + 1 - pop_rank) / n_items, 0.0)
    p_user = (n_items + 1 - np.arange(1, top.shape[1] + 1)) / n_items
    gain = np.where(rel, np.maximum(p_user[None, :] - p_any, 0.0), 0.0)
    return gain.sum(axis=1) / k


def _popularity_ranks(item_pop) -> np.ndarray:
    """Dense popularity rank per item: 1 = largest count, equal counts share a rank, 0 = cold."""
    pop = np.asarray(item_pop, dtype=np.int64)
    levels = np.unique(pop[pop > 0])  # ascending
    ranks = np.zeros(pop.size, dtype=np.int64)
    warm = pop > 0
    ranks[warm] = levels.size - np.searchsorted(levels, pop[warm])
    return ranks


def _check_rows(top: np.ndarray, truth) -> None:
    if len(truth) != top.shape[0]:
        raise ValueError(f"recs has {top.shape[0]} rows but truth has {len(truth)} users")


# ---------------------------------------------------------------- quality


def n_evaluated(truth) -> int:
    """Number of users with at least one relevant held-out item."""
    return int((_n_truth(truth, len(truth)) > 0).sum())


def hit_rate(recs, truth, k: int) -> float:
    r"""Hit rate: share of evaluated users with at least one relevant item in the top-k.

    .. math:: HR@k = \frac{1}{|U_e|} \sum_{u \in U_e} [\,|top_k(u) \cap T_u| > 0\,]

    where :math:`U_e` are users with non-empty truth :math:`T_u`.

    Example::

        recs  = [[3, 1, 4], [5, 2, 0], [0, 1, 2]]
        truth = [[1, 4], [5], []]          # third user is not evaluated
        hit_rate(recs, truth, 1) -> (0 + 1) / 2 = 0.5
        hit_rate(recs, truth, 2) -> (1 + 1) / 2 = 1.0
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    return _hr(_in_lists(top, truth), _n_truth(truth, top.shape[0]))


def ndcg(recs, truth, k: int) -> float:
    r"""Normalised DCG with binary relevance.

    .. math::
        DCG@k(u) = \sum_{r=1}^{k} \frac{rel_u(r)}{\log_2(r + 1)}, \quad
        IDCG@k(u) = \sum_{r=1}^{\min(|T_u|, k)} \frac{1}{\log_2(r + 1)}, \quad
        NDCG@k = \frac{1}{|U_e|} \sum_{u \in U_e} \frac{DCG@k(u)}{IDCG@k(u)}

    Example::

        recs  = [[3, 1, 4], [5, 2, 0], [0, 1, 2]]
        truth = [[1, 4], [5], []]
        user 0: DCG = 1/log2(3) + 1/log2(4) = 1.130930, IDCG = 1 + 1/log2(3) = 1.630930
                -> 0.693426
        user 1: DCG = IDCG = 1 -> 1.0
        ndcg(recs, truth, 3) -> (0.693426 + 1.0) / 2 = 0.846713
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    return _ndcg(_in_lists(top, truth), _n_truth(truth, top.shape[0]), k)


def precision(recs, truth, k: int) -> float:
    r"""Precision: relevant items in the top-k divided by k (padding counts as a miss).

    .. math:: P@k = \frac{1}{|U_e|} \sum_{u \in U_e} \frac{|top_k(u) \cap T_u|}{k}

    Example::

        recs  = [[3, 1, 4], [5, 2, 0], [0, 1, 2]]
        truth = [[1, 4], [5], []]
        precision(recs, truth, 2) -> (1/2 + 1/2) / 2 = 0.5
        precision(recs, truth, 3) -> (2/3 + 1/3) / 2 = 0.5
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    return _precision(_in_lists(top, truth), _n_truth(truth, top.shape[0]), k)


def recall(recs, truth, k: int) -> float:
    r"""Recall: relevant items in the top-k divided by the number of relevant items.

    .. math:: R@k = \frac{1}{|U_e|} \sum_{u \in U_e} \frac{|top_k(u) \cap T_u|}{|T_u|}

    Example::

        recs  = [[3, 1, 4], [5, 2, 0], [0, 1, 2]]
        truth = [[1, 4], [5], []]
        recall(recs, truth, 2) -> (1/2 + 1/1) / 2 = 0.75
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    return _recall(_in_lists(top, truth), _n_truth(truth, top.shape[0]))


def leave_one_out_hr_ndcg(ranks, k: int) -> tuple[float, float]:
    r"""HR@k and NDCG@k for leave-one-out: one held-out item per user, given its 0-based rank.

    .. math::
        HR@k = mean_u [r_u < k], \quad NDCG@k = mean_u \frac{[r_u < k]}{\log_2(r_u + 2)}

    Example::

        ranks = [0, 3, 12]
        leave_one_out_hr_ndcg(ranks, 10) -> HR = 2/3 = 0.666667,
            NDCG = (1 + 1/log2(5) + 0) / 3 = (1 + 0.430677) / 3 = 0.476892
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r = np.asarray(ranks, dtype=np.int64).ravel()
    if (r < 0).any():
        raise ValueError("ranks must be >= 0")
    hit = r < k
    gain = np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)
    return _mean(hit.astype(np.float64)), _mean(gain)


def target_ranks(scores, targets) -> np.ndarray:
    """0-based rank of each user's held-out item in a full ranking of ``scores`` [U, n_items].

    Ties are counted against the target (rank = items scoring strictly higher plus the other
    items scoring equal), so constant scores cannot look good. Mask seen items with ``-inf``
    before calling.

    Example::

        scores = [[0.1, 0.9, 0.5], [0.2, 0.2, 0.7]], targets = [2, 0] -> [1, 2]
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    own = s[np.arange(s.shape[0]), t][:, None]
    return (s > own).sum(axis=1) + (s == own).sum(axis=1) - 1


# ---------------------------------------------------------------- novelty


def self_information(recs, item_pop, n_users: int, k: int) -> float:
    r"""Mean self-information (surprisal) of the recommended items, in bits.

    .. math:: SI@k = \frac{1}{|U|} \sum_u \frac{1}{n_u} \sum_{i \in top_k(u)}
        -\log_2 \frac{\max(pop(i), 1)}{|U_{train}|}

    :math:`n_u` is the number of (non-padding) items in the user's top-k; users with none are
    skipped. Items with popularity 0 are smoothed to popularity 1. With ``item_pop`` counting
    distinct users the value is >= 0; with interaction counts it can be negative.

    Example::

        item_pop = [4, 2, 1, 0], n_users = 4 -> per item: 0, 1, 2, 2 bits
        recs = [[1, 2], [0, 3], [3, -1]]
        self_information(recs, item_pop, 4, 2) -> ((1 + 2)/2 + (0 + 2)/2 + 2/1) / 3 = 1.5
    """
    top = _topk(recs, k)
    pop = np.asarray(item_pop, dtype=np.float64)
    valid = top >= 0
    info = -np.log2(np.maximum(pop[np.where(valid, top, 0)], 1.0) / float(n_users))
    return _mean(_row_mean(info, valid))


def unexpectedness(recs, history, item_cluster, k: int) -> float:
    r"""Share of recommended items whose cluster is absent from the user's history.

    .. math:: UNEXP@k = \frac{1}{|U|} \sum_u \frac{1}{n_u}
        \sum_{i \in top_k(u)} [\,c(i) \notin \{c(h) : h \in H_u\}\,]

    Users with no (non-padding) recommendation are skipped.

    Example::

        item_cluster = [0, 0, 1, 1, 2]
        history = [[0], [2, 4]]            # clusters {0} and {1, 2}
        recs = [[1, 2, 4], [0, 3, -1]]
        unexpectedness(recs, history, item_cluster, 3) -> (2/3 + 1/2) / 2 = 7/12 = 0.583333
    """
    top = _topk(recs, k)
    return _mean(_row_mean(_unexpected(top, history, item_cluster), top >= 0))


def _history_centres(history, unit, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: mean unit vector of the distinct history items, and whether there are any."""
    h_rows, h_items = _flatten(history, n_rows)
    base = int(h_items.max(initial=0)) + 1
    keys = _sorted_unique(h_rows * base + h_items)  # distinct items, grouped by user
    h_items = keys % base
    counts = np.bincount(keys // base, minlength=n_rows)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    has = counts > 0
    centre = np.zeros((n_rows, unit.shape[1]))
    for a, b in _blocks(n_rows, 64 * unit.shape[1]):
        sub = has[a:b]
        if sub.any():
            starts = offsets[a:b][sub] - offsets[a]
            vecs = unit[h_items[offsets[a] : offsets[b]]]
            centre[a:b][sub] = np.add.reduceat(vecs, starts, axis=0) / counts[a:b][sub, None]
    return centre, has


def _hist_dist_per_user(top, centre, has, unit) -> np.ndarray:
    """Mean over recommended items of 1 - cos to the history; users with both."""
    # mean over h of cos(i, h) = unit(i) . mean over h of unit(h)
    out = []
    for a, b in _blocks(top.shape[0], top.shape[1] * unit.shape[1]):
        t = top[a:b]
        valid = (t >= 0) & has[a:b, None]
        cos = np.einsum("bkd,bd->bk", unit[np.where(valid, t, 0)], centre[a:b])
        out.append(_row_mean(1.0 - cos, valid))
    return np.concatenate(out) if out else np.zeros(0)


def history_distance(recs, history, item_emb, k: int) -> float:
    r"""Mean cosine distance of the recommended items to the user's training history.

    .. math:: HD@k = \frac{1}{|U|} \sum_u \frac{1}{n_u} \sum_{i \in top_k(u)}
        \frac{1}{|H_u|} \sum_{h \in H_u} (1 - \cos(e_i, e_h))

    :math:`H_u` is the set of distinct history items. Users with an empty history or no
    recommendation are skipped. Range [0, 2]; a zero embedding has cosine 0 to everything.

    Example::

        item_emb = [[1, 0], [0, 1], [1, 1], [-1, 0]]
        history = [[0, 1], []]             # second user is skipped
        recs = [[2, 3], [0, 1]]
        item 2: 1 - 1/sqrt(2) = 0.292893;  item 3: ((1 - (-1)) + (1 - 0)) / 2 = 1.5
        history_distance(recs, history, item_emb, 2) -> (0.292893 + 1.5) / 2 = 0.896447
    """
    top = _topk(recs, k)
    unit = _unit_rows(item_emb)
    centre, has = _history_centres(history, unit, top.shape[0])
    return _mean(_hist_dist_per_user(top, centre, has, unit))


# ---------------------------------------------------------------- diversity


def _ild_per_user(top, unit) -> np.ndarray:
    """Mean pairwise cosine distance per list, for lists with at least two items."""
    n_rows, width = top.shape
    out = []
    for a, b in _blocks(n_rows, width * unit.shape[1]):
        t = top[a:b]
        valid = t >= 0
        vecs = unit[np.where(valid, t, 0)] * valid[..., None]
        total = vecs.sum(axis=1)
        # sum over pairs i<j of cos = (|sum of vectors|^2 - sum of |v|^2) / 2
        pair_cos = ((total * total).sum(axis=1) - (vecs * vecs).sum(axis=(1, 2))) / 2.0
        n = valid.sum(axis=1)
        keep = n >= 2
        pairs = n[keep] * (n[keep] - 1) / 2.0
        out.append(np.clip(1.0 - pair_cos[keep] / pairs, 0.0, 2.0))
    return np.concatenate(out) if out else np.zeros(0)


def intra_list_diversity(recs, item_emb, k: int) -> float:
    r"""Intra-list diversity: mean pairwise cosine distance inside each top-k list.

    .. math:: ILD@k = \frac{1}{|U|} \sum_u \frac{2}{n_u (n_u - 1)}
        \sum_{i < j \in top_k(u)} (1 - \cos(e_i, e_j))

    Lists with fewer than two items are skipped. Range [0, 2].

    Example::

        item_emb = [[1, 0], [0, 1], [1, 1], [-1, 0]]
        recs = [[0, 1, 3], [0, 2, -1]]
        user 0: pairs (0,1) 1, (0,3) 2, (1,3) 1 -> 4/3;  user 1: 1 - 1/sqrt(2) = 0.292893
        intra_list_diversity(recs, item_emb, 3) -> (1.333333 + 0.292893) / 2 = 0.813113
    """
    top = _topk(recs, k)
    return _mean(_ild_per_user(top, _unit_rows(item_emb)))


def coverage(recs, n_items: int, k: int) -> float:
    r"""Catalogue coverage: distinct items in all top-k lists divided by the catalogue size.

    .. math:: COV@k = |\bigcup_u top_k(u)| / n\_items

    Example::

        recs = [[0, 1], [1, 2], [3, -1]], n_items = 5
        coverage(recs, 5, 1) -> |{0, 1, 3}| / 5 = 0.6
        coverage(recs, 5, 2) -> |{0, 1, 2, 3}| / 5 = 0.8
    """
    top = _topk(recs, k)
    return float(_sorted_unique(top[top >= 0]).size) / float(n_items)


def gini(recs, n_items: int, k: int) -> float:
    r"""Gini index of item exposure in the top-k lists, over the whole catalogue.

    With exposure counts sorted ascending :math:`c_{(1)} \le \dots \le c_{(n)}`, n = n_items:

    .. math:: G@k = \frac{\sum_{j=1}^{n} (2j - n - 1)\, c_{(j)}}{n \sum_j c_{(j)}}

    0 = every item equally exposed; (n - 1)/n = all exposure on one item. ``nan`` when nothing
    is recommended.

    Example::

        recs = [[0, 1], [0, 2], [0, -1]], n_items = 4
        counts = [3, 1, 1, 0] -> sorted [0, 1, 1, 3], weights [-3, -1, 1, 3]
        gini(recs, 4, 2) -> (0 - 1 + 1 + 9) / (4 * 5) = 0.45
    """
    top = _topk(recs, k)
    counts = np.sort(np.bincount(top[top >= 0], minlength=n_items)).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return float("nan")
    n = counts.size
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    return float((weights * counts).sum() / (n * total))


# ---------------------------------------------------------------- serendipity


def serendipity(recs, truth, history, item_cluster, k: int) -> float:
    r"""Share of the top-k that is both relevant and unexpected (cluster new to the user).

    .. math:: SER@k = \frac{1}{|U_e|} \sum_{u \in U_e} \frac{1}{k}
        \sum_{i \in top_k(u)} [i \in T_u] \cdot [c(i) \notin c(H_u)]

    Example::

        item_cluster = [0, 0, 1, 1, 2, 2]
        history = [[0], [2]]               # clusters {0} and {1}
        truth = [[1, 2], [4, 0]]
        recs = [[1, 2, 4], [4, 5, 0]]
        user 0: item 1 relevant but familiar, item 2 relevant and new -> 1/3
        user 1: items 4 and 0 relevant and new -> 2/3
        serendipity(recs, truth, history, item_cluster, 3) -> (1/3 + 2/3) / 2 = 0.5
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    both = _in_lists(top, truth) & _unexpected(top, history, item_cluster)
    ev = _n_truth(truth, top.shape[0]) > 0
    return _mean(both[ev].sum(axis=1) / k)


def serendipity_rank(recs, truth, item_pop, k: int) -> float:
    r"""Rank-minus-popularity-rank serendipity, as RecTools ``Serendipity`` defines it.

    .. math::
        SER_{rank}@k(u) = \frac{1}{k} \sum_{r=1}^{k} rel_u(r) \cdot \max(p(r) - p_{pop}(i_r), 0)

    where, with n = n_items = ``len(item_pop)``,

    - :math:`p(r) = (n + 1 - r) / n`, the chance to recommend the item at rank r to this user;
    - :math:`p_{pop}(i) = (n + 1 - poprank(i)) / n`, the chance to recommend item i to anyone;
      :math:`poprank` is the dense rank of training popularity (1 = most popular, equal
      counts share a rank); items with popularity 0 get :math:`p_{pop} = 0`;
    - :math:`rel_u(r)` is 1 when the item at rank r is in :math:`T_u`.

    So a relevant hit earns :math:`\max(poprank(i) - r, 0) / n`: it counts when it sits higher
    in the user's list than in the popularity chart. Averaged over evaluated users; unlike
    RecTools, which averages over the items present, a short list is divided by k.

    Example::

        item_pop = [5, 3, 3, 1, 0] -> poprank [1, 2, 2, 3, cold], n = 5
        recs = [[0, 3, 4], [2, 1, -1]], truth = [[3, 4], [1]]
        user 0: rank 2 item 3: 0.8 - 0.6 = 0.2;  rank 3 item 4 (cold): 0.6 - 0 = 0.6
                -> 0.8 / 3 = 0.266667
        user 1: rank 2 item 1: max(0.8 - 0.8, 0) = 0 -> 0
        serendipity_rank(recs, truth, item_pop, 3) -> 0.133333
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    rel = _in_lists(top, truth)
    ev = _n_truth(truth, top.shape[0]) > 0
    per_user = _serendipity_rank(rel, top, np.asarray(item_pop), k)
    return _mean(per_user[ev])


def novel_truth(truth, history, item_cluster) -> list[np.ndarray]:
    """Per user, the relevant items whose cluster is absent from the user's history."""
    n_rows = len(truth)
    item_cluster = np.asarray(item_cluster, dtype=np.int64)
    t_rows, t_items = _flatten(truth, n_rows)
    h_rows, h_items = _flatten(history, n_rows)
    seen = _pair_isin(t_rows, item_cluster[t_items], h_rows, item_cluster[h_items])
    keep_rows, keep_items = t_rows[~seen], t_items[~seen]
    if n_rows == 0:
        return []
    bounds = np.searchsorted(keep_rows, np.arange(1, n_rows))
    return np.split(keep_items, bounds)


def novel_hit_rate(recs, truth, history, item_cluster, k: int) -> float:
    r"""Hit rate on novel items: truth restricted to items whose cluster is new to the user.

    .. math:: NHR@k = \frac{1}{|U_n|} \sum_{u \in U_n} [\,|top_k(u) \cap N_u| > 0\,],
        \quad N_u = \{i \in T_u : c(i) \notin c(H_u)\}

    Only users with non-empty :math:`N_u` are evaluated (``n_evaluated(novel_truth(...))``).

    Example::

        item_cluster = [0, 0, 1, 1, 2, 2]
        history = [[0], [2], [0]]          # clusters {0}, {1}, {0}
        truth = [[1, 2], [4, 0], [1]]      # novel truth: [2], [4, 0], [] (third user skipped)
        recs = [[1, 2, 4], [4, 5, 0], [1, 0, 2]]
        novel_hit_rate(..., k=1) -> (0 + 1) / 2 = 0.5
        novel_hit_rate(..., k=2) -> (1 + 1) / 2 = 1.0
    """
    return hit_rate(recs, novel_truth(truth, history, item_cluster), k)


# ---------------------------------------------------------------- online proxy


def _to_seconds(values) -> np.ndarray:
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[s]").astype(np.int64).astype(np.float64)
    return arr.astype(np.float64)


def new_interest_rate(
    user_ids, item_ids, timestamps, history, item_cluster, start, days: float = 7.0
) -> float:
    r"""Share of active users who engage with a cluster new to them within ``days`` of ``start``.

    The window is :math:`[start, start + days)`. Active users have at least one interaction in
    the window; a user counts as exploring when one of those interactions is with an item whose
    cluster is absent from the user's training history. Timestamps are Unix seconds or
    ``datetime64``; ``user_ids`` index into ``history``.

    .. math:: NIR = \frac{|\{u : \exists (u, i, t),\ t \in W,\ c(i) \notin c(H_u)\}|}
        {|\{u : \exists (u, i, t),\ t \in W\}|}

    Example::

        item_cluster = [0, 0, 1, 1, 2]
        history = [[0], [2], [4]]          # clusters {0}, {1}, {2}
        user_ids = [0, 0, 1, 2, 2], item_ids = [1, 2, 3, 4, 0]
        timestamps = [1, 3, 2, 1, 9] days (in seconds), start = 0, days = 7
        user 0: item 2 (new cluster 1) on day 3 -> explores
        user 1: only a familiar cluster; user 2: new cluster 0 only on day 9 (outside)
        new_interest_rate(...) -> 1 / 3 = 0.333333
    """
    users = np.asarray(user_ids, dtype=np.int64).ravel()
    items = np.asarray(item_ids, dtype=np.int64).ravel()
    t = _to_seconds(timestamps).ravel()
    if not (users.size == items.size == t.size):
        raise ValueError("user_ids, item_ids and timestamps must have the same length")
    t0 = float(_to_seconds(start))
    inside = (t >= t0) & (t < t0 + days * 86400.0)
    users, items = users[inside], items[inside]
    item_cluster = np.asarray(item_cluster, dtype=np.int64)
    h_rows, h_items = _flatten(history, len(history))
    seen = _pair_isin(users, item_cluster[items], h_rows, item_cluster[h_items])
    active = _sorted_unique(users)
    if active.size == 0:
        return float("nan")
    return _sorted_unique(users[~seen]).size / active.size


# ---------------------------------------------------------------- uncertainty


def per_user(recs, truth, history, item_cluster, k: int) -> dict[str, np.ndarray]:
    """Per-user values behind the headline metrics, one row per evaluated user (non-empty
    truth): ``hit`` (1.0 or 0.0), ``novel_hit`` (1.0 or 0.0; NaN for a user without novel
    relevant items) and ``serendipity``. Their means (NaN rows dropped) are ``hit_rate``,
    ``novel_hit_rate`` and ``serendipity`` at k.

    Example (the ``serendipity`` example's data)::

        hit         -> [1.0, 1.0]
        novel_hit   -> [1.0, 1.0]
        serendipity -> [1/3, 2/3]
    """
    top = _topk(recs, k)
    _check_rows(top, truth)
    ev = np.nonzero(_n_truth(truth, top.shape[0]) > 0)[0]
    top = top[ev]
    truth = [truth[u] for u in ev]
    history = [history[u] for u in ev]
    new_truth = novel_truth(truth, history, item_cluster)
    hit = _in_lists(top, new_truth).any(axis=1).astype(np.float64)
    hit[_n_truth(new_truth, len(ev)) == 0] = np.nan
    rel = _in_lists(top, truth)
    both = rel & _unexpected(top, history, item_cluster)
    return {
        "hit": rel.any(axis=1).astype(np.float64),
        "novel_hit": hit,
        "serendipity": both.sum(axis=1) / k,
    }


def ratio_interval(
    a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) / mean(b) and its paired percentile-bootstrap interval over users.

    ``a`` and ``b`` are two systems' per-user values on the same users; a user whose value is
    NaN in either is dropped from both. Each resample draws users with replacement and takes
    the ratio of the two means (``inf`` when only b's mean is 0; resamples where both are 0
    are dropped).

    Example::

        a = [1, 1, 0, 0], b = [1, 0, 0, 0]  -> ratio 0.5 / 0.25 = 2.0
        a = b                               -> (1.0, 1.0, 1.0)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if not a.size:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    num, den = a[idx].mean(axis=1), b[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num / den  # x/0 -> inf, 0/0 -> NaN (dropped)
        point = float(np.float64(a.mean()) / np.float64(b.mean()))
    if np.isnan(ratios).all():
        return point, float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(ratios, [tail, 1.0 - tail], method="inverted_cdf")
    return float(point), float(lo), float(hi)


# ---------------------------------------------------------------- all at once


def compute_all(
    recs,
    truth,
    history,
    item_cluster,
    item_pop,
    n_users: int,
    n_items: int,
    item_emb=None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float | int]:
    """Every metric at every k, as a flat dict such as ``{"hr@10": ..., "users": 943}``.

    All metrics, including coverage and Gini, are computed on the evaluated users only (rows
    with non-empty truth), so every number describes the same population. ``users`` is their
    count and ``novel_users`` the count with at least one novel relevant item. With
    ``item_emb=None`` the embedding metrics (``hist_dist``, ``ild``) are left out. A metric with
    no user to average over (for example ``ild@1``) is ``nan``.
    """
    recs = np.asarray(recs)
    if len(truth) != recs.shape[0] or len(history) != recs.shape[0]:
        raise ValueError("recs, truth and history must have one row per user")
    n_rel = _n_truth(truth, recs.shape[0])
    ev = np.nonzero(n_rel > 0)[0]
    truth = [truth[u] for u in ev]
    history = [history[u] for u in ev]
    n_rel = n_rel[ev]
    k_max = max(ks)
    top_all = _topk(recs[ev], k_max)
    rel_all = _in_lists(top_all, truth)
    unexp_all = _unexpected(top_all, history, item_cluster)
    new_truth = novel_truth(truth, history, item_cluster)
    n_new = _n_truth(new_truth, len(ev))
    rel_new_all = _in_lists(top_all, new_truth)
    pop = np.asarray(item_pop)
    info_all = -np.log2(np.maximum(pop[np.maximum(top_all, 0)], 1.0) / float(n_users))
    unit = None if item_emb is None else _unit_rows(item_emb)
    if unit is not None:
        centre, has = _history_centres(history, unit, len(ev))

    out: dict[str, float | int] = {}
    for k in ks:
        top, rel, unexp = top_all[:, :k], rel_all[:, :k], unexp_all[:, :k]
        valid = top >= 0
        out[f"hr@{k}"] = _hr(rel, n_rel)
        out[f"ndcg@{k}"] = _ndcg(rel, n_rel, k)
        out[f"precision@{k}"] = _precision(rel, n_rel, k)
        out[f"recall@{k}"] = _recall(rel, n_rel)
        out[f"novel_hr@{k}"] = _hr(rel_new_all[:, :k], n_new)
        out[f"self_info@{k}"] = _mean(_row_mean(info_all[:, :k], valid))
        out[f"unexpectedness@{k}"] = _mean(_row_mean(unexp, valid))
        if unit is not None:
            out[f"hist_dist@{k}"] = _mean(_hist_dist_per_user(top, centre, has, unit))
            out[f"ild@{k}"] = _mean(_ild_per_user(top, unit))
        out[f"coverage@{k}"] = float(_sorted_unique(top[valid]).size) / float(n_items)
        out[f"gini@{k}"] = gini(top, n_items, k)
        out[f"serendipity@{k}"] = _mean((rel & unexp).sum(axis=1) / k)
        out[f"serendipity_rank@{k}"] = _mean(_serendipity_rank(rel, top, pop, k))
    out["users"] = len(ev)
    out["novel_users"] = int((n_new > 0).sum())
    return out
