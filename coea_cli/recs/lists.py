"""Per-user top-K lists: items inside the user's best novel clusters, ranked by DSIE.

For each user the key's candidates (the draws, judged or not, then the reserve) lose every
cluster the user already knows; the top m left give the exploration pool, whose unseen items
are ranked by the user's DSIE score. A share `1 - explore_ratio` of the K slots (and any slot
the pool cannot fill) goes to DSIE's own relevance ranking.

Each slot records where it came from (`source`): a cluster the Novelty LLM drew ("draw"), a
reserve cluster taken in the Novelty LLM's order ("reserve"), or DSIE's fill ("fill").
"""

from __future__ import annotations

import numpy as np

from coea_cli.recs.candidates import Candidate

SOURCES = ("draw", "reserve", "fill")
DRAW, RESERVE, FILL = range(3)
RECORD = np.dtype([("item", "<i4"), ("score", "<f4"), ("cluster", "<i4"), ("source", "u1")])


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
) -> np.ndarray:
    """One user's list as a RECORD array (at most k rows). `scores`: [N] item scores."""
    s = scores.astype(np.float64).copy()
    s[seen] = -np.inf
    picked = [c for c in candidates if c.cluster[0] not in familiar][:top_m]
    source = {c.cluster[0]: RESERVE if c.reserve else DRAW for c in picked}
    n_explore = round(k * explore_ratio)
    chosen: list[tuple[int, int]] = []
    if picked and n_explore > 0:
        pool = np.concatenate([items_of_cluster.get(c, np.zeros(0, np.int64)) for c in source])
        pool = pool[np.isfinite(s[pool])]
        top = pool[np.argsort(-s[pool], kind="stable")[:n_explore]]
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


def clusters_to_items(item_cluster: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(item_cluster, kind="stable")
    sorted_c = item_cluster[order]
    cuts = np.flatnonzero(np.diff(sorted_c)) + 1
    return {
        int(part_c[0]): part_i
        for part_c, part_i in zip(np.split(sorted_c, cuts), np.split(order, cuts), strict=True)
        if len(part_c)
    }
