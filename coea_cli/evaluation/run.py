"""The `evaluate` command: every system on the held-out period, side by side."""

from __future__ import annotations

import math
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from coea_cli import console, metrics, store
from coea_cli.common import Ctx
from coea_cli.errors import ArtifactError
from coea_cli.evaluation import plots, systems
from coea_cli.options import EvaluateOptions, ServeOptions
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.recs.lists import RECORD, SOURCES
from coea_cli.workspace import MAIN, Workspace, read_json, read_table

RANDOM_DRAWS = 10  # the random baseline is averaged over this many draws

COLUMNS = [
    ("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), ("precision@10", "P@10"),
    ("novel_hr@10", "novel HR@10"), ("unexpectedness@10", "Unexp@10"),
    ("self_info@10", "SelfInfo@10"), ("hist_dist@10", "HistDist@10"), ("ild@10", "ILD@10"),
    ("coverage@10", "Cov@10"), ("gini@10", "Gini@10"), ("serendipity@10", "Seren@10"),
    ("serendipity_rank@10", "SerenRank@10"),
]  # fmt: skip


def run_evaluate(ctx: Ctx[EvaluateOptions]) -> dict | None:
    o = ctx.opts
    ws = ctx.ws
    ks = o.cutoffs()
    k_max = max(ks)
    console.log(metrics.protocol(ks))
    main = ws.track(MAIN).require_state()
    test = int(ws.dataset()["test_period"])
    stored = stored_lists(ws, main, test, k_max)
    st = ctx.stage(ws.eval.path, _inputs(ws))
    if ctx.fresh(st):
        report = read_json(ws.eval.require("report"), "evaluate")
        if ctx.json:
            return report
        console.out.print(markdown(report), markup=False)
        return None
    item_emb = ws.item_embedding("content")
    t0 = time.time()
    engine = Engine(ws, test, ctx.device)
    w = engine.world
    users, truth, history, item_pop, n_train_users = _test_set(engine, test)

    rows: dict[str, dict] = {}
    notes: dict[str, str] = {}
    per_user: dict[str, dict] = {}

    def score(name: str, recs: np.ndarray | list[np.ndarray], note: str = "") -> None:
        """Metrics of one system; for a list of draws of a random system, their mean."""
        draws = recs if isinstance(recs, list) else [recs]
        each = [
            metrics.compute_all(
                r, truth, history, w.item_cluster, item_pop, n_train_users, w.n_items, item_emb, ks
            )
            for r in draws
        ]
        rows[name] = {key: float(np.mean([e[key] for e in each])) for key in each[0]}
        rows[name] |= {"users": each[0]["users"], "novel_users": each[0]["novel_users"]}
        pu = [metrics.per_user(r, truth, history, w.item_cluster, 10) for r in draws]
        per_user[name] = {key: np.mean([p[key] for p in pu], axis=0) for key in pu[0]}
        notes[name] = note

    score("Popularity", systems.popularity(engine, users, k_max), "most popular unseen items")
    score("Random novel",
          [systems.random_novel(engine, users, k_max, ctx.seed + d) for d in range(RANDOM_DRAWS)],
          f"random unseen items from clusters new to the user; mean of {RANDOM_DRAWS} draws")  # fmt: skip
    score("DSIE top-K", systems.dsie_top(engine, users, k_max), "relevance only")
    score("DSIE + MMR", systems.dsie_mmr(engine, users, k_max, item_emb, o.mmr_lambda),
          f"MMR lambda {o.mmr_lambda} over DSIE's top 100")  # fmt: skip
    serve, seed = stored["options"], stored["seed"]
    for name, variant, note in _variants(ws, main, ctx.device, seed):
        if variant is None:
            notes[name] = note
            continue
        lists = engine.recommend(users, variant, serve, k_max, seed)["lists"]
        score(name, systems.from_lists(lists, users, k_max), note)
    score("CoEA (full)", systems.from_lists(stored["lists"], users, k_max),
          f"main track, round {main['round']}: the stored lists (recs/recs.parquet)")  # fmt: skip

    rounds = plots.round_curves(ws)
    report = {
        "protocol": metrics.protocol(ks),
        "test_period": test,
        "users": len(users),
        "systems": rows,
        "notes": notes,
        "targets": _targets(rows, per_user, ctx.seed),
        "rounds": rounds,
        "new_interest_rate_7d": _nir(w, test, users, history),
        "seconds": round(time.time() - t0, 1),
    }
    with st.write() as tmp:
        store.write_json(ws.eval.file("report", tmp), _clean(report))
        ws.eval.file("markdown", tmp).write_text(markdown(report), encoding="utf-8")
        plots.rounds_png(rounds, ws.eval.file("rounds", tmp))
        plots.tradeoff_png(rows, ws.eval.file("tradeoff", tmp))
    if ctx.json:
        return _clean(report)
    console.out.print(markdown(report), markup=False)
    return None


def _test_set(engine: Engine, test: int):
    """Users of the test period with a history, their held-out items and histories; each
    item's number of distinct users before the test period, and the number of such users."""
    truth_seq = engine.world.history.during(test)
    users = np.array(
        [u for u in truth_seq.users().tolist() if len(engine.seen(u)) > 0], dtype=np.int64
    )
    truth = [np.unique(truth_seq.of(int(u))) for u in users]
    history = [engine.seen(u) for u in users]
    h = engine.world.history
    before = h.periods < test
    pairs = np.unique(np.stack([h.users[before], h.items[before]]), axis=1)
    item_pop = np.bincount(pairs[1], minlength=h.n_items)
    return users, truth, history, item_pop, len(np.unique(h.users[before]))


def _inputs(ws: Workspace) -> list[Path]:
    """What the report depends on: data, embeddings, SIDs, groups, DSIE, the stored lists and
    every track's state."""
    paths = [ws.data.require("interactions"), ws.items.require("emb")]
    paths += [ws.sids_dir.require("sids"), ws.groups_dir.require("groups")]
    paths += [ws.dsie().require("model"), ws.recs().require("table")]
    return paths + [ws.track(name).state_path() for name in ws.tracks()]


def stored_lists(ws: Workspace, main: dict, test: int, k: int) -> dict:
    """The lists `recommend` stored for the test period with the main track's current
    adapters: {"lists": {user: RECORD array}, "options": ServeOptions, "seed": int}.
    Lists made by other adapters, for another cutoff or shorter than K are refused."""
    out = ws.recs()
    report = read_json(out.require("report"), "recommend")
    manifest = read_json(out.path / store.MANIFEST, "recommend")
    cur = main["current"]
    made = (report.get("novelty"), report.get("relevance"))
    if made != (cur["novelty"], cur["relevance"]):
        raise ArtifactError(
            out.path,
            "recommend",
            f"the lists were made with {made[0]}, the main track now serves {cur['novelty']}",
        )
    if report.get("before_period") != test or report.get("shard"):
        problem = "the lists are not those of every user at the test period"
        raise ArtifactError(out.path, "recommend", problem)
    options = manifest.get("options", {})
    if options.get("round") is not None or options.get("dsie") is False:
        raise ArtifactError(out.path, "recommend", "the lists are an ablation (--round, --no-dsie)")
    if options.get("k", 0) < k:
        problem = f"the lists hold {options.get('k')} items, --ks needs {k}"
        raise ArtifactError(out.path, f"recommend --k {k}", problem)
    columns = ["user_id", "item_id", "score", "cluster", "source"]
    table = read_table(out.require("table"), "recommend", columns)
    serve = ServeOptions(**{f.name: options[f.name] for f in fields(ServeOptions)})
    return {"lists": lists_of(table), "options": serve, "seed": int(manifest.get("seed", 0))}


def lists_of(table) -> dict:
    """recs.parquet rows (sorted by user, then rank) as {user: RECORD array}."""
    users = table["user_id"].to_numpy()
    rec = np.zeros(len(users), dtype=RECORD)
    rec["item"] = table["item_id"].to_numpy()
    rec["score"] = table["score"].to_numpy()
    rec["cluster"] = table["cluster"].to_numpy()
    source = np.array(table["source"].to_pylist())
    for code, name in enumerate(SOURCES):
        rec["source"][source == name] = code
    cuts = np.flatnonzero(np.diff(users)) + 1
    parts = zip(np.split(users, cuts), np.split(rec, cuts), strict=True)
    return {int(u[0]): r for u, r in parts if len(u)}


def _variants(ws: Workspace, main: dict, device: str, seed: int) -> list:
    """The CoEA ablations computed here, as (name, Variant or None, note); full CoEA comes
    from the stored lists."""
    main_track = ws.track(MAIN)
    out = [
        ("CoEA round 0 (w/o PCO)", track_variant(ws, main_track, device, seed, 0),
         "round-0 adapters"),
    ]  # fmt: skip
    tracks = ws.tracks()
    nokl = ws.track("nokl").state() if "nokl" in tracks else None
    if nokl is not None and nokl["round"] > 0:
        out.append(("CoEA w/o KL", track_variant(ws, ws.track("nokl"), device, seed),
                    f"track nokl, round {nokl['round']}"))  # fmt: skip
    else:
        out.append(("CoEA w/o KL", None, "not run: `coea pco-round --track nokl --no-kl`"))
    nodsie = ws.track("nodsie").state() if "nodsie" in tracks else None
    src = ws.track("nodsie") if nodsie is not None and nodsie["round"] > 0 else main_track
    out.append(
        ("CoEA w/o DSIE", track_variant(ws, src, device, seed, use_dsie=False, name="nodsie"),
         "no persona or long-term context; items ranked by popularity inside clusters"),
    )  # fmt: skip
    return out


def _targets(rows: dict, per_user: dict, seed: int) -> dict:
    """The issue's targets on the point estimates, with 95% paired-bootstrap intervals of the
    ratios over the evaluated users."""
    full, dsie, rnd = rows.get("CoEA (full)"), rows.get("DSIE top-K"), rows.get("Random novel")
    if not (full and dsie and rnd):
        return {}

    def ratio(key: str, base: str) -> dict:
        point, lo, hi = metrics.ratio_interval(
            per_user["CoEA (full)"][key], per_user[base][key], seed=seed
        )
        return {"ratio": point, "ci95": [lo, hi]}

    s = ratio("serendipity", "DSIE top-K")
    h = ratio("novel_hit", "Random novel")
    u = full["unexpectedness@10"] - dsie["unexpectedness@10"]
    return {
        "serendipity@10 vs DSIE top-K (goal >= 1.5x)": {**s, "met": s["ratio"] >= 1.5},
        "novel HR@10 vs random novel (goal >= 2x)": {**h, "met": h["ratio"] >= 2.0},
        "unexpectedness@10 minus DSIE top-K (goal: well above)": {"difference": u, "met": u > 0.2},
    }


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


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def markdown(report: dict) -> str:
    head = "| system | " + " | ".join(label for _, label in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [
        "# CoEA evaluation",
        "",
        report["protocol"],
        "",
        f"Test period {report['test_period']}, {report['users']} users with held-out interactions.",
        "",
        head,
        sep,
    ]
    for name, row in report["systems"].items():
        cells = [_fmt(row.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    missing = [n for n in report["notes"] if n not in report["systems"]]
    lines.append("")
    for name, note in report["notes"].items():
        lines.append(f"- {name}: {note}")
    if missing:
        lines.append("")
        lines.append("Not evaluated: " + ", ".join(missing))
    if report["targets"]:
        lines += ["", "Targets:"]
        for name, t in report["targets"].items():
            value = _fmt(t.get("ratio", t.get("difference")))
            if t.get("ci95"):
                lo, hi = t["ci95"]
                value += f" (95% CI {_fmt(lo)} to {_fmt(hi)} over users)"
            lines.append(f"- {name}: {value}: {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
