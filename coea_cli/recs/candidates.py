"""Novel-cluster candidates per user, from the same kind of context the LLMs were trained on.

Each user's Novelty prompt is built from the user's own history (group persona, recent and
familiar clusters, as in PCO training); identical prompts are scored once. The Novelty LLM's
exact constrained distribution over clusters, with every cluster the user knows removed, gives
n draws (temperature, seeded by the user's id, so any sharding of users gives the same draws);
the Relevance LLM judges each distinct draw (identical judge prompts are scored once). The
draws may be followed by a reserve: every other allowed cluster, unjudged, in the Novelty LLM's
order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from coea_cli.llm.context import Context, Prompter, World
from coea_cli.workspace import Cluster


@dataclass
class Candidate:
    cluster: int  # the cluster's index (World.index of its codes)
    relevance: float  # P(Yes) from the Relevance LLM; NaN when not judged
    novelty: float  # probability under the Novelty LLM's constrained distribution
    reserve: bool = False  # not drawn: a reserve cluster in the Novelty LLM's order


def user_seed(user: int, seed: int) -> int:
    """The sampling seed of one user: a hash of (seed, user), stable across processes."""
    digest = hashlib.sha256(f"{seed}:{int(user)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def user_candidates(
    world: World,
    contexts: dict[int, Context],
    familiar: dict[int, set[Cluster]],
    novelty,
    relevance,
    prompter: Prompter,
    *,
    n: int,
    temperature: float,
    seed: int,
    judge: bool = True,
    reserve: bool = True,
    batch_size: int = 32,
) -> dict[int, list[Candidate]]:
    """Candidates per user: the draws, best Relevance score first (or, with `judge` off, most
    probable first and unjudged), then with `reserve` every other allowed cluster by Novelty
    probability. `novelty` and `relevance` are (model, tokenizer) pairs."""
    from coea_cli.llm.decoding import cluster_logprobs

    users = list(contexts)
    clusters = world.clusters()
    col = {c: j for j, c in enumerate(clusters)}
    prompt = {u: prompter.novelty(contexts[u]) for u in users}
    unique = list(dict.fromkeys(prompt.values()))
    lp = cluster_logprobs(
        *novelty,
        unique,
        clusters,
        batch_size=batch_size,
        label="Novelty LLM: cluster probabilities",
    ).numpy()
    row = {p: r for r, p in enumerate(unique)}
    drawn: dict[int, list[Cluster]] = {}
    probs: dict[int, np.ndarray] = {}
    for u in users:
        logits = lp[row[prompt[u]]] / temperature
        for c in familiar[u]:
            if c in col:
                logits[col[c]] = -np.inf
        p = np.zeros(len(clusters))
        if np.isfinite(logits).any():
            p = np.exp(logits - np.max(logits))
            p /= p.sum()
        probs[u] = p
        if p.sum() == 0:
            drawn[u] = []
            continue
        picks = np.random.default_rng(user_seed(u, seed)).choice(len(clusters), size=n, p=p)
        drawn[u] = [clusters[j] for j in dict.fromkeys(picks.tolist())]
    judged = _judge(drawn, contexts, relevance, prompter, batch_size) if judge else {}
    out: dict[int, list[Candidate]] = {}
    for u in users:
        p = probs[u]
        cands = [
            Candidate(world.index(c), judged.get((u, c), float("nan")), float(p[col[c]]))
            for c in drawn[u]
        ]
        cands.sort(key=lambda x: (-x.relevance if judge else 0.0, -x.novelty))
        if reserve:
            order = [j for j in np.argsort(-p, kind="stable") if p[j] > 0]
            seen = set(drawn[u])
            cands += [
                Candidate(world.index(clusters[j]), float("nan"), float(p[j]), reserve=True)
                for j in order
                if clusters[j] not in seen
            ]
        out[u] = cands
    return out


def _judge(drawn, contexts, relevance, prompter, batch_size) -> dict[tuple[int, Cluster], float]:
    """P(Yes) for every (user, drawn cluster); identical prompts are scored once."""
    from coea_cli.llm.decoding import relevance_scores

    pairs = [(u, c) for u, row in drawn.items() for c in row]
    if not pairs:
        return {}
    prompts = [prompter.relevance(contexts[u], c) for u, c in pairs]
    unique = list(dict.fromkeys(prompts))
    scores = relevance_scores(
        *relevance, unique, batch_size=batch_size, label="Relevance LLM: judging the draws"
    ).numpy()
    of = dict(zip(unique, scores.tolist(), strict=True))
    return {pair: of[p] for pair, p in zip(pairs, prompts, strict=True)}
