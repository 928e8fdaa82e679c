"""The evaluation report: JSON-clean values, the Markdown tables."""

from __future__ import annotations

import math

from coea_cli.evaluation.table import HEADLINE

COLUMNS = [
    ("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), ("precision@10", "P@10"),
    ("novel_hr@10", "novel HR@10"), ("unexpectedness@10", "Unexp@10"),
    ("self_info@10", "SelfInfo@10"), ("hist_dist@10", "HistDist@10"), ("ild@10", "ILD@10"),
    ("coverage@10", "Cov@10"), ("gini@10", "Gini@10"), ("serendipity@10", "Seren@10"),
    ("serendipity_rank@10", "SerenRank@10"), ("share_draw@10", "Draw@10"),
    ("share_reserve@10", "Reserve@10"), ("share_fill@10", "Fill@10"),
]  # fmt: skip


def clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def markdown(report: dict) -> str:
    lines = [
        "# CoEA evaluation",
        "",
        report["protocol"],
        "",
        f"Test period {report['test_period']}, {report['users']} users with held-out interactions.",
        "",
        *markdown_rows(report["systems"]),
    ]
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


def markdown_rows(rows: dict) -> list[str]:
    """The systems table: one row per system, the COLUMNS metrics."""
    lines = [
        "| system | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, row in rows.items():
        cells = [_fmt(row.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


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
