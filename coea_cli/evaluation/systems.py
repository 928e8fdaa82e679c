"""Baselines evaluated beside CoEA, each producing a [U, K] list of items (or, for those
built like CoEA's lists, {user: RECORD list}).

The "unexplored clusters" baselines build their lists exactly as CoEA does (`rank_inside`:
the first m clusters new to the user, items ranked by DSIE or popularity inside, that
ranking's fill after), so they differ from CoEA only in how the clusters are chosen.
"""

from __future__ import annotations

import numpy as np

from coea_cli.llm.context import cluster_popularity
from coea_cli.recs.candidates import Candidate
from coea_cli.recs.engine import Engine
from coea_cli.recs.lists import Weights


def _mask_seen(scores: np.ndarray, engine: Engine, users: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64, copy=True)
    for r, u in enumerate(users):
        s[r, engine.seen(u)] = -np.inf
    return s


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = idx.astype(np.int64)
    out[~np.isfinite(np.take_along_axis(scores, idx, axis=1))] = -1
    return out


def popularity(engine: Engine, users: np.ndarray, k: int) -> np.ndarray:
    """Most interacted items before the cutoff, seen ones removed."""
    s = np.broadcast_to(engine.popularity, (len(users), engine.world.n_items))
    return _top(_mask_seen(s, engine, users), k)


def random_novel(engine: Engine, users: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Random unseen items from clusters absent from the user's history."""
    rng = np.random.default_rng(seed)
    w = engine.world
    out = np.full((len(users), k), -1, dtype=np.int64)
    for r, u in enumerate(users):
        seen = engine.seen(u)
        familiar = np.unique(w.item_cluster[seen]) if len(seen) else np.zeros(0, np.int64)
        pool = np.flatnonzero(~np.isin(w.item_cluster, familiar))
        pool = np.setdiff1d(pool, seen)
        pick = rng.permutation(pool)[:k]
        out[r, : len(pick)] = pick
    return out


def dsie_top(engine: Engine, users: np.ndarray, k: int) -> np.ndarray:
    """DSIE's relevance-only ranking."""
    return _top(_mask_seen(engine.dsie_scores(users), engine, users), k)


def dsie_mmr(
    engine: Engine,
    users: np.ndarray,
    k: int,
    item_emb: np.ndarray,
    lam: float = 0.5,
    pool: int = 100,
) -> np.ndarray:
    """DSIE re-ranked by maximal marginal relevance: at each step pick the candidate with the
    highest lam * relevance - (1 - lam) * max cosine similarity to the items already picked
    (relevance min-max scaled over the candidate pool of DSIE's top `pool`)."""
    unit = item_emb / np.maximum(np.linalg.norm(item_emb, axis=1, keepdims=True), 1e-12)
    scores = _mask_seen(engine.dsie_scores(users), engine, users)
    cand = _top(scores, pool)
    out = np.full((len(users), k), -1, dtype=np.int64)
    for r in range(len(users)):
        c = cand[r][cand[r] >= 0]
        if not len(c):
            continue
        rel = scores[r, c]
        rel = (rel - rel.min()) / max(rel.max() - rel.min(), 1e-12)
        sim = unit[c] @ unit[c].T
        chosen: list[int] = []
        best_sim = np.full(len(c), -np.inf)
        free = np.ones(len(c), dtype=bool)
        for _ in range(min(k, len(c))):
            penalty = np.where(np.isfinite(best_sim), best_sim, 0.0)
            value = np.where(free, lam * rel - (1 - lam) * penalty, -np.inf)
            j = int(np.argmax(value))
            chosen.append(j)
            free[j] = False
            best_sim = np.maximum(best_sim, sim[j])
        out[r, : len(chosen)] = c[chosen]
    return out


def from_lists(lists: dict, users: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(users), k), -1, dtype=np.int64)
    for r, u in enumerate(users):
        items = lists[int(u)]["item"][:k]
        out[r, : len(items)] = items
    return out


def _as_candidates(clusters) -> list[Candidate]:
    return [Candidate(int(c), float("nan"), float("nan")) for c in clusters]


def _unexplored(engine: Engine, user: int) -> np.ndarray:
    """Clusters holding items that are absent from the user's history, ascending."""
    present = np.array(sorted(engine.items_of))
    return np.setdiff1d(present, engine.familiar(user))


def all_unexplored(engine: Engine, user: int) -> list[Candidate]:
    """Every cluster new to the user, as unjudged candidates."""
    return _as_candidates(_unexplored(engine, user))


def unexplored(engine: Engine, users: np.ndarray, k: int, inside: str = "dsie") -> dict:
    """The top K by DSIE (or popularity) over every cluster new to the user (no LLM, no
    cluster choice)."""
    n = len(engine.items_of)
    return engine.rank_inside(users, lambda u: all_unexplored(engine, u), k, n, 1.0, inside)


def mixed_unexplored(engine: Engine, users: np.ndarray, k: int, popularity: float) -> dict:
    """The top K over every cluster new to the user by DSIE's and popularity's standardised
    scores mixed, popularity's share `popularity` (the ranking of `Weights` without the
    LLMs)."""
    n, w = len(engine.items_of), Weights(0.0, 0.0, popularity)
    return engine.rank_inside(users, lambda u: all_unexplored(engine, u), k, n, 1.0, weights=w)


def popular_unexplored(
    engine: Engine, users: np.ndarray, k: int, top_m: int, explore_ratio: float
) -> dict:
    """The m unexplored clusters most users engaged before the cutoff, DSIE inside."""
    pop = cluster_popularity(engine.world, engine.before)

    def order(u):
        c = _unexplored(engine, u)
        return _as_candidates(c[np.argsort(-pop[c], kind="stable")])

    return engine.rank_inside(users, order, k, top_m, explore_ratio)


def random_unexplored(
    engine: Engine, users: np.ndarray, k: int, top_m: int, explore_ratio: float, seed: int
) -> dict:
    """m unexplored clusters drawn at random (seeded), DSIE inside."""
    rng = np.random.default_rng(seed)
    return engine.rank_inside(
        users, lambda u: _as_candidates(rng.permutation(_unexplored(engine, u))), k, top_m,
        explore_ratio,
    )  # fmt: skip


def slot_shares(lists: dict, users: np.ndarray, k: int) -> dict[str, float]:
    """Share of the top-k slots (over `users`) that came from each source."""
    from coea_cli.recs.lists import SOURCES

    src = np.concatenate([lists[int(u)]["source"][:k] for u in users] or [np.zeros(0, int)])
    total = max(1, len(src))
    return {f"share_{name}@{k}": float((src == j).sum() / total) for j, name in enumerate(SOURCES)}
