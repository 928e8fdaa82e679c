"""The `evaluate` command: every system on the held-out period, side by side."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from coea_cli import console, metrics, store
from coea_cli.common import Ctx
from coea_cli.errors import BadInput, MissingArtifact
from coea_cli.evaluation import plots, systems
from coea_cli.pco.models import LLMOptions
from coea_cli.pco.state import MAIN, Track, load_state
from coea_cli.recs.engine import Engine, EngineOptions, Variant
from coea_cli.recs.lists import ListOptions
from coea_cli.recs.run import check_options

RANDOM_DRAWS = 10  # the random baseline is averaged over this many draws

COLUMNS = [
    ("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), ("precision@10", "P@10"),
    ("novel_hr@10", "novel HR@10"), ("unexpectedness@10", "Unexp@10"),
    ("self_info@10", "SelfInfo@10"), ("hist_dist@10", "HistDist@10"), ("ild@10", "ILD@10"),
    ("coverage@10", "Cov@10"), ("gini@10", "Gini@10"), ("serendipity@10", "Seren@10"),
    ("serendipity_rank@10", "SerenRank@10"),
]  # fmt: skip


def run_evaluate(ctx: Ctx) -> dict:
    o = ctx.options
    work = Path(ctx.work)
    ks = parse_ks(str(o["ks"]))
    check_options(o)
    k_max = max(ks)
    console.log(metrics.protocol(ks))
    main = load_state(Track(work, MAIN))
    if main is None:
        raise MissingArtifact(work / "pco" / "state.json", "pco-round")
    meta = store.read_json(work / "data" / "dataset.json")
    test = int(meta["test_period"])
    emb, _ = store.read_tensors(work / "items" / "item_emb.safetensors", command="tokenize-items")
    item_emb = emb["content"].astype(np.float32)
    llm = LLMOptions(base_model=main.get("base_model", "scratch"), device=ctx.device, seed=ctx.seed)
    t0 = time.time()
    engine = Engine(work, test, llm)
    w = engine.world
    truth_seq = w.sequences(test + 1, only_period=test)
    users = np.array(sorted(u for u in truth_seq if len(engine.seen(u)) > 0), dtype=np.int64)
    truth = [np.unique(truth_seq[int(u)]) for u in users]
    history = [engine.seen(u) for u in users]
    before = w.periods < test
    pairs = np.unique(np.stack([w.users[before], w.items[before]]), axis=1)
    item_pop = np.bincount(pairs[1], minlength=w.n_items)
    n_train_users = len(np.unique(w.users[before]))
    opt = EngineOptions(
        n=o["n"], temperature=o["temperature"], key_recent=o["key_recent"], seed=ctx.seed,
        lists=ListOptions(k=k_max, top_m=o["top_m"], explore_ratio=o["explore_ratio"]),
    )  # fmt: skip

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
    score("DSIE + MMR", systems.dsie_mmr(engine, users, k_max, item_emb, o["mmr_lambda"]),
          f"MMR lambda {o['mmr_lambda']} over DSIE's top 100")  # fmt: skip
    variants = _variants(work, main)
    for name, variant, note in variants:
        if variant is None:
            notes[name] = note
            continue
        lists = engine.recommend(users, variant, opt)["lists"]
        score(name, systems.from_lists(lists, users, k_max), note)

    rounds = plots.round_curves(work)
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
    with store.stage(work / "eval", "evaluate", o, [work / "pco" / "state.json"], ctx.seed) as st:
        store.write_json(st.tmp / "report.json", _clean(report))
        (st.tmp / "report.md").write_text(markdown(report), encoding="utf-8")
        plots.rounds_png(rounds, st.tmp / "rounds.png")
        plots.tradeoff_png(rows, st.tmp / "tradeoff.png")
    if ctx.json:
        return _clean(report)
    console.out.print(markdown(report), markup=False)
    return None


def parse_ks(spec: str) -> tuple[int, ...]:
    """--ks as sorted cut-offs; 10 is always added (the table and the targets use @10)."""
    try:
        ks = {int(x) for x in spec.split(",") if x.strip()}
    except ValueError:
        raise BadInput(
            f"--ks: expected comma-separated integers such as 5,10,20, got {spec!r}"
        ) from None
    if any(k < 1 for k in ks):
        raise BadInput(f"--ks: every cut-off must be at least 1, got {spec!r}")
    return tuple(sorted(ks | {10}))


def _variants(work: Path, main: dict) -> list[tuple[str, Variant | None, str]]:
    zero = next(h for h in main["history"] if h["round"] == 0)
    cur = main["current"]
    out = [
        ("CoEA round 0 (w/o PCO)", Variant("round0", work / zero["novelty"], work / zero["relevance"]),
         "round-0 adapters"),
    ]  # fmt: skip
    nokl = load_state(Track(work, "nokl"))
    if nokl is not None and nokl["round"] > 0:
        c = nokl["current"]
        out.append(("CoEA w/o KL", Variant("nokl", work / c["novelty"], work / c["relevance"]),
                    f"track nokl, round {nokl['round']}"))  # fmt: skip
    else:
        out.append(("CoEA w/o KL", None, "not run: `coea pco-round --track nokl --no-kl`"))
    nodsie = load_state(Track(work, "nodsie"))
    src = nodsie["current"] if nodsie is not None and nodsie["round"] > 0 else cur
    out.append(
        ("CoEA w/o DSIE", Variant("nodsie", work / src["novelty"], work / src["relevance"], False),
         "no persona or long-term context; items ranked by popularity inside clusters"),
    )  # fmt: skip
    out.append(
        ("CoEA (full)", Variant("main", work / cur["novelty"], work / cur["relevance"]),
         f"main track, round {main['round']}"),
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
    mask = w.periods == test
    row = {int(u): r for r, u in enumerate(users)}
    keep = mask & np.isin(w.users, users)
    if not keep.any():
        return float("nan")
    rows = np.array([row[int(u)] for u in w.users[keep]])
    start = int(w.times[mask].min())
    return metrics.new_interest_rate(
        rows, w.items[keep], w.times[keep], history, w.item_cluster, start, days=7
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
