"""Novel-cluster candidates per serving key, computed once per unique key.

A serving key is (group, last few clusters). The Novelty LLM's exact constrained distribution
over clusters is computed for the key's prompt, n clusters are sampled from it (temperature,
seeded by the key itself, so any sharding of users gives the same draws), and the Relevance LLM
scores each distinct draw: best-of-n. The key does not know each user's familiar clusters, so
the judged draws are followed by a reserve: every other allowed cluster, unjudged, in the Novelty
LLM's order. A user who already knows some of the draws then still gets m novel clusters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from coea_cli.llm.context import Context, Prompter, World
from coea_cli.workspace import Cluster

Key = tuple[int, tuple[int, ...]]


@dataclass
class Candidate:
    cluster: Cluster
    relevance: float  # P(Yes) from the Relevance LLM; NaN when not judged
    novelty: float  # probability under the Novelty LLM's constrained distribution
    reserve: bool = False  # not drawn: a reserve cluster in the Novelty LLM's order


def key_of(group: int, recent: list[int], key_recent: int) -> Key:
    kept = recent[max(0, len(recent) - key_recent) :] if key_recent > 0 else []
    return (int(group), tuple(int(c) for c in kept))


def key_context(world: World, key: Key, use_dsie: bool) -> Context:
    group, recent = key
    persona = world.persona.get(group, "") if use_dsie else ""
    clusters = [(c,) for c in recent]
    return Context(user=-1, persona=persona, recent=clusters, familiar=clusters)


def key_seed(key: Key, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def key_candidates(
    world: World,
    keys: list[Key],
    novelty,
    relevance,
    prompter: Prompter,
    *,
    n: int,
    temperature: float,
    seed: int,
    use_dsie: bool = True,
    judge: bool = True,
    reserve: bool = True,
    batch_size: int = 32,
) -> dict[Key, list[Candidate]]:
    """Candidates per key: the draws, best Relevance score first (or, with `judge` off, most
    probable first and unjudged), then with `reserve` every other allowed cluster by Novelty
    probability. `novelty` and `relevance` are (model, tokenizer) pairs."""
    from coea_cli.llm.decoding import cluster_logprobs, relevance_scores

    clusters = world.clusters()
    contexts = [key_context(world, k, use_dsie) for k in keys]
    prompts = [prompter.novelty(c) for c in contexts]
    lp = cluster_logprobs(*novelty, prompts, clusters, batch_size=batch_size).numpy()
    col = {c: j for j, c in enumerate(clusters)}
    drawn: list[list[Cluster]] = []
    probs: list[np.ndarray] = []
    for r, key in enumerate(keys):
        logits = lp[r] / temperature
        for c in key[1]:
            logits[col[(c,)]] = -np.inf
        p = (
            np.exp(logits - np.max(logits))
            if np.isfinite(logits).any()
            else np.zeros(len(clusters))
        )
        if p.sum() == 0:
            drawn.append([])
            probs.append(p)
            continue
        p /= p.sum()
        rng = np.random.default_rng(key_seed(key, seed))
        picks = rng.choice(len(clusters), size=n, p=p)
        drawn.append([clusters[j] for j in dict.fromkeys(picks.tolist())])
        probs.append(p)
    flat = [(r, c) for r, row in enumerate(drawn) for c in row]
    if judge and flat:
        prompts = [prompter.relevance(contexts[r], c) for r, c in flat]
        rel = relevance_scores(*relevance, prompts, batch_size=batch_size).numpy()
    else:
        rel = np.full(len(flat), np.nan)
    out: dict[Key, list[Candidate]] = {k: [] for k in keys}
    for (r, c), s in zip(flat, rel, strict=True):
        out[keys[r]].append(Candidate(c, float(s), float(probs[r][col[c]])))
    for r, k in enumerate(keys):
        out[k].sort(key=lambda x: (-x.relevance if judge else 0.0, -x.novelty))
        if not reserve:
            continue
        seen = set(drawn[r])
        order = [j for j in np.argsort(-probs[r], kind="stable") if probs[r][j] > 0]
        out[k] += [
            Candidate(clusters[j], float("nan"), float(probs[r][j]), reserve=True)
            for j in order
            if clusters[j] not in seen
        ]
    return out
