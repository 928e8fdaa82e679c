"""Figures: metrics across PCO rounds (with and without KL) and the quality-novelty trade-off."""

from __future__ import annotations

from pathlib import Path

from coea_cli.workspace import Workspace, read_json


def round_curves(ws: Workspace) -> dict:
    """Per track, per round: the evaluation-only test-period figures of each round's
    metrics.json (a branch track starts from the shared round 0)."""
    out = {}
    for name in ws.tracks():
        rows = []
        for entry in ws.track(name).require_state()["history"]:
            m = read_json(ws.root / entry["metrics"], "pco-round")
            t = m.get("test", {})
            rows.append(
                {
                    "round": m["round"],
                    "accepted": m.get("accepted", True),
                    "quality": t.get("test_first_novel_hr@5"),
                    "quality_any": t.get("test_novelty_hr@5"),
                    "novelty": t.get("test_cluster_self_info"),
                    "coverage": t.get("test_cluster_coverage"),
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


def rounds_png(curves: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    labels = {"main": "CoEA (SFT + KL)", "nokl": "w/o KL"}
    for name, rows in curves.items():
        x = [r["round"] for r in rows]
        for ax, key in zip(axes, ("quality", "novelty"), strict=True):
            y = [r[key] if r[key] is not None else float("nan") for r in rows]
            ax.plot(x, y, marker="o", label=labels.get(name, name))
    axes[0].set_title("Quality: HR@5 of the first new cluster (test)", fontsize=10)
    axes[1].set_title("Novelty: self-information of proposed clusters", fontsize=10)
    for ax in axes:
        ax.set_xlabel("fine-tuning round")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tradeoff_png(
    rows: dict, path: Path, quality: str = "hr@10", novelty: str = "unexpectedness@10"
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, row in rows.items():
        x, y = row.get(novelty), row.get(quality)
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(novelty)
    ax.set_ylabel(quality)
    ax.set_title("Quality-novelty trade-off (test period)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
