"""Heatmap of mean user similarity within and between groups (as the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def similarity_heatmap(matrix: np.ndarray, sizes: list[int], path: Path, title: str) -> None:
    """Write a G x G heatmap PNG: cell (a, b) = mean cosine similarity of users in a and b."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    side = min(12.0, 3.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    finite = matrix[np.isfinite(matrix)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=lo, vmax=hi)
    ticks = [f"{g} (n={s})" for g, s in enumerate(sizes)]
    ax.set_xticks(range(n), labels=ticks, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=ticks, fontsize=8)
    ax.set_xlabel("group")
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
