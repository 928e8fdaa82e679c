"""The `simulate` command: a closed loop of systems and oracle users over simulated periods."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import time

import numpy as np

from coea_cli import console, metrics, store
from coea_cli.common import Ctx, cpu_threads
from coea_cli.errors import BadInput
from coea_cli.evaluation import systems as rules
from coea_cli.options import SimOptions
from coea_cli.recs.engine import Engine
from coea_cli.recs.tune import named
from coea_cli.sim import report
from coea_cli.sim.loop import SYSTEMS, Job, run_job
from coea_cli.sim.oracle import calibrate, fit_oracle
from coea_cli.workspace import Workspace, check_name, read_json


def run_simulate(ctx: Ctx[SimOptions]) -> dict:
    o, ws = ctx.opts, ctx.ws
    out = ws.sim(check_name("--out", o.out))
    test = int(ws.dataset()["test_period"])
    chosen = [s for s in SYSTEMS if s.key in o.system_keys()]
    tracks = ws.tracks()
    missing = [s for s in chosen if s.track is not None and s.track not in tracks]
    if missing:
        names = ", ".join(f"{s.key} (track {s.track})" for s in missing)
        raise BadInput(f"--systems: {names} need `coea pco-round --track ...` first")
    inputs = [ws.data.require("interactions"), ws.sids_dir.require("sids")]
    inputs += [ws.groups_dir.require("groups"), ws.dsie().require("model")]
    inputs += [ws.recs().path / store.MANIFEST, *(ws.track(t).state_path() for t in tracks)]
    st = ctx.stage(out.path, inputs)
    if ctx.fresh(st):
        return _result(ctx, out)
    t0 = time.time()
    with st.write() as tmp:
        oracle, users, anchor = _oracle(ws, o, test, ctx.device, ctx.seed)
        store.write_tensors(out.file("oracle", tmp), oracle.tensors(), oracle.meta())
        serve = _serving(ws)
        order = sorted(chosen, key=lambda s: s.ranker != "coea")  # the long jobs first
        seeds = range(ctx.seed, ctx.seed + o.seeds)
        jobs = [
            _job(s, seed, ws, tmp, test, o, users, serve, ctx.device)
            for s in order
            for seed in seeds
        ]
        results = _run_jobs(jobs, oracle, o.workers)
        shutil.rmtree(tmp / "runs", ignore_errors=True)
        report.write(out, tmp, results, jobs, o, anchor, time.time() - t0)
    return _result(ctx, out)


def _result(ctx: Ctx[SimOptions], out) -> dict | None:
    """The report as JSON with --json, else its Markdown on stdout."""
    if ctx.json:
        return read_json(out.require("report"), "simulate")
    console.out.print(out.require("markdown").read_text(encoding="utf-8"), markup=False)
    return None


def _oracle(ws: Workspace, o: SimOptions, test: int, device: str, seed: int):
    """The oracle on the complete real log, the simulated users, and its calibration anchor:
    DSIE's top-K at the start, whose mean acceptance is set to DSIE's real precision@K on the
    test period (or to --accept-rate)."""
    h = ws.history()
    console.log(f"oracle: ALS ({o.factors} factors) on all {len(h.users):,} real interactions")
    oracle = fit_oracle(h, factors=o.factors, fatigue=o.fatigue, window=o.fatigue_window, seed=seed)
    engine = Engine(ws, test, device)
    candidates = np.array([u for u in range(h.n_users) if len(engine.seen(u))], np.int64)
    rng = np.random.default_rng(seed)
    n = len(candidates) if o.users == 0 else min(o.users, len(candidates))
    users = np.sort(rng.choice(candidates, size=n, replace=False))
    dsie_lists = rules.dsie_top(engine, users, o.k)
    during = h.during(test)
    active = np.array([u for u in during.users().tolist() if len(engine.seen(u))], np.int64)
    real = metrics.precision(
        rules.dsie_top(engine, active, o.k), [np.unique(during.of(u)) for u in active], o.k
    )
    target = o.accept_rate if o.accept_rate is not None else real
    calibrate(oracle, users, dsie_lists, target)
    console.log(
        f"oracle calibrated: slope {oracle.slope:.2f}, intercept {oracle.intercept:.2f}; DSIE's "
        f"top {o.k} at the start is accepted at {target:.3f} (DSIE's real precision@{o.k} on "
        f"the test period: {real:.3f})"
    )
    anchor = {"target": target, "dsie_real_precision": real, "users": len(users)}
    return oracle, users, anchor


def _job(system, seed, ws, tmp, test, o, users, serving, device) -> Job:
    root = tmp / "runs" / f"{system.key}-seed{seed}"
    serve, weights = serving
    return Job(
        system, seed, ws.root, root, test, o.periods, o.k, users, serve, weights, o.mmr_lambda,
        device,
    )  # fmt: skip


def _serving(ws: Workspace):
    """The serving options and ranking weights `recommend` used; the CoEA systems serve with
    them."""
    from coea_cli.options import ServeOptions

    options = read_json(ws.recs().path / store.MANIFEST, "recommend").get("options", {})
    names = set(ServeOptions.__dataclass_fields__)
    weights = named(read_json(ws.recs().require("report"), "recommend").get("weights", "top-m"))
    return ServeOptions(**{k: v for k, v in options.items() if k in names}), weights


def _run_jobs(jobs: list[Job], oracle, workers: int) -> list[dict]:
    if workers <= 1:
        return [run_job(j, oracle) for j in jobs]
    with mp.get_context("spawn").Pool(workers, initializer=cpu_threads) as pool:
        return pool.starmap(run_job, [(j, oracle) for j in jobs], chunksize=1)
