"""The `evaluate` command: every system on the held-out period, side by side."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from coea_cli import console, dist, metrics, store
from coea_cli.common import Ctx
from coea_cli.evaluation import plots, systems
from coea_cli.evaluation.report import clean, markdown
from coea_cli.evaluation.stored import serving_options, stored_lists
from coea_cli.evaluation.suite import ABLATION_FLAGS, baselines, coea_rows, comparisons, events_at
from coea_cli.evaluation.table import Scores
from coea_cli.options import EvaluateOptions
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.workspace import MAIN, Workspace, read_json


def run_evaluate(ctx: Ctx[EvaluateOptions]) -> dict | None:
    """Under torchrun every rank scores the systems, the LLM passes shared among them
    (`llm/decoding.py`); rank 0 alone writes and prints."""
    rank, size, _ = dist.init_distributed(ctx.device)
    try:
        result = _evaluate(ctx, rank)
        dist.barrier(size)
        return result
    finally:
        dist.close(size)


def _evaluate(ctx: Ctx[EvaluateOptions], rank: int) -> dict | None:
    o = ctx.opts
    ws = ctx.ws
    ks = o.cutoffs()
    k_max = max(ks)
    if o.recs is not None:
        from coea_cli.evaluation.external import run_external

        return run_external(ctx) if rank == 0 else None  # no LLM to share
    console.log(metrics.protocol(ks))
    main = ws.track(MAIN).require_state()
    test = int(ws.dataset()["test_period"])
    if o.rolling:
        from coea_cli.evaluation.rolling import run_rolling

        report = run_rolling(ctx, *serving_options(ws))
        if ctx.json:
            return report
        if rank == 0:
            console.out.print(rolling_text(ws), markup=False)
        return None
    stored = stored_lists(ws, main, test, k_max)
    st = ctx.stage(ws.eval.path, _inputs(ws))
    if ctx.fresh(st):
        report = read_json(ws.eval.require("report"), "evaluate")
        if ctx.json:
            return report
        if rank == 0:
            console.out.print(markdown(report), markup=False)
        return None
    t0 = time.time()
    engine = Engine(ws, test, ctx.device)
    ev = events_at(engine, test)
    scores = Scores(ks, ws.item_embedding("content"))
    serve, seed, weights = stored["options"], stored["seed"], stored["weights"]
    baselines(scores, engine, ev, serve, k_max, ctx.seed, o.mmr_lambda, stored["rule"])
    variants = coea_variants(ws, main, ctx.device, seed)
    coea_rows(scores, engine, ev, variants, serve, k_max, seed, weights)
    full = f"main track, round {main['round']}: the stored lists (recs/recs.parquet)"
    lists = stored["lists"]
    scores.add("CoEA (full)", ev, systems.from_lists(lists, ev.users, k_max), full, lists)
    rounds = plots.round_curves(ws)
    report = {
        "protocol": metrics.protocol(ks),
        "test_period": test,
        "users": len(ev.users),
        "systems": scores.pooled(),
        "notes": scores.notes,
        "comparisons": comparisons(scores, ctx.seed),
        "rounds": rounds,
        "new_interest_rate_7d": _nir(engine.world, test, ev.users, ev.history),
        "seconds": round(time.time() - t0, 1),
    }
    with dist.rank0_write(st) as tmp:
        store.write_json(ws.eval.file("report", tmp), clean(report))
        ws.eval.file("markdown", tmp).write_text(markdown(report), encoding="utf-8")
        plots.rounds_png(rounds, ws.eval.file("rounds", tmp))
        plots.tradeoff_png(report["systems"], ws.eval.file("tradeoff", tmp))
    if ctx.json:
        return clean(report)
    if rank == 0:
        console.out.print(markdown(report), markup=False)
    return None


def _inputs(ws: Workspace) -> list[Path]:
    """What the report depends on: data, embeddings, SIDs, groups, DSIE, the stored lists and
    every track's state."""
    paths = [ws.data.require("interactions"), ws.items.require("emb")]
    paths += [ws.sids_dir.require("sids"), ws.groups_dir.require("groups")]
    paths += [ws.dsie().require("model"), ws.recs().require("table")]
    return paths + [ws.track(name).state_path() for name in ws.tracks()]


def rolling_text(ws: Workspace) -> str:
    return ws.rolling.require("markdown").read_text(encoding="utf-8")


def coea_variants(ws: Workspace, main: dict, device: str, seed: int) -> list:
    """The CoEA ablations built here, as (name, Variant or None, what it isolates); full
    CoEA comes from the stored lists."""
    main_track = ws.track(MAIN)
    out = [
        ("CoEA round 0 (w/o PCO)", track_variant(ws, main_track, device, seed, 0),
         "round-0 adapters: what the PCO rounds add"),
    ]  # fmt: skip
    out.append(("CoEA, popularity inside",
                track_variant(ws, main_track, device, seed, inside="popularity"),
                "main track, items inside clusters by popularity instead of DSIE"))  # fmt: skip
    tracks = ws.tracks()
    for track, name, what, kw in (
        ("nokl", "CoEA w/o KL", "the KL term", {}),
        ("nodsie", "CoEA w/o DSIE",
         "persona and long-term context (trained and served without them; popularity inside "
         "clusters)", {}),
        ("nodsie", "CoEA recent context",
         "persona and long-term context (trained and served without them; DSIE inside "
         "clusters)", {"inside": "dsie"}),
        ("nopersona", "CoEA w/o group identity",
         "the group persona (trained and served without it; long-term context, DSIE inside "
         "clusters)", {}),
    ):  # fmt: skip
        state = ws.track(track).state(branch=False) if track in tracks else None
        if state is not None and state["round"] > 0:
            note = f"track {track}, round {state['round']}: {what}"
            variant = track_variant(ws, ws.track(track), device, seed, name=name, **kw)
            out.append((name, variant, note))
        else:
            how = ABLATION_FLAGS[track]
            out.append((name, None, f"not run: `coea pco-round --track {track} {how}`"))
    out.append(("Novelty LLM alone", track_variant(ws, main_track, device, seed, judge=False),
                "main track, draws by Novelty probability, no Relevance: what best-of-n adds"))  # fmt: skip
    out.append(("CoEA w/o reserve", track_variant(ws, main_track, device, seed, reserve=False),
                "main track, the judged draws only: what the reserve adds"))  # fmt: skip
    return out


def _nir(w, test: int, users: np.ndarray, history) -> float:
    """Observed 7-day new-interest exploration rate of the evaluated users in the test period."""
    h = w.history
    mask = h.periods == test
    row = {int(u): r for r, u in enumerate(users)}
    keep = mask & np.isin(h.users, users)
    if not keep.any():
        return float("nan")
    rows = np.array([row[int(u)] for u in h.users[keep]])
    start = int(h.times[mask].min())
    return metrics.new_interest_rate(
        rows, h.items[keep], h.times[keep], history, w.item_cluster, start, days=7
    )
