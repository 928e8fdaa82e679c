"""Training and evaluation examples for the Novelty and Relevance LLMs.

Round 0 learns from period 0 alone: at cut points inside each user's sequence, the history
before the cut is the context and the first cluster after it that the user had never touched
is the novel target. Rounds k >= 1 take their truth from period k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coea_cli.llm.context import Context, World, banned, context_of
from coea_cli.workspace import Cluster, UserSequences


@dataclass
class Transition:
    context: Context
    banned: set[Cluster]
    target: Cluster  # the first novel cluster after the cut
    engaged: set[Cluster]  # every cluster engaged in the window after the cut
    user: int


def transitions(
    world: World,
    sequences: UserSequences,
    *,
    min_history: int = 5,
    window: int = 20,
    per_user: int = 4,
    cap_per_cluster: int = 60,
    context: str = "full",
    rng: np.random.Generator,
) -> list[Transition]:
    """Observed novel transitions, at most `per_user` per user and `cap_per_cluster` per
    target cluster (so popular clusters do not dominate)."""
    found: list[Transition] = []
    users = sequences.users().tolist()
    rng.shuffle(users)
    per_target: dict[Cluster, int] = {}
    for u in users:
        seq = sequences.of(u)
        clusters = world.item_cluster[seq]
        cuts = list(range(min_history, len(seq)))
        rng.shuffle(cuts)
        taken = 0
        for t in cuts:
            if taken >= per_user:
                break
            hist = seq[:t]
            seen = set(world.item_cluster[hist].tolist())
            ahead = clusters[t : t + window]
            target = next((world.code(c) for c in ahead if c not in seen), None)
            if target is None or per_target.get(target, 0) >= cap_per_cluster:
                continue
            per_target[target] = per_target.get(target, 0) + 1
            taken += 1
            found.append(
                Transition(
                    context=context_of(world, u, hist, context=context, period=1),
                    banned=banned(world, hist),
                    target=target,
                    engaged={world.code(c) for c in ahead},
                    user=int(u),
                )
            )
    return found


def relevance_labels(
    trans: list[Transition], clusters: list[Cluster], rng: np.random.Generator, negatives: int = 1
) -> list[tuple[Context, Cluster, int]]:
    """(context, cluster, label): the novel target is a positive; clusters neither seen nor
    engaged in the window are sampled as negatives."""
    out = []
    for tr in trans:
        out.append((tr.context, tr.target, 1))
        pool = [c for c in clusters if c not in tr.banned and c not in tr.engaged]
        for j in rng.permutation(len(pool))[:negatives]:
            out.append((tr.context, pool[int(j)], 0))
    return out


def split_users(users: list[int], share: float, seed: int) -> tuple[set[int], set[int]]:
    """Deterministic split into (train, held-out) users."""
    rng = np.random.default_rng(seed)
    users = sorted(users)
    held = (
        set(rng.permutation(users)[: max(1, round(share * len(users)))].tolist())
        if users
        else set()
    )
    return set(users) - held, held


@dataclass
class PeriodUser:
    """A user active in period k: context at the period start and what they engaged."""

    context: Context
    banned: set[Cluster]
    novel: set[Cluster]  # clusters engaged in period k that were new to the user
    engaged: set[Cluster]


def period_users(world: World, k: int, *, context: str = "full") -> list[PeriodUser]:
    """Users active in period k, ascending, with their context as of the period start."""
    before = world.history.before(k)
    during = world.history.during(k)
    out = []
    for u in during.users().tolist():
        items, hist = during.of(u), before.of(u)
        ban = banned(world, hist)
        engaged = {world.code(c) for c in np.unique(world.item_cluster[items])}
        out.append(
            PeriodUser(
                context=context_of(world, u, hist, context=context, period=k),
                banned=ban,
                novel=engaged - ban,
                engaged=engaged,
            )
        )
    return out
