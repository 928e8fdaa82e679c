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
from coea_cli.evaluation.table import HEADLINE, Events, Scores
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
    ("serendipity_rank@10", "SerenRank@10"), ("share_draw@10", "Draw@10"),
    ("share_reserve@10", "Reserve@10"), ("share_fill@10", "Fill@10"),
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
    t0 = time.time()
    engine = Engine(ws, test, ctx.device)
    ev = events_at(engine, test)
    scores = Scores(ks, ws.item_embedding("content"))
    serve, seed = stored["options"], stored["seed"]
    baselines(scores, engine, ev, serve, k_max, ctx.seed, o.mmr_lambda)
    variants = coea_variants(ws, main, ctx.device, seed)
    coea_rows(scores, engine, ev, variants, serve, k_max, seed)
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
    with st.write() as tmp:
        store.write_json(ws.eval.file("report", tmp), _clean(report))
        ws.eval.file("markdown", tmp).write_text(markdown(report), encoding="utf-8")
        plots.rounds_png(rounds, ws.eval.file("rounds", tmp))
        plots.tradeoff_png(report["systems"], ws.eval.file("tradeoff", tmp))
    if ctx.json:
        return _clean(report)
    console.out.print(markdown(report), markup=False)
    return None


STRONG = "DSIE unexplored"  # the strongest simple rule: every claim is measured against it
SIMPLE = (STRONG, "Popular unexplored", "Random unexplored")


def baselines(scores: Scores, engine: Engine, ev: Events, serve: ServeOptions, k: int,
              seed: int, mmr_lambda: float) -> None:  # fmt: skip
    """Every system without an LLM, each with what it isolates."""
    u, m, r = ev.users, serve.top_m, serve.explore_ratio
    scores.add("Popularity", ev, systems.popularity(engine, u, k),
               "most popular unseen items: no personalisation")  # fmt: skip
    draws = [systems.random_novel(engine, u, k, seed + d) for d in range(RANDOM_DRAWS)]
    scores.add("Random novel", ev, draws,
               f"random unseen items of clusters new to the user (mean of {RANDOM_DRAWS} draws): "
               "novelty with no relevance")  # fmt: skip
    scores.add("DSIE top-K", ev, systems.dsie_top(engine, u, k), "DSIE's ranking: relevance only")
    scores.add("DSIE + MMR", ev, systems.dsie_mmr(engine, u, k, scores.item_emb, mmr_lambda),
               f"DSIE re-ranked by MMR (lambda {mmr_lambda}) over its top 100: diversity "
               "without the user's history")  # fmt: skip
    lists = systems.dsie_unexplored(engine, u, k)
    scores.add(
        STRONG,
        ev,
        systems.from_lists(lists, u, k),
        "DSIE's top K over every cluster new to the user: the rule with no LLM",
        lists,
    )
    lists = systems.popular_unexplored(engine, u, k, m, r)
    scores.add("Popular unexplored", ev, systems.from_lists(lists, u, k),
               f"the {m} unexplored clusters most users engaged, DSIE inside: cluster choice "
               "by popularity", lists)  # fmt: skip
    draws = [systems.random_unexplored(engine, u, k, m, r, seed + d) for d in range(RANDOM_DRAWS)]
    scores.add("Random unexplored", ev, [systems.from_lists(x, u, k) for x in draws],
               f"{m} random unexplored clusters, DSIE inside (mean of {RANDOM_DRAWS} draws): "
               "cluster choice at random")  # fmt: skip


def coea_rows(scores: Scores, engine: Engine, ev: Events, variants, serve, k: int, seed: int):
    for name, variant, note in variants:
        if variant is None:
            scores.note(name, note)
            continue
        lists = engine.recommend(ev.users, variant, serve, k, seed)["lists"]
        scores.add(name, ev, systems.from_lists(lists, ev.users, k), note, lists)


def comparisons(scores: Scores, seed: int) -> dict:
    """Every CoEA row against the strongest simple rule; full CoEA against each simple
    rule. Ratios of per-event means with 95% paired-bootstrap intervals."""
    out = {}
    coea = [n for n in scores.rows if n.startswith("CoEA") or n.startswith("Novelty")]
    for name in coea:
        out[f"{name} vs {STRONG}"] = scores.compare(name, STRONG, seed)
    if "CoEA (full)" in scores.rows:
        for base in SIMPLE[1:]:
            out[f"CoEA (full) vs {base}"] = scores.compare("CoEA (full)", base, seed)
    return out


def events_at(engine: Engine, period: int) -> Events:
    """Users active in `period` with a history before it, their items in the period, and the
    popularity the novelty metrics use (distinct users per item before the period)."""
    during = engine.world.history.during(period)
    users = np.array([u for u in during.users().tolist() if len(engine.seen(u))], np.int64)
    h = engine.world.history
    before = h.periods < period
    pairs = np.unique(np.stack([h.users[before], h.items[before]]), axis=1)
    return Events(
        period=period,
        users=users,
        truth=[np.unique(during.of(int(u))) for u in users],
        history=[engine.seen(u) for u in users],
        item_pop=np.bincount(pairs[1], minlength=h.n_items),
        n_train_users=len(np.unique(h.users[before])),
        item_cluster=engine.world.item_cluster,
        n_items=h.n_items,
    )


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
    if options.get("round") is not None or options.get("track", "main") != MAIN:
        raise ArtifactError(
            out.path, "recommend", "the lists are not the main track's current ones"
        )
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


def coea_variants(ws: Workspace, main: dict, device: str, seed: int) -> list:
    """The CoEA ablations built here, as (name, Variant or None, what it isolates); full
    CoEA comes from the stored lists."""
    main_track = ws.track(MAIN)
    out = [
        ("CoEA round 0 (w/o PCO)", track_variant(ws, main_track, device, seed, 0),
         "round-0 adapters: what the PCO rounds add"),
    ]  # fmt: skip
    tracks = ws.tracks()
    for track, name, what, how in (
        ("nokl", "CoEA w/o KL", "the KL term", "--no-kl"),
        ("nodsie", "CoEA w/o DSIE",
         "persona and long-term context (trained and served without them; popularity inside "
         "clusters)", "--no-dsie"),
    ):  # fmt: skip
        state = ws.track(track).state(branch=False) if track in tracks else None
        if state is not None and state["round"] > 0:
            note = f"track {track}, round {state['round']}: {what}"
            out.append((name, track_variant(ws, ws.track(track), device, seed, name=name), note))
        else:
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
    lines += ["", "Draw@10, Reserve@10, Fill@10: share of the top-10 slots from the Novelty LLM's",
              "draws, from the reserve, and from DSIE's fill.", ""]  # fmt: skip
    lines += comparison_table(report["comparisons"])
    return "\n".join(lines) + "\n"


def comparison_table(comparisons: dict) -> list[str]:
    """Ratios with 95% paired-bootstrap intervals; a verdict only where the interval excludes 1."""
    if not comparisons:
        return []
    labels = [label for _, _, label in HEADLINE]
    lines = [
        "Ratios of per-event means, 95% paired bootstrap over events; better/worse only when "
        "the interval excludes 1.",
        "",
        "| comparison | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name, cmp in comparisons.items():
        cells = []
        for label in labels:
            c = cmp[label]
            lo, hi = c["ci95"]
            cells.append(f"{_fmt(c['ratio'])} [{_fmt(lo)}, {_fmt(hi)}] {c['verdict']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
