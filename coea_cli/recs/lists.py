"""Per-user top-K lists: items inside the user's best novel clusters, ranked by DSIE.

For each user the key's candidates (the draws, judged or not, then the reserve) lose every
cluster the user already knows; the top m left give the exploration pool, whose unseen items
are ranked by the user's DSIE score. A share `1 - explore_ratio` of the K slots (and any slot
the pool cannot fill) goes to DSIE's own relevance ranking.

Each slot records where it came from (`source`): a cluster the Novelty LLM drew ("draw"), a
reserve cluster taken in the Novelty LLM's order ("reserve"), or DSIE's fill ("fill").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coea_cli.recs.candidates import Candidate
from coea_cli.workspace.recs import RECORD, SOURCES

__all__ = [
    "DRAW", "FILL", "RECORD", "RESERVE", "SOURCES", "Weights", "clusters_to_items", "user_list",
]  # fmt: skip

DRAW, RESERVE, FILL = range(3)  # indices of SOURCES


@dataclass(frozen=True)
class Weights:
    """One ranking of the explore slots from every signal: an unseen item i of a cluster c new
    to the user scores

        (1 - popularity) x z(DSIE's score of i) + popularity x z(log popularity of i)
        + novelty x log p_novelty(c) + relevance x logit P(Yes | c)

    (z: standardised over the items; an unjudged cluster's logit counts 0). With novelty =
    relevance = 0 this is the rule with no LLM over every unexplored cluster. Chosen on a
    validation period by `recommend` (recs.tune)."""

    novelty: float
    relevance: float
    popularity: float = 0.0

    def cluster_score(self, c: Candidate) -> float:
        """The cluster's bonus; a signal with weight 0 or no value (NaN) adds nothing."""
        out = 0.0
        if self.relevance and np.isfinite(c.relevance):
            r = min(max(c.relevance, 1e-6), 1 - 1e-6)
            out += self.relevance * float(np.log(r / (1 - r)))
        if self.novelty and np.isfinite(c.novelty):
            out += self.novelty * float(np.log(max(c.novelty, 1e-12)))
        return out


def user_list(
    scores: np.ndarray,
    seen: np.ndarray,
    familiar: set[int],
    candidates: list[Candidate],
    items_of_cluster: dict[int, np.ndarray],
    item_cluster: np.ndarray,
    *,
    k: int,
    top_m: int,
    explore_ratio: float,
    weights: Weights | None = None,
) -> np.ndarray:
    """One user's list as a RECORD array (at most k rows). `scores`: [N] item scores.

    Without `weights`: the first `top_m` unfamiliar candidates give the explore pool, ranked by
    `scores`. With `weights` (and `scores` already mixed as `Weights` says): the items of every
    unfamiliar candidate, draws and reserve, are ranked together by score + cluster score."""
    s = scores.astype(np.float64).copy()
    s[seen] = -np.inf
    open_ = [c for c in candidates if c.cluster not in familiar]
    n_explore = round(k * explore_ratio)
    chosen: list[tuple[int, int]] = []
    if weights is not None and n_explore > 0:
        bonus = {c.cluster: weights.cluster_score(c) for c in open_}
        source = {c.cluster: RESERVE if c.reserve else DRAW for c in open_}
        top = _ranked(s, bonus, items_of_cluster, item_cluster, n_explore)
        chosen += [(int(i), source[int(item_cluster[i])]) for i in top]
        s[top] = -np.inf
        open_ = []
    picked = open_[:top_m]
    source = {c.cluster: RESERVE if c.reserve else DRAW for c in picked}
    n_explore -= len(chosen)
    if picked and n_explore > 0:
        top = _ranked(s, dict.fromkeys(source, 0.0), items_of_cluster, item_cluster, n_explore)
        chosen += [(int(i), source[int(item_cluster[i])]) for i in top]
        s[top] = -np.inf
    rest = k - len(chosen)
    if rest > 0:
        finite = np.flatnonzero(np.isfinite(s))
        top = finite[np.argsort(-s[finite], kind="stable")[:rest]]
        chosen += [(int(i), FILL) for i in top]
    out = np.zeros(len(chosen), dtype=RECORD)
    for r, (i, src) in enumerate(chosen):
        out[r] = (i, scores[i], item_cluster[i], src)
    return out


def _ranked(s, bonus: dict[int, float], items_of_cluster, item_cluster, n: int) -> np.ndarray:
    """The n best unseen items of the clusters in `bonus`, by score + their cluster's bonus."""
    if not bonus:
        return np.zeros(0, dtype=np.int64)
    pool = np.concatenate([items_of_cluster.get(c, np.zeros(0, np.int64)) for c in bonus])
    pool = pool[np.isfinite(s[pool])]
    value = s[pool] + np.array([bonus[int(c)] for c in item_cluster[pool]], dtype=np.float64)
    return pool[np.argsort(-value, kind="stable")[:n]]


def clusters_to_items(item_cluster: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(item_cluster, kind="stable")
    sorted_c = item_cluster[order]
    cuts = np.flatnonzero(np.diff(sorted_c)) + 1
    return {
        int(part_c[0]): part_i
        for part_c, part_i in zip(np.split(sorted_c, cuts), np.split(order, cuts), strict=True)
        if len(part_c)
    }
