"""Collaborative Semantic IDs (`coea build-sids`) and helpers to read them.

A SID is one token per level, ``<a_12><b_7><c_3>``, followed by the dedup level's token
(``<d_0>`` for an item that shares its codes with no other item). Level 1 (optionally 1+2)
is an item's interest cluster.

    codes, meta = load_sids(work)          # [N, L+1] int32 (levels + dup), item order
    cluster_of_items(work)                 # level-1 cluster per item
    cluster_of_items(work, levels=2)       # c1 * K2 + c2
    cluster_token((12, 7))                 # "<a_12><b_7>"
    load_cluster_descriptions(work)        # {12: "Comedy, Romance: ...", ...}
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coea_cli.errors import BadInput, MissingArtifact

LETTERS = string.ascii_lowercase
META_KEY = b"coea.sids"


def sid_paths(work: Path) -> dict:
    d = Path(work) / "sids"
    return {
        "dir": d,
        "sids": d / "sids.parquet",
        "model": d / "rqvae.safetensors",
        "index": d / "sid_index.lmdb",
        "clusters": d / "clusters.parquet",
        "report": d / "report.json",
    }


def token(level: int, code: int) -> str:
    """``token(1, 7) == "<b_7>"`` (0-based level)."""
    return f"<{LETTERS[level]}_{int(code)}>"


def cluster_token(cluster: Sequence[int]) -> str:
    """``(12, 7)`` -> ``"<a_12><b_7>"``."""
    return "".join(token(level, c) for level, c in enumerate(cluster))


def sid_strings(codes: np.ndarray) -> list[str]:
    """SID string per row of codes [N, L+1] (levels then dedup)."""
    heads = [[token(level, c) for c in range(int(codes[:, level].max()) + 1)]
             for level in range(codes.shape[1])]  # fmt: skip
    return ["".join(heads[level][c] for level, c in enumerate(row)) for row in codes.tolist()]


def load_sids(work: Path) -> tuple[np.ndarray, dict]:
    """SID codes in item order -> (codes int32 [N, L+1]: c1..cL then dup, meta).

    meta: levels (L), sizes (K per level plus the dedup level's size), letters, method.
    A file without the metadata `build-sids` writes gets sizes = largest code + 1.
    """
    import pyarrow.parquet as pq

    path = sid_paths(work)["sids"]
    if not path.exists():
        raise MissingArtifact(path, "build-sids")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is not None:
        meta = json.loads(raw)
    else:  # written by other tools: infer the layout from the columns
        levels = sum(1 for c in table.column_names if c[:1] == "c" and c[1:].isdigit())
        if not levels or "dup" not in table.column_names or "item_id" not in table.column_names:
            raise BadInput(f"{path}: expected columns item_id, c1..cL and dup")
        names = [f"c{i + 1}" for i in range(levels)] + ["dup"]
        sizes = [int(table[c].to_numpy().max()) + 1 for c in names]
        meta = {"levels": levels, "sizes": sizes, "letters": list(LETTERS[: levels + 1])}
    names = [f"c{i + 1}" for i in range(meta["levels"])] + ["dup"]
    ids = table["item_id"].to_numpy()
    codes = np.stack([table[c].to_numpy() for c in names], axis=1).astype(np.int32)
    out = np.empty_like(codes)
    out[ids] = codes
    return out, meta


def cluster_of_items(work: Path, levels: int = 1) -> np.ndarray:
    """Interest cluster per item: c1 (levels=1) or c1 * K2 + c2 (levels=2), and so on."""
    codes, meta = load_sids(work)
    if not 1 <= levels <= meta["levels"]:
        raise BadInput(f"cluster levels must be 1..{meta['levels']} (got {levels})")
    out = np.zeros(len(codes), dtype=np.int64)
    for level in range(levels):
        out = out * meta["sizes"][level] + codes[:, level]
    return out


def load_cluster_descriptions(work: Path) -> dict[int, str]:
    """Level-1 cluster id -> short text description (top genres and popular titles)."""
    import pyarrow.parquet as pq

    path = sid_paths(work)["clusters"]
    if not path.exists():
        raise MissingArtifact(path, "build-sids")
    t = pq.read_table(path, columns=["cluster", "description"])
    return dict(zip(t["cluster"].to_pylist(), t["description"].to_pylist(), strict=True))
