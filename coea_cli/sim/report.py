"""The simulation's outputs: tables, the mean and 95% interval over seeds per period, paired
comparisons of the final totals, and the curves."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from coea_cli import metrics, store
from coea_cli.evaluation.report import clean

CURVES = (
    ("cum_accepted_per_user", "accepted items per user (cumulative)"),
    ("cum_exploration", "users who explored a new cluster (cumulative)"),
    ("precision", "oracle precision@K"),
    ("coverage", "coverage of accepted items"),
    ("gini", "Gini of accepted items"),
    ("homogenization", "homogenization (mean Jaccard)"),
)
PAIRS = (("CoEA with PCO", "CoEA frozen at round 0"), ("CoEA with PCO", "DSIE unexplored"),
         ("CoEA with PCO", "Popularity unexplored"), ("CoEA w/o KL", "CoEA with PCO"))  # fmt: skip


def write(out, tmp, results: list[dict], jobs, o, anchor: dict, seconds: float) -> None:
    rows = [r for res in results for r in res["rows"]]
    store.write_parquet(out.file("periods", tmp), pa.Table.from_pylist(rows))
    acc = [
        (job.system.label, job.seed, *a) for job, res in zip(jobs, results, strict=True)
        for a in res["accepted"]
    ]  # fmt: skip
    names = ("system", "seed", "period", "user_id", "item_id", "rank")
    store.write_parquet(
        out.file("accepted", tmp),
        pa.table({n: [a[j] for a in acc] for j, n in enumerate(names)}),
    )
    per_user = {
        (job.system.label, job.seed): res["users"] for job, res in zip(jobs, results, strict=True)
    }
    summary = {
        "settings": {
            "periods": o.periods, "seeds": o.seeds, "k": o.k, "users": anchor["users"],
            "fatigue": o.fatigue, "fatigue_window": o.fatigue_window, "factors": o.factors,
            "calibration": anchor,
        },
        "curves": curves(rows),
        "final": final(rows),
        "comparisons": comparisons(per_user, sorted({j.seed for j in jobs})),
        "seconds": {"total": round(seconds, 1),
                    "per_job": {f"{j.system.key}-seed{j.seed}": r["seconds"]
                                for j, r in zip(jobs, results, strict=True)}},
    }  # fmt: skip
    store.write_json(out.file("report", tmp), clean(summary))
    out.file("markdown", tmp).write_text(markdown(summary), encoding="utf-8")
    plot(summary, out.file("curves", tmp))


def _interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval over seeds."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan"), float("nan")
    from scipy.stats import t

    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def curves(rows: list[dict]) -> dict:
    """{system: {metric: [(period, mean, lo, hi), ...]}} over seeds."""
    out: dict = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        periods = sorted({r["period"] for r in mine})
        out[system] = {
            key: [(p, *_interval([r[key] for r in mine if r["period"] == p])) for p in periods]
            for key, _ in (*CURVES, ("accepted_per_user", ""), ("exploration", ""))
        }
    return out


def final(rows: list[dict]) -> dict:
    """The last period's cumulative figures, mean and interval over seeds."""
    last = max(r["period"] for r in rows)
    out = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system and r["period"] == last]
        out[system] = {
            key: _interval([r[key] for r in mine])
            for key in ("cum_accepted_per_user", "cum_exploration", "cum_coverage",
                        "precision", "gini", "homogenization")
        }  # fmt: skip
    return out


def comparisons(per_user: dict, seeds: list[int]) -> dict:
    """Final totals of two systems, paired over (seed, user): the ratio of means with a 95%
    bootstrap interval; better/worse only when it excludes 1."""
    out = {}
    systems = {s for s, _ in per_user}
    for a, b in PAIRS:
        if a not in systems or b not in systems:
            continue
        row = {}
        for key, label in (("accepted", "accepted per user"), ("explored", "exploration")):
            x = np.concatenate([np.asarray(per_user[(a, s)][key], float) for s in seeds])
            y = np.concatenate([np.asarray(per_user[(b, s)][key], float) for s in seeds])
            point, lo, hi = metrics.ratio_interval(x, y)
            verdict = "better" if lo > 1 else "worse" if hi < 1 else "no difference shown"
            row[label] = {"ratio": point, "ci95": [lo, hi], "verdict": verdict}
        out[f"{a} vs {b}"] = row
    return out


def _f(v, digits: int = 3) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def markdown(s: dict) -> str:
    cfg = s["settings"]
    cal = cfg["calibration"]
    lines = [
        "# CoEA closed-loop simulation",
        "",
        f"{cfg['users']} users, {cfg['periods']} simulated periods, K = {cfg['k']}, "
        f"{cfg['seeds']} seeds; fatigue {cfg['fatigue']} over the last {cfg['fatigue_window']} "
        f"periods; oracle: implicit ALS ({cfg['factors']} factors) on the complete real log, "
        f"DSIE's top {cfg['k']} at the start accepted at {_f(cal['target'])} (DSIE's real "
        f"precision@{cfg['k']} on the test period: {_f(cal['dsie_real_precision'])}).",
        "",
        "Last period, cumulative where marked; mean [95% interval over seeds]:",
        "",
        "| system | accepted/user (cum) | exploration (cum) | coverage (cum) | precision@K | "
        "Gini | homogenization |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("cum_accepted_per_user", "cum_exploration", "cum_coverage", "precision", "gini",
            "homogenization")  # fmt: skip
    for system, row in s["final"].items():
        cells = [f"{_f(row[k][0])} [{_f(row[k][1])}, {_f(row[k][2])}]" for k in keys]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    if s["comparisons"]:
        lines += ["", "Paired over (seed, user), ratio of means [95% bootstrap interval]:", "",
                  "| comparison | accepted per user | exploration |", "|---|---|---|"]  # fmt: skip
        for name, row in s["comparisons"].items():
            cells = [
                f"{_f(c['ratio'])} [{_f(c['ci95'][0])}, {_f(c['ci95'][1])}] {c['verdict']}"
                for c in row.values()
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time {s['seconds']['total']} s."]
    return "\n".join(lines) + "\n"


def plot(s: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, label) in zip(axes.ravel(), CURVES, strict=True):
        for system, series in s["curves"].items():
            pts = series[key]
            x = [p for p, *_ in pts]
            mean = [m if m is not None else np.nan for _, m, _, _ in pts]
            lo = [v if v is not None else np.nan for _, _, v, _ in pts]
            hi = [v if v is not None else np.nan for _, _, _, v in pts]
            (line,) = ax.plot(x, mean, marker="o", label=system)
            ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("simulated period")
        ax.set_ylabel(label.split(" (")[0])
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Closed-loop simulation: mean and 95% interval over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
