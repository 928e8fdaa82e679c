"""Rolling evaluation (`coea evaluate --rolling`): every period k = 1..T scored with the models
as they stood before it, events pooled over periods.

At period k: DSIE is the one trained on periods < k (`dsie-before-k/`, or `dsie/` for the test
period), each CoEA row serves the adapters of its track's last round accepted before k (round j
trains on period j), groups and personas are those at the start of k, and the users are those
active in k with a history before it. Nothing trained on period k scores period k.
"""

from __future__ import annotations

import time

import numpy as np

from coea_cli import console, dist, metrics, store
from coea_cli.common import Ctx
from coea_cli.evaluation import systems
from coea_cli.evaluation.report import clean, comparison_table, markdown_rows
from coea_cli.evaluation.suite import ABLATION_FLAGS, STRONG, baselines, comparisons, events_at
from coea_cli.evaluation.table import Scores
from coea_cli.llm.context import World
from coea_cli.options import EvaluateOptions
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.recs.lists import Weights
from coea_cli.recs.tune import choose, name_of, named
from coea_cli.workspace import MAIN, Workspace, read_json

SERVED = "the serving options and seed of recs/ (recommend)"


def run_rolling(ctx: Ctx[EvaluateOptions], serve, seed: int) -> dict:
    """Score every period with the models of its start; write eval-rolling/."""
    o, ws = ctx.opts, ctx.ws
    ks = o.cutoffs()
    k_max = max(ks)
    test = int(ws.dataset()["test_period"])
    periods = list(range(1, test + 1))
    st = ctx.stage(ws.rolling.path, _inputs(ws, periods))
    if ctx.fresh(st):
        return read_json(ws.rolling.require("report"), "evaluate --rolling")
    t0 = time.time()
    world = World.load(ws)
    scores = Scores(ks, ws.item_embedding("content"))
    seconds, served, weights, validation = {}, {}, {}, {}
    for k in periods:
        s = time.time()
        engine = Engine(ws, k, ctx.device, world)
        ev = events_at(engine, k)
        console.log(f"period {k}: {len(ev.users)} users, models as of its start")
        weights[k], validation[k] = _weights(ws, serve, k, ctx.device, seed)
        rule = named(validation[k].get("rule"))
        baselines(scores, engine, ev, serve, k_max, ctx.seed, o.mmr_lambda, rule)
        served[k] = {}
        for name, variant, note in variants(ws, ctx.device, seed, k):
            if variant is None:
                scores.note(name, note)
                continue
            served[k][name] = variant.novelty.relative_to(ws.root).as_posix()
            lists = engine.recommend(ev.users, variant, serve, k_max, seed, weights[k])["lists"]
            scores.add(name, ev, systems.from_lists(lists, ev.users, k_max), note, lists)
        seconds[k] = round(time.time() - s, 1)
    pooled = scores.pooled()
    report = {
        "protocol": metrics.protocol(ks) + " " + ROLLING_PROTOCOL,
        "periods": periods,
        "events": int(pooled[STRONG]["users"]),
        "systems": pooled,
        "per_period": {
            name: [{"period": p, **row} for p, row in zip(periods, rows, strict=True)]
            for name, rows in scores.per_period().items()
        },
        "notes": scores.notes,
        "comparisons": comparisons(scores, ctx.seed),
        "served_with": SERVED,
        "novelty_adapters": served,
        "weights": {k: name_of(w) for k, w in weights.items()},
        "validation": validation,
        "seconds": {"total": round(time.time() - t0, 1), "per_period": seconds},
    }
    with dist.rank0_write(st) as tmp:
        report = clean(report)
        store.write_json(ws.rolling.file("report", tmp), report)
        text = markdown(report, markdown_rows, comparison_table)
        ws.rolling.file("markdown", tmp).write_text(text, encoding="utf-8")
        periods_png(report, ws.rolling.file("periods", tmp))
    return report


ROLLING_PROTOCOL = (
    "Rolling: every period k = 1..T is scored with the models as they stood before it (DSIE "
    "trained on periods < k, the adapters of the last round accepted before k, groups at the "
    "start of k); events are (user, period) pairs, pooled; coverage and Gini are means over "
    "periods."
)


def variants(ws: Workspace, device: str, seed: int, period: int) -> list:
    """The CoEA rows at `period`: each track's adapters as they stood before it."""
    out = []
    tracks = ws.tracks()
    rows = (
        ("CoEA (full)", MAIN, {}, "main track"),
        ("CoEA round 0 (w/o PCO)", MAIN, {"round_": 0}, "round-0 adapters"),
        ("CoEA w/o KL", "nokl", {}, "track nokl: the KL term"),
        ("CoEA, popularity inside", MAIN, {"inside": "popularity"},
         "main track, items inside clusters by popularity instead of DSIE"),
        ("CoEA w/o DSIE", "nodsie", {},
         "track nodsie: no persona or long-term context, popularity inside clusters"),
        ("CoEA recent context", "nodsie", {"inside": "dsie"},
         "track nodsie (no persona or long-term context), DSIE inside clusters"),
        ("CoEA w/o group identity", "nopersona", {},
         "track nopersona: no group persona, long-term context, DSIE inside clusters"),
        ("Novelty LLM alone", MAIN, {"judge": False}, "main track, no Relevance best-of-n"),
        ("CoEA w/o reserve", MAIN, {"reserve": False}, "main track, the judged draws only"),
    )  # fmt: skip
    for name, track, kw, note in rows:
        state = ws.track(track).state(branch=False) if track in tracks else None
        if state is None or state["round"] < 1:
            how = f"coea pco-round --track {track} {ABLATION_FLAGS.get(track, '')}".strip()
            out.append((name, None, f"not run: `{how}`"))
            continue
        before = None if "round_" in kw else period
        variant = track_variant(ws, ws.track(track), device, seed, name=name, before=before, **kw)
        out.append((name, variant, f"{note}; adapters as of each period's start"))
    return out


def _weights(ws: Workspace, serve, period: int, device: str, seed: int):
    """The ranking weights at `period`: as fixed by the serving options, or chosen on the
    period before it with the models of that time (the top-m rule at period 1)."""
    fixed = serve.fixed_weights()
    if fixed == "top-m":
        return None, {"note": "top-m"}
    if fixed is not None:
        return Weights(*fixed), {"note": "fixed"}
    return choose(ws, ws.track(MAIN), period, serve, device, seed)


def _inputs(ws: Workspace, periods: list[int]) -> list:
    paths = [ws.data.require("interactions"), ws.items.require("emb")]
    paths += [ws.sids_dir.require("sids"), ws.groups_dir.require("groups")]
    paths += [ws.dsie(ws.dsie_name(k)).require("model") for k in periods]
    paths += [ws.recs().path / store.MANIFEST]
    return paths + [ws.track(name).state_path() for name in ws.tracks()]


def markdown(report: dict, rows_fn, comparison_fn) -> str:
    lines = [
        "# CoEA rolling evaluation",
        "",
        report["protocol"],
        "",
        f"Periods {report['periods'][0]}..{report['periods'][-1]}: {report['events']} events "
        "(user, period).",
        "",
        *rows_fn(report["systems"]),
        "",
        *[f"- {name}: {note}" for name, note in report["notes"].items()],
        "",
        *comparison_fn(report["comparisons"]),
        "",
        "Per period (novel HR@10 / serendipity@10 / HR@10):",
        "",
        "| system | " + " | ".join(str(p) for p in report["periods"]) + " |",
        "|---|" + "---|" * len(report["periods"]),
    ]
    for name, rows in report["per_period"].items():
        cells = [
            f"{_f(r.get('novel_hr@10'))} / {_f(r.get('serendipity@10'))} / {_f(r.get('hr@10'))}"
            for r in rows
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    s = report["seconds"]
    lines += [
        "",
        f"Wall time {s['total']} s ({', '.join(f'{k}: {v} s' for k, v in s['per_period'].items())}).",
    ]
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def periods_png(report: dict, path) -> None:
    """Novel HR@10 and serendipity@10 per period, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in report["per_period"].items():
        x = [r["period"] for r in rows]
        for ax, key in zip(axes, ("novel_hr@10", "serendipity@10"), strict=True):
            ax.plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=name)
    for ax, label in zip(axes, ("novel HR@10", "serendipity@10"), strict=True):
        ax.set_xlabel("period (models as of its start)")
        ax.set_ylabel(label)
        ax.set_xticks(report["periods"])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Rolling evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
