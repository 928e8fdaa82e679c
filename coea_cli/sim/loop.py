"""One simulated run: a system, a seed, P periods.

At each period p the system recommends K items to every simulated user from its own log
(periods < p), the oracle accepts each item with its probability (common random numbers: the
same uniform draw for the same seed, period, user and rank in every system, so systems are
compared on the same luck), the accepted items become period p of the system's log, and the
system updates as it would in production: every DSIE-based system fine-tunes DSIE on the new
period (one epoch over the windows ending in it, the same budget for all), and the CoEA
systems with PCO run one round on it (the Relevance LLM verifies what the Novelty LLM proposed
against what was accepted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from coea_cli import console
from coea_cli.common import seed_everything
from coea_cli.dsie.data import training_windows
from coea_cli.dsie.infer import load_model as load_dsie
from coea_cli.dsie.train import TrainConfig, Trainer
from coea_cli.evaluation import systems as rules
from coea_cli.llm.context import World
from coea_cli.llm.models import serving_spec
from coea_cli.options import DsieOptions, PcoOptions, ServeOptions
from coea_cli.pco.advance import advance
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.sim.measures import Tally, period_measures
from coea_cli.sim.oracle import Oracle, recent_shares
from coea_cli.sim.runspace import append_period, make_runspace
from coea_cli.workspace import MAIN, Serving, Workspace


@dataclass(frozen=True)
class System:
    key: str
    label: str
    ranker: str  # popularity, dsie, mmr, unexplored, popularity-unexplored or coea
    track: str | None = None  # coea: the track whose adapters serve
    round0: bool = False  # coea: frozen at round 0
    pco: bool = False  # coea: one PCO round per simulated period


SYSTEMS = (
    System("popularity", "Popularity", "popularity"),
    System("dsie", "DSIE top-K", "dsie"),
    System("dsie-mmr", "DSIE + MMR", "mmr"),
    System("dsie-unexplored", "DSIE unexplored", "unexplored"),
    System("popularity-unexplored", "Popularity unexplored", "popularity-unexplored"),
    System("coea-round0", "CoEA frozen at round 0", "coea", MAIN, round0=True),
    System("coea-pco", "CoEA with PCO", "coea", MAIN, pco=True),
    System("coea-nokl", "CoEA w/o KL", "coea", "nokl", pco=True),
)


@dataclass(frozen=True)
class Job:
    system: System
    seed: int
    base: Path  # the real workspace
    root: Path  # this run's workspace
    start: int  # first simulated period
    periods: int
    k: int
    users: np.ndarray  # the simulated users
    serve: ServeOptions
    weights: object  # recs.lists.Weights or None: what recommend chose
    mmr_lambda: float
    device: str


def run_job(job: Job, oracle: Oracle) -> dict:
    """Rows of per-period measures, the accepted (period, user, item, rank) and final per-user
    totals of one system and seed."""
    sysm, t0 = job.system, time.time()
    ws = make_runspace(Workspace(job.base), job.root, job.start)
    dsie = load_dsie(ws, device=job.device)
    item_emb = ws.item_embedding("content")
    tally = Tally(len(job.users))
    rows, accepted_rows = [], []
    for p in range(job.start, job.start + job.periods):
        seed_everything(job.seed * 1000 + p)  # each job alike, whatever ran before it
        world = World.load(ws)
        engine = Engine(ws, p, job.device, world, dsie=dsie)
        lists = recommend(job, engine, p, item_emb)
        tired = _tiredness(oracle, world, job.users, lists, p)
        prob = oracle.accept_prob(job.users, lists, tired)
        draws = np.random.default_rng([job.seed, p]).random(lists.shape)
        accepted = draws < prob
        hist = [set(world.item_cluster[engine.seen(u)].tolist()) for u in job.users]
        row = period_measures(lists, accepted, hist, world.item_cluster, world.n_items, tally)
        rows.append({"system": sysm.label, "seed": job.seed, "period": p, **row,
                     "expected_precision": float(prob[lists >= 0].mean())})  # fmt: skip
        r, c = np.nonzero(accepted)
        accepted_rows += [
            (p, int(job.users[a]), int(lists[a, b]), int(b) + 1) for a, b in zip(r, c, strict=True)
        ]
        ws = append_period(ws, p, job.users[r], lists[r, c])
        update(job, ws, dsie, p)
        console.log(f"{sysm.label} seed {job.seed} period {p}: {row['accepted_per_user']:.2f} "
                    f"accepted per user, exploration {row['exploration']:.2f}")  # fmt: skip
    return {
        "rows": rows,
        "accepted": accepted_rows,
        "users": {"accepted": tally.accepted.tolist(), "explored": tally.explored.tolist()},
        "seconds": round(time.time() - t0, 1),
    }


def recommend(job: Job, engine: Engine, p: int, item_emb: np.ndarray) -> np.ndarray:
    """[U, K] items for the simulated users at period p."""
    users, k, sysm = job.users, job.k, job.system
    if sysm.ranker == "popularity":
        return rules.popularity(engine, users, k)
    if sysm.ranker == "dsie":
        return rules.dsie_top(engine, users, k)
    if sysm.ranker == "mmr":
        return rules.dsie_mmr(engine, users, k, item_emb, job.mmr_lambda)
    if sysm.ranker == "unexplored":
        return rules.from_lists(rules.unexplored(engine, users, k), users, k)
    if sysm.ranker == "popularity-unexplored":
        return rules.from_lists(rules.unexplored(engine, users, k, "popularity"), users, k)
    ws = engine.ws
    round_ = 0 if sysm.round0 else None
    variant = track_variant(ws, ws.track(sysm.track), job.device, job.seed, round_)
    lists = engine.recommend(users, variant, job.serve, k, job.seed, job.weights)["lists"]
    return rules.from_lists(lists, users, k)


def update(job: Job, ws: Workspace, dsie, p: int) -> None:
    """Fine-tune DSIE on period p (every system but popularity); one PCO round on it for the
    systems with PCO."""
    if job.system.ranker in ("popularity", "popularity-unexplored"):
        return
    world = World.load(ws)
    seqs = world.history.before(p + 1)
    active = world.history.during(p).users()
    windows = training_windows(
        [seqs.of(u)[-dsie.cfg.long_len - 1 :] for u in active], dsie.cfg.long_len
    )
    windows.user[:] = active[windows.user]
    cfg = replace(TrainConfig.from_options(DsieOptions(), job.seed + p), epochs=1, warmup=1)
    trainer = Trainer(dsie, windows, world.group_at(None), cfg, None, device=job.device,
                      label=f"sim dsie {job.system.key}")  # fmt: skip
    trainer.train_epoch()
    dsie.eval()
    if job.system.pco:
        _pco_round(job, ws, world, p)


def _pco_round(job: Job, ws: Workspace, world: World, p: int) -> None:
    track = ws.track(job.system.track)
    state = track.require_state()
    serving = Serving.from_dict(state["serving"], track.state_path())
    spec = serving_spec(ws, track, state, job.device, job.seed)
    advance(
        ws,
        track,
        p,
        state,
        world,
        spec,
        serving,
        round_options(ws, track, state),
        report_test=False,
    )


def round_options(ws: Workspace, track, state: dict) -> PcoOptions:
    """The options the track's last round was run with (its manifest records them)."""
    from coea_cli import store

    last = state["history"][-1]
    manifest = store.read_json(ws.root / Path(last["metrics"]).parent / store.MANIFEST)
    recorded = manifest.get("options", {})
    names = {f.name for f in fields(PcoOptions)}
    return PcoOptions(**{k: v for k, v in recorded.items() if k in names and k != "round"})


def _tiredness(oracle: Oracle, world: World, users, lists: np.ndarray, p: int) -> np.ndarray:
    """[U, K] share of each user's last periods spent in each listed item's cluster."""
    shares = recent_shares(
        world.history, users, world.item_cluster, world.n_clusters, p, oracle.window
    )
    clusters = world.item_cluster[np.maximum(lists, 0)]
    return np.take_along_axis(shares, clusters, axis=1)
