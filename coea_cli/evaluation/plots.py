"""Figures: metrics across PCO rounds (with and without KL) and the quality-novelty trade-off.

Each figure is built by a `*_figure` function (tests read its axes) and written by the
matching `*_png`. Proportions carry 95% Wilson intervals from their number of users.
"""

from __future__ import annotations

import math
from pathlib import Path

from coea_cli.workspace import Workspace, read_json

K = 10  # the cut-off of the evaluation table; the round curves use the same

LABELS = {
    "hr@10": "HR@10: users with a held-out item in their top 10",
    "ndcg@10": "NDCG@10",
    "precision@10": "Precision@10",
    "novel_hr@10": "novel HR@10: users with a held-out item of a new cluster in their top 10",
    "unexpectedness@10": "Unexpectedness@10: share of the top 10 from clusters new to the user",
    "self_info@10": "Self-information@10 (bits): how rarely the top 10 were seen before",
    "serendipity@10": "Serendipity@10: share of the top 10 both relevant and unexpected",
    "coverage@10": "Coverage@10: share of the catalogue recommended",
}
TRACKS = {
    "main": "CoEA (SFT + KL)", "nokl": "w/o KL", "nodsie": "w/o DSIE",
    "nopersona": "w/o group identity",
}  # fmt: skip


def wilson(p: float | None, n: int | None, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p observed over n users ((nan, nan) when
    either is missing)."""
    if p is None or n is None or n <= 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def round_curves(ws: Workspace) -> dict:
    """Per track, per round: the evaluation-only test-period figures of each round's
    metrics.json (a branch track starts from the shared round 0), at the table's cut-off
    (@10) where the round recorded it, else at @5 (older rounds); `k` says which."""
    out = {}
    for name in ws.tracks():
        rows = []
        for entry in ws.track(name).require_state()["history"]:
            m = read_json(ws.root / entry["metrics"], "pco-round")
            t = m.get("test", {})
            k = K if f"test_first_novel_hr@{K}" in t else 5
            suffix = "" if k == 5 else f"@{k}"
            rows.append(
                {
                    "round": m["round"],
                    "accepted": m.get("accepted", True),
                    "k": k,
                    "users": t.get("test_users"),
                    "quality": t.get(f"test_first_novel_hr@{k}"),
                    "quality_any": t.get(f"test_novelty_hr@{k}"),
                    "novelty": t.get(f"test_cluster_self_info{suffix}"),
                    "coverage": t.get(f"test_cluster_coverage{suffix}"),
                }
            )
        if rows:
            out[name] = rows
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rounds_figure(curves: dict):
    """Quality (with Wilson intervals) and novelty per round; integer round ticks; rejected
    (rolled back) rounds marked with a red cross."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ks = {r["k"] for rows in curves.values() for r in rows} or {K}
    k = max(ks)
    rejected_shown = False
    for name, rows in curves.items():
        x = [r["round"] for r in rows]
        label = TRACKS.get(name, name)
        q = [r["quality"] if r["quality"] is not None else float("nan") for r in rows]
        lo_hi = [wilson(r["quality"], r["users"]) for r in rows]
        err = [
            [max(0.0, v - lo) if math.isfinite(lo) else 0.0 for v, (lo, _) in zip(q, lo_hi, strict=True)],
            [max(0.0, hi - v) if math.isfinite(hi) else 0.0 for v, (_, hi) in zip(q, lo_hi, strict=True)],
        ]  # fmt: skip
        line = axes[0].errorbar(x, q, yerr=err, marker="o", capsize=3, label=label)
        nov = [r["novelty"] if r["novelty"] is not None else float("nan") for r in rows]
        axes[1].plot(x, nov, marker="o", label=label, color=line[0].get_color())
        for r, qv, nv in zip(rows, q, nov, strict=True):
            if r["accepted"]:
                continue
            tag = None if rejected_shown else "rejected round (rolled back)"
            rejected_shown = True
            for ax, v in ((axes[0], qv), (axes[1], nv)):
                ax.scatter([r["round"]], [v], marker="x", s=90, color="red", zorder=5, label=tag)
                tag = None
    axes[0].set_title(f"Quality: the Novelty LLM's top {k} clusters (test period)", fontsize=10)
    axes[0].set_ylabel(f"first new cluster HR@{k} (95% interval)")
    axes[1].set_title(f"Novelty of the top {k} proposed clusters (test period)", fontsize=10)
    axes[1].set_ylabel("self-information (bits)")
    for ax in axes:
        ax.set_xlabel("fine-tuning round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rounds_png(curves: dict, path: Path) -> None:
    plt = _plt()
    fig = rounds_figure(curves)
    fig.savefig(path, dpi=110)
    plt.close(fig)


MARKERS = "osD^v<>PXh*"


def tradeoff_figure(rows: dict, quality: str = "hr@10", novelty: str = "unexpectedness@10"):
    """One point per system (its own colour and marker, named in the legend beside the plot,
    so no label overlaps another), quality with its 95% Wilson interval over the users."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 5))
    cmap = plt.get_cmap("tab10")
    j = 0
    for name, row in rows.items():
        x, y = row.get(novelty), row.get(quality)
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        lo, hi = wilson(y, row.get("users")) if quality.startswith("hr@") else (y, y)
        yerr = [[y - lo], [hi - y]] if math.isfinite(lo) else None
        ax.errorbar([x], [y], yerr=yerr, fmt=MARKERS[j % len(MARKERS)], color=cmap(j % 10),
                    markersize=7, capsize=3, label=name)  # fmt: skip
        j += 1
    ax.set_xlabel(LABELS.get(novelty, novelty), fontsize=9)
    ax.set_ylabel(LABELS.get(quality, quality), fontsize=9)
    ax.set_title("Quality-novelty trade-off (test period; bars: 95% intervals)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def tradeoff_png(
    rows: dict, path: Path, quality: str = "hr@10", novelty: str = "unexpectedness@10"
) -> None:
    plt = _plt()
    fig = tradeoff_figure(rows, quality, novelty)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
