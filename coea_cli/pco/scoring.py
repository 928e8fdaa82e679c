"""Scoring helpers of the PCO rounds: exact top clusters, hit rates, best-of-n, AUC."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from coea_cli.workspace import Cluster


def top_clusters(
    model,
    tokenizer,
    prompts: list[str],
    banned: Sequence[set[Cluster]],
    clusters: list[Cluster],
    k: int,
) -> list[list[Cluster]]:
    """The k most probable clusters per prompt (exact, constrained), banned ones removed."""
    from coea_cli.llm.decoding import cluster_logprobs

    if not prompts:
        return []
    lp = cluster_logprobs(model, tokenizer, prompts, clusters).numpy()
    col = {c: j for j, c in enumerate(clusters)}
    for r, ban in enumerate(banned):
        for c in ban:
            if c in col:
                lp[r, col[c]] = -np.inf
    order = np.argsort(-lp, axis=1, kind="stable")
    out = []
    for r in range(len(prompts)):
        row = [clusters[j] for j in order[r] if np.isfinite(lp[r, j])]
        out.append(row[:k])
    return out


def sampled_top(samples: list[list[Cluster]], k: int) -> list[list[Cluster]]:
    """Distinct sampled clusters, most frequent first (ties: first drawn)."""
    return [[c for c, _ in Counter(row).most_common(k)] for row in samples]


def hit_rate(proposals: list[list[Cluster]], truth: list[set[Cluster]]) -> float:
    """Share of users (with a non-empty truth) for whom any proposal is in the truth."""
    pairs = [(p, t) for p, t in zip(proposals, truth, strict=True) if t]
    if not pairs:
        return float("nan")
    return float(np.mean([any(c in t for c in p) for p, t in pairs]))


def precision(proposals: list[list[Cluster]], truth: list[set[Cluster]], m: int) -> float:
    """Mean share of the m proposals that are in the truth (users with empty truth excluded)."""
    pairs = [(p, t) for p, t in zip(proposals, truth, strict=True) if t]
    if not pairs:
        return float("nan")
    return float(np.mean([sum(c in t for c in p[:m]) / m for p, t in pairs]))


def popularity_top(counts: Counter, banned: Sequence[set[Cluster]], k: int) -> list[list[Cluster]]:
    """Baseline: the k most frequent novel targets in training that each user has not seen."""
    ranked = [c for c, _ in counts.most_common()]
    return [[c for c in ranked if c not in ban][:k] for ban in banned]


def cluster_novelty(
    proposals: list[list[Cluster]], popularity: np.ndarray, n_users: int, index
) -> dict:
    """Novelty of proposed clusters: mean self-information -log2(users(c)/|U|) and coverage.
    `popularity` is indexed by cluster index, `index` maps a cluster to it (World.index)."""
    flat = [index(c) for p in proposals for c in p]
    if not flat:
        return {"self_info": float("nan"), "coverage": 0.0}
    pop = np.maximum(popularity[np.array(flat)], 1)
    return {
        "self_info": float(np.mean(-np.log2(pop / max(n_users, 1)))),
        "coverage": len(set(flat)) / max(1, int((popularity >= 0).sum())),
    }


def rerank(candidates: list[list[Cluster]], scores: np.ndarray, m: int) -> list[list[Cluster]]:
    """Best-of-n: each user's candidates ordered by Relevance score, top m kept.

    `scores` is flat, aligned with the candidates in row order.
    """
    out, pos = [], 0
    for row in candidates:
        s = scores[pos : pos + len(row)]
        pos += len(row)
        order = np.argsort(-s, kind="stable")
        out.append([row[j] for j in order[:m]])
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (probability a random positive outscores a random negative; ties count half)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
