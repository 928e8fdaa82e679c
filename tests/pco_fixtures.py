"""A tiny workspace ready for `pco-round`, built without the slower upstream commands.

The SID and group artifacts are written directly in their documented schemas (genre-derived
codes with the SID layout in the metadata, groups by user id), which isolates the PCO loop from
RQ-VAE and persona generation.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from coea_cli import store
from coea_cli.workspace import SidLayout, cluster_token, sids_table
from tests.helpers import coea
from tests.synth import GENRES, make_log

TINY = [
    "--backbone-hidden", 32, "--backbone-layers", 1, "--backbone-steps", 4,
    "--round0-epochs", 1, "--epochs", 1, "--lora-r", 4, "--n", 4, "--batch-size", 32,
]  # fmt: skip
# The real upstream commands after `tiny_workspace` (with its groups/ removed) for recommend.
UPSTREAM = (
    ("tokenize-items",),
    ("profile-groups", "--groups", 3),
    ("train-dsie", "--epochs", 1, "--hidden", 32, "--heads", 2),
    ("train-dsie", "--cutoff", 1, "--epochs", 1, "--hidden", 32, "--heads", 2),
)


def tiny_workspace(tmp, periods: str = "0.5,0.25,0.25", seed: int = 0, depth: int = 1):
    paths = make_log(tmp / "raw", n_users=30, n_items=40, per_user=24, seed=seed)
    work = tmp / "work"
    r = coea(
        "prepare", "--source", paths["interactions"], "--format", "table",
        "--items", paths["items"], "--users", paths["users"], "--min-user", 1, "--min-item", 1,
        "--periods", periods, "--work", work,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    write_sids(work, seed, depth)
    write_groups(work)
    write_item_texts(work)
    return work


def write_item_texts(work) -> None:
    """items/item_text.parquet as tokenize-items writes it (the scratch backbone reads it)."""
    items = store.read_parquet(work / "data" / "items.parquet").sort_by("item_id")
    texts = [f"{t} ({', '.join(c or [])})" for t, c in zip(
        items["title"].to_pylist(), items["categories"].to_pylist(), strict=True)]  # fmt: skip
    (work / "items").mkdir(parents=True, exist_ok=True)
    store.write_parquet(
        work / "items" / "item_text.parquet",
        pa.table({"item_id": items["item_id"], "text": pa.array(texts, pa.string())}),
    )


def write_sids(work, seed: int = 0, depth: int = 1) -> None:
    """Genre codes at level 1, random at level 2; interest clusters of `depth` levels."""
    items = store.read_parquet(work / "data" / "items.parquet")
    rng = np.random.default_rng(seed)
    n = items.num_rows
    c1 = np.array([GENRES.index(c[0]) if c else 0 for c in items["categories"].to_pylist()])
    c2 = rng.integers(0, 4, n)
    c3 = np.arange(n) % 8
    codes = np.stack([c1, c2, c3, np.zeros(n, dtype=np.int64)], axis=1)
    folder = work / "sids"
    folder.mkdir(parents=True, exist_ok=True)
    layout = SidLayout((len(GENRES), 4, 8, 1), depth=depth)
    store.write_parquet(folder / "sids.parquet", sids_table(codes, layout))
    labels = layout.clusters.of_codes(codes)
    present = sorted(set(labels.tolist()))
    codes_of = [layout.clusters.code(c) for c in present]
    store.write_parquet(
        folder / "clusters.parquet",
        pa.table(
            {
                "cluster": pa.array(present, pa.int32()),
                "size": pa.array([int((labels == c).sum()) for c in present], pa.int32()),
                "description": [
                    f"{GENRES[c[0]]} films" + (f", kind {c[1]}" if depth > 1 else "")
                    for c in codes_of
                ],
                "prefix": [cluster_token(c) for c in codes_of],
            }
        ),
    )


def write_groups(work, n_groups: int = 3) -> None:
    users = store.read_parquet(work / "data" / "users.parquet")
    ids = users["user_id"].to_numpy()
    folder = work / "groups"
    folder.mkdir(parents=True, exist_ok=True)
    store.write_parquet(
        folder / "groups.parquet",
        pa.table({"user_id": pa.array(ids), "group": pa.array((ids % n_groups).astype(np.int32))}),
    )
    store.write_parquet(
        folder / "personas.parquet",
        pa.table(
            {
                "group": pa.array(np.arange(n_groups, dtype=np.int32)),
                "persona": [f"Viewers of kind {g} who like films" for g in range(n_groups)],
                "source": ["template"] * n_groups,
            }
        ),
    )
