"""Heatmap of mean user similarity within and between groups (as the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def group_name(group: int, cluster_labels: list[str], attributes: str = "", width: int = 30) -> str:
    """A short readable name: the group number, its main interest cluster's genres (the text
    after the SID token, up to the first ':'), else its typical attributes."""
    text = ""
    if cluster_labels:
        first = str(cluster_labels[0])
        text = first.split("> ", 1)[-1].split(":", 1)[0].strip()
    if not text:
        text = attributes.split(",")[0].strip()
    if len(text) > width:
        text = text[: width - 1].rstrip(" ,") + "…"
    return f"{group} {text}".strip()


def similarity_figure(
    matrix: np.ndarray, sizes: list[int], title: str, names: list[str] | None = None
):
    """A G x G heatmap: cell (a, b) = mean cosine similarity of users in a and b. `sizes` are
    the users of each group the matrix covers (users with a history); `names` label groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    names = names or [str(g) for g in range(n)]
    if len(names) != n or len(sizes) != n:
        raise ValueError(f"{n} groups, but {len(names)} names and {len(sizes)} sizes")
    side = min(12.0, 3.5 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(side + 2.5, side + 1.0))
    finite = matrix[np.isfinite(matrix)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=lo, vmax=hi)
    ticks = [f"{name} (n={s})" for name, s in zip(names, sizes, strict=True)]
    ax.set_xticks(range(n), labels=ticks, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=ticks, fontsize=8)
    ax.set_xlabel("group (n: its users with a history, those the matrix covers)")
    ax.set_ylabel("group")
    ax.set_title(title, fontsize=10)
    if n <= 16:
        mid = (lo + hi) / 2
        for a in range(n):
            for b in range(n):
                if np.isfinite(matrix[a, b]):
                    color = "black" if matrix[a, b] > mid else "white"
                    ax.text(
                        b,
                        a,
                        f"{matrix[a, b]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean cosine similarity")
    fig.tight_layout()
    return fig


def similarity_heatmap(
    matrix: np.ndarray, sizes: list[int], path: Path, title: str, names: list[str] | None = None
) -> None:
    """Write the heatmap of `similarity_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = similarity_figure(matrix, sizes, title, names)
    fig.savefig(path, dpi=110)
    plt.close(fig)
