"""Small synthetic logs with structure, for tests of every command.

Users belong to latent taste groups that correlate with their attributes; each group prefers
a few genres and drifts to a new genre over time, so there are novel transitions to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Western"]
WORDS = ["Night", "River", "Star", "Shadow", "King", "Love", "Storm", "Ghost", "City", "Dream"]


def make_log(
    folder: Path,
    n_users: int = 60,
    n_items: int = 80,
    per_user: int = 25,
    n_groups: int = 4,
    seed: int = 0,
) -> dict:
    """Write interactions.csv, items.csv and users.csv into `folder`; return their paths."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g_of_item = rng.integers(0, len(GENRES), n_items)
    second = rng.integers(0, len(GENRES), n_items)
    cats = [
        "|".join(sorted({GENRES[a], GENRES[b]})) if rng.random() < 0.4 else GENRES[a]
        for a, b in zip(g_of_item, second, strict=True)
    ]
    titles = [f"{WORDS[rng.integers(len(WORDS))]} {GENRES[g]} {k}" for k, g in enumerate(g_of_item)]
    items = pa.table(
        {
            "item": [f"i{k}" for k in range(n_items)],
            "title": titles,
            "year": rng.integers(1950, 2000, n_items),
            "categories": cats,
        }
    )
    group = rng.integers(0, n_groups, n_users)
    likes = [rng.choice(len(GENRES), 2, replace=False) for _ in range(n_groups)]
    later = [rng.integers(len(GENRES)) for _ in range(n_groups)]
    users = pa.table(
        {
            "user": [f"u{k}" for k in range(n_users)],
            "age": (18 + 10 * group + rng.integers(0, 8, n_users)).astype(np.int64),
            "gender": np.where(group % 2 == 0, "M", "F"),
            "occupation": [["student", "engineer", "artist", "doctor"][g % 4] for g in group],
        }
    )
    rows_u, rows_i, rows_t, rows_r = [], [], [], []
    t0 = 1_000_000_000
    for u in range(n_users):
        g = group[u]
        start = t0 + rng.integers(0, 50_000)
        for step in range(per_user):
            frac = step / per_user
            pool = list(likes[g]) + ([later[g]] if frac > 0.6 else [])
            genre = pool[rng.integers(len(pool))] if rng.random() < 0.85 else rng.integers(8)
            cand = np.flatnonzero(g_of_item == genre)
            item = rng.choice(cand) if len(cand) else rng.integers(n_items)
            rows_u.append(f"u{u}")
            rows_i.append(f"i{item}")
            rows_t.append(int(start + step * 3600 + rng.integers(0, 600)))
            rows_r.append(float(rng.integers(1, 6)))
    inter = pa.table({"user": rows_u, "item": rows_i, "timestamp": rows_t, "rating": rows_r})
    paths = {
        "interactions": folder / "interactions.csv",
        "items": folder / "items.csv",
        "users": folder / "users.csv",
    }
    pacsv.write_csv(inter, paths["interactions"])
    pacsv.write_csv(items, paths["items"])
    pacsv.write_csv(users, paths["users"])
    return paths
