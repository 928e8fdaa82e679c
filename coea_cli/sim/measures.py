"""What one simulated period did to the users, per system.

Per period p (users = the simulated users, K the list length):

- accepted per user: accepted items / users (the GTV analogue);
- precision@K: accepted items / (users x K), the oracle's precision;
- exploration: share of users who accepted at least one item of a cluster absent from their
  whole history before p (the analogue of 7D-NIEP);
- coverage: distinct accepted items / catalogue; Gini of the accepted items' counts;
- homogenization: mean Jaccard similarity of the accepted sets of users who accepted
  something (Chaney et al. 2018): higher means users are pushed to the same items.

Cumulative versions (up to p) keep the per-user state in `Tally`.

Example: 2 users, K = 2; user 0 accepts items 3 and 5 (5's cluster is new to user 0),
user 1 accepts item 3 (a familiar cluster) -> accepted per user 1.5, precision 0.75,
exploration 0.5, coverage 2 / N, homogenization J({3, 5}, {3}) = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coea_cli import metrics


@dataclass
class Tally:
    """Per-user running totals of one (system, seed) run."""

    n_users: int
    accepted: np.ndarray = field(init=False)  # [U] accepted items so far
    explored: np.ndarray = field(init=False)  # [U] accepted a new cluster at some period
    items: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.accepted = np.zeros(self.n_users)
        self.explored = np.zeros(self.n_users, dtype=bool)


def period_measures(
    lists: np.ndarray,
    accepted: np.ndarray,
    history_clusters: list[set[int]],
    item_cluster: np.ndarray,
    n_items: int,
    tally: Tally,
) -> dict[str, float]:
    """`lists` [U, K] items (-1 padding), `accepted` [U, K] bool; `history_clusters` the
    clusters of each user's history before the period. Updates `tally`."""
    n_users, k = lists.shape
    got = [lists[r][accepted[r]] for r in range(n_users)]
    per_user = np.array([len(g) for g in got], dtype=np.float64)
    explored = np.array(
        [any(int(item_cluster[i]) not in history_clusters[r] for i in g) for r, g in enumerate(got)]
    )
    tally.accepted += per_user
    tally.explored |= explored
    flat = np.concatenate(got) if got else np.zeros(0, np.int64)
    tally.items |= set(flat.tolist())
    return {
        "accepted_per_user": float(per_user.mean()),
        "precision": float(per_user.sum() / max(1, n_users * k)),
        "exploration": float(explored.mean()),
        "coverage": len(set(flat.tolist())) / n_items,
        "gini": _gini(flat, n_items),
        "homogenization": homogenization(got, n_items),
        "cum_accepted_per_user": float(tally.accepted.mean()),
        "cum_exploration": float(tally.explored.mean()),
        "cum_coverage": len(tally.items) / n_items,
    }


def _gini(items: np.ndarray, n_items: int) -> float:
    if not len(items):
        return float("nan")
    return metrics.gini(items[:, None], n_items, 1)


def homogenization(sets: list[np.ndarray], n_items: int) -> float:
    """Mean Jaccard similarity over pairs of non-empty sets (NaN with fewer than 2)."""
    import scipy.sparse as sp

    rows = [np.unique(s) for s in sets if len(s)]
    if len(rows) < 2:
        return float("nan")
    indptr = np.cumsum([0] + [len(r) for r in rows])
    x = sp.csr_matrix(
        (np.ones(indptr[-1]), np.concatenate(rows), indptr), shape=(len(rows), n_items)
    )
    inter = (x @ x.T).toarray()
    size = np.array([len(r) for r in rows], dtype=np.float64)
    union = size[:, None] + size[None, :] - inter
    iu = np.triu_indices(len(rows), 1)
    return float((inter[iu] / union[iu]).mean())
