"""Is there signal in the LLMs beyond popularity inside the unexplored clusters?

    python bench/ranking_signal.py WORK [--track main] [--json out.json]

WORK is a workspace with the rolling evaluation's models (`make rolling`: DSIE cut-offs and the
track's rounds). For every period k = 1..T, with the models as they stood before k, each
active user's unseen items of the clusters new to the user get features: DSIE's standardised
score, log popularity's standardised score, the Novelty LLM's log-probability of the item's
cluster, the Relevance LLM's logit for it (0 when not judged) and a judged flag, the log
cluster popularity and log cluster size; label: the user interacted with the item in k. A
logistic ranker per feature set is fitted on period k - 1 and ranks period k's items (top 10);
rows are pooled over periods 2..T and compared with popularity alone (the Popularity-
unexplored rule) by ratios with 95% paired bootstrap intervals over events.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coea_cli import metrics  # noqa: E402
from coea_cli.evaluation.stored import serving_options  # noqa: E402
from coea_cli.evaluation.suite import events_at  # noqa: E402
from coea_cli.llm.context import World, cluster_popularity  # noqa: E402
from coea_cli.recs.engine import Engine, standardised, track_variant  # noqa: E402
from coea_cli.workspace import MAIN, Workspace  # noqa: E402

COLUMNS = ("dsie", "pop", "log_p_novelty", "relevance_logit", "judged", "cluster_pop", "size")
SETS = {
    "popularity": ("pop",),
    "DSIE + popularity": ("dsie", "pop"),
    "no LLM (DSIE, popularity, cluster popularity and size)": (
        "dsie",
        "pop",
        "cluster_pop",
        "size",
    ),
    "all (with both LLMs)": COLUMNS,
    "LLMs only (with cluster size)": ("log_p_novelty", "relevance_logit", "judged", "size"),
}


def period_rows(ws: Workspace, world: World, track: str, k: int, serve, seed: int):
    """(events, [rows, 2 + features + label]): event row, item, features, label."""
    eng = Engine(ws, k, "cpu", world)
    ev = events_at(eng, k)
    variant = track_variant(ws, ws.track(track), "cpu", seed, before=k)
    cands = eng.candidates(ev.users, variant, serve, seed)
    dsie, pop = standardised(eng.dsie_scores(ev.users)), standardised(eng.popularity)
    cpop = np.log1p(cluster_popularity(world, k))
    rows = []
    for r, u in enumerate(ev.users.tolist()):
        familiar, seen = set(eng.familiar(u).tolist()), eng.seen(u)
        truth = ev.truth[r]
        for c in cands[u]:
            cl = c.cluster
            if cl in familiar:
                continue
            items = eng.items_of.get(cl, np.zeros(0, np.int64))
            items = items[~np.isin(items, seen)]
            judged = bool(np.isfinite(c.relevance))
            p = min(max(c.relevance, 1e-6), 1 - 1e-6) if judged else 0.5
            feats = (np.log(max(c.novelty, 1e-12)), np.log(p / (1 - p)), float(judged),
                     cpop[cl], np.log(len(eng.items_of[cl])))  # fmt: skip
            for i in items.tolist():
                rows.append((r, i, dsie[r, i], pop[i], *feats, float(i in truth)))
    return ev, np.array(rows, dtype=np.float64).reshape(-1, 3 + len(COLUMNS))


def top(ev, rows: np.ndarray, score: np.ndarray, k: int = 10) -> np.ndarray:
    recs = np.full((len(ev.users), k), -1, np.int64)
    for r in range(len(ev.users)):
        m = rows[:, 0] == r
        order = np.argsort(-score[m], kind="stable")[:k]
        recs[r, : len(order)] = rows[m, 1][order].astype(np.int64)
    return recs


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("work", type=Path)
    ap.add_argument("--track", default=MAIN)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ws = Workspace(a.work)
    serve, seed = serving_options(ws)
    world = World.load(ws)
    test = int(ws.dataset()["test_period"])
    col = {name: 2 + j for j, name in enumerate(COLUMNS)}
    per = {name: {"hit": [], "novel_hit": [], "serendipity": []} for name in SETS}
    coefs, prev = {}, None
    for k in range(1, test + 1):
        ev, rows = period_rows(ws, world, a.track, k, serve, seed)
        print(f"period {k}: {len(ev.users)} users, {len(rows):,} items, "
              f"{int(rows[:, -1].sum())} interacted", flush=True)  # fmt: skip
        if prev is not None:
            for name, feats in SETS.items():
                cols = [col[f] for f in feats]
                lr = LogisticRegression(max_iter=2000).fit(prev[:, cols], prev[:, -1])
                weights = dict(zip(feats, lr.coef_[0].round(3).tolist(), strict=True))
                coefs.setdefault(name, []).append(weights)
                recs = top(ev, rows, lr.decision_function(rows[:, cols]))
                pu = metrics.per_user(recs, ev.truth, ev.history, world.item_cluster, 10)
                for key, parts in per[name].items():
                    parts.append(pu[key])
        prev = rows
    pooled = {n: {k: np.concatenate(v) for k, v in d.items()} for n, d in per.items()}
    base = pooled["popularity"]
    out = {"track": a.track, "periods": f"2..{test}", "events": len(base["hit"]),
           "coefficients": coefs, "systems": {}}  # fmt: skip
    print(f"\n{out['events']} events, periods 2..{test}; ratios against popularity alone")
    for name, vals in pooled.items():
        row = {}
        for key in ("hit", "novel_hit", "serendipity"):
            r, lo, hi = metrics.ratio_interval(vals[key], base[key], seed=0)
            row[key] = {"mean": float(np.nanmean(vals[key])), "ratio": r, "ci95": [lo, hi]}
        out["systems"][name] = row
        cells = [f"{k} {v['mean']:.4f} ({v['ratio']:.2f} [{v['ci95'][0]:.2f}, "
                 f"{v['ci95'][1]:.2f}])" for k, v in row.items()]  # fmt: skip
        print(f"{name}: " + "; ".join(cells))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
