"""Choosing the ranking weights on a validation period, never on the period being served.

Serving as of period T, the validation period is V = T - 1, scored with the models as they
stood before it: DSIE trained on periods < V (`dsie-before-V/`, from `train-dsie --cutoff V`)
and the track's adapters of the last round accepted before V. Every candidate setting (the
top-m rule, and each setting of the grid) ranks the same candidates; the one with the
highest serendipity@10 on V wins (ties: novel HR@10, then HR@10). The best setting without
the LLMs (novelty = relevance = 0: every unexplored cluster, DSIE and popularity mixed) is
reported too: it is the rule CoEA is measured against.
"""

from __future__ import annotations

import itertools

import numpy as np

from coea_cli import console, metrics
from coea_cli.options import ServeOptions
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.recs.lists import Weights
from coea_cli.workspace import Track, Workspace

MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)  # share of popularity in the item score
GRID = tuple(
    Weights(n, r, p) for n, r, p in itertools.product((0.0, 0.5, 1.0, 2.0), (0.0, 1.0, 2.0), MIXES)
)


def named(name: str | None) -> Weights | None:
    """A setting by its name in the report: `top-m` (None) or
    `W_NOVELTY,W_RELEVANCE[,W_POPULARITY]`."""
    if name in (None, "top-m"):
        return None
    return Weights(*(float(x) for x in name.split(",")))


def choose(
    ws: Workspace, track: Track, before: int, opt: ServeOptions, device: str, seed: int,
    k: int = 10,
) -> tuple[Weights | None, dict]:  # fmt: skip
    """The best setting on period before - 1 and the table of every candidate's scores."""
    period = before - 1
    if period < 1:
        return None, {"period": None, "note": "no validation period: the top-m rule"}
    engine = Engine(ws, period, device)
    variant = track_variant(ws, track, device, seed, before=period)
    during = engine.world.history.during(period)
    users = np.array([u for u in during.users().tolist() if len(engine.seen(u))], np.int64)
    truth = [np.unique(during.of(int(u))) for u in users]
    history = [engine.seen(u) for u in users]
    cands = engine.candidates(users, variant, opt, seed)
    rows = {}
    for w in (None, *GRID):
        lists = engine.rank_inside(
            users, lambda u: cands[u], k, opt.top_m, opt.explore_ratio, variant.inside, w
        )
        recs = np.full((len(users), k), -1, dtype=np.int64)
        for r, u in enumerate(users):
            items = lists[int(u)]["item"][:k]
            recs[r, : len(items)] = items
        pu = metrics.per_user(recs, truth, history, engine.world.item_cluster, k)
        novel = pu["novel_hit"][np.isfinite(pu["novel_hit"])]
        rows[name_of(w)] = {
            "serendipity@10": float(np.mean(pu["serendipity"])) if len(users) else 0.0,
            "novel_hr@10": float(novel.mean()) if len(novel) else 0.0,
            "hr@10": float(np.mean(pu["hit"])) if len(users) else 0.0,
        }

    def value(n):
        return rows[n]["serendipity@10"], rows[n]["novel_hr@10"], rows[n]["hr@10"]

    best = max(rows, key=value)
    rule = max((name_of(w) for w in GRID if w.novelty == w.relevance == 0), key=value)
    console.log(
        f"ranking weights chosen on period {period} ({len(users)} users): {best} "
        f"(serendipity@10 {rows[best]['serendipity@10']:.4f}; without the LLMs {rule}: "
        f"{rows[rule]['serendipity@10']:.4f})"
    )
    info = {"period": period, "users": len(users), "chosen": best, "rule": rule, "scores": rows}
    return named(best), info


def name_of(w: Weights | None) -> str:
    return "top-m" if w is None else f"{w.novelty:g},{w.relevance:g},{w.popularity:g}"
