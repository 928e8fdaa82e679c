"""Recommendation lists for a set of users as of a period start, for one system variant."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coea_cli import console
from coea_cli.pco.context import World, context_of
from coea_cli.pco.models import LLMOptions, load_model, sid_token_list
from coea_cli.pco.scoring import Prompter
from coea_cli.recs.candidates import key_candidates, key_of
from coea_cli.recs.lists import ListOptions, clusters_to_items, user_list


@dataclass
class Variant:
    """Which adapters generate and judge clusters, and how items inside clusters are ranked."""

    name: str
    novelty: Path
    relevance: Path
    use_dsie: bool = True  # persona + long-term context in prompts, DSIE item ranking


@dataclass
class EngineOptions:
    n: int = 10
    temperature: float = 1.0
    key_recent: int = 3
    seed: int = 0
    lists: ListOptions = field(default_factory=ListOptions)


class Engine:
    """Holds the workspace tables, DSIE and per-user item scores at one cutoff."""

    def __init__(self, work: Path, before_period: int, llm: LLMOptions, world: World | None = None):
        from coea_cli.dsie.keys import encode_users
        from coea_cli.dsie.keys import load_model as load_dsie

        self.work = Path(work)
        self.world = world or _load_world(work)
        self.before = before_period
        self.llm = llm
        self.backbone = (
            self.work / "llm" / "backbone" if llm.base_model == "scratch" else Path(llm.base_model)
        )
        self.tokens = sid_token_list(work)
        self.prompter = Prompter(self.world)
        self.history = self.world.sequences(before_period)
        self.dsie = load_dsie(self.work, device="cpu")
        self.states = encode_users(self.dsie, self.work, before_period)["fused"]
        self.items_of = clusters_to_items(self.world.item_cluster)
        counts = np.bincount(
            self.world.items[self.world.periods < before_period], minlength=self.world.n_items
        )
        self.popularity = np.log1p(counts).astype(np.float32)

    def seen(self, user: int) -> np.ndarray:
        return self.history.get(int(user), np.zeros(0, dtype=np.int64))

    def dsie_scores(self, users: np.ndarray) -> np.ndarray:
        from coea_cli.dsie.model import scores

        return scores(self.dsie, self.states[users])

    def recommend(self, users: np.ndarray, variant: Variant, opt: EngineOptions) -> dict:
        """{"lists": {user: RECORD array}, "keys": unique keys, "seconds": per stage}."""
        t0 = time.time()
        w = self.world
        ctx = {int(u): context_of(w, u, self.seen(u), use_dsie=True) for u in users}
        keys = {
            u: key_of(w.group_of.get(u, -1), [c[0] for c in c_.recent], opt.key_recent)
            for u, c_ in ctx.items()
        }
        unique = sorted(set(keys.values()))
        t1 = time.time()
        novelty = load_model(self.backbone, self.llm, variant.novelty, False, self.tokens)
        relevance = load_model(self.backbone, self.llm, variant.relevance, False, self.tokens)
        console.log(
            f"{variant.name}: {len(users)} users share {len(unique)} serving keys; "
            f"sampling {opt.n} clusters per key"
        )
        cands = key_candidates(
            w, unique, novelty, relevance, self.prompter, n=opt.n,
            temperature=opt.temperature, seed=opt.seed, use_dsie=variant.use_dsie,
        )  # fmt: skip
        t2 = time.time()
        lists = {}
        for start in range(0, len(users), 1024):
            chunk = np.asarray(users[start : start + 1024], dtype=np.int64)
            if variant.use_dsie:
                block = self.dsie_scores(chunk)
            else:
                block = np.broadcast_to(self.popularity, (len(chunk), w.n_items))
            for row, u in zip(block, chunk, strict=True):
                fam = {c[0] for c in ctx[int(u)].familiar}
                lists[int(u)] = user_list(
                    row, self.seen(u), fam, cands[keys[int(u)]], self.items_of,
                    w.item_cluster, opt.lists,
                )  # fmt: skip
        t3 = time.time()
        return {
            "lists": lists,
            "keys": len(unique),
            "seconds": {"keys": t1 - t0, "llm": t2 - t1, "lists": t3 - t2},
        }


def _load_world(work: Path) -> World:
    from coea_cli.pco.context import load_world

    return load_world(work)
