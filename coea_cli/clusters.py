"""Interest-cluster views of a history, shared by serving keys (DSIE) and LLM contexts (PCO)."""

from __future__ import annotations

import numpy as np


def distinct_last(clusters) -> list[int]:
    """Distinct values ordered by their last occurrence (most recent last).

    Example: [3, 1, 3, 2, 1] -> [3, 2, 1]
    """
    rev = np.asarray(clusters, dtype=np.int64)[::-1]
    values, first = np.unique(rev, return_index=True)
    return values[np.argsort(first)][::-1].tolist()


def recent_distinct(clusters, n: int) -> list[int]:
    """The last n distinct values, most recent last (none for n <= 0).

    Example: [3, 1, 3, 2, 1], n=2 -> [2, 1]
    """
    order = distinct_last(clusters)
    return order[max(0, len(order) - n) :] if n > 0 else []
