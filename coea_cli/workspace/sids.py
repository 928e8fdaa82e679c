"""The SID layout and token format, defined once: `build-sids` writes them, everything reads
them from sids/sids.parquet.

A SID is one token per level, ``<a_12><b_7><c_3>``, followed by the dedup level's token
(``<d_0>`` for an item that shares its codes with no other item). Level 1 is an item's
interest cluster; a cluster is held in Python as a tuple of codes, ``(12,)`` <-> ``"<a_12>"``.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LETTERS = string.ascii_lowercase
META_KEY = b"coea.sids"
_TOKEN = re.compile(r"<([a-z])_(\d+)>")

Cluster = tuple[int, ...]


def token(level: int, code: int) -> str:
    """Token for ``code`` at 0-based ``level``: ``token(1, 7) == "<b_7>"``."""
    return f"<{LETTERS[level]}_{int(code)}>"


def cluster_token(cluster: Sequence[int]) -> str:
    """``(12, 7)`` -> ``"<a_12><b_7>"``."""
    return "".join(token(level, c) for level, c in enumerate(cluster))


def parse_cluster(text: str) -> Cluster:
    """``"<a_12><b_7>"`` -> ``(12, 7)``; levels must run a, b, c, ... with nothing between."""
    codes = []
    pos = 0
    for level, m in enumerate(_TOKEN.finditer(text)):
        if m.start() != pos or m.group(1) != LETTERS[level]:
            raise ValueError(f"not a cluster token string: {text!r}")
        codes.append(int(m.group(2)))
        pos = m.end()
    if pos != len(text) or not codes:
        raise ValueError(f"not a cluster token string: {text!r}")
    return tuple(codes)


@dataclass(frozen=True)
class SidLayout:
    """L code levels plus the dedup level: their sizes and the method that made them."""

    sizes: tuple[int, ...]  # codes per level, then the dedup level's size (L + 1 values)
    method: str = ""

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or len(self.sizes) > len(LETTERS) or min(self.sizes) < 1:
            raise ValueError(f"bad SID layout sizes {self.sizes}")

    @property
    def levels(self) -> int:
        """Code levels before the dedup level."""
        return len(self.sizes) - 1

    def tokens(self) -> list[str]:
        """Every token of every level (the dedup level included), level by level."""
        return [token(level, c) for level, k in enumerate(self.sizes) for c in range(k)]

    def strings(self, codes: np.ndarray) -> list[str]:
        """SID string per row of codes [N, L+1] (levels then dedup)."""
        heads = [[token(level, c) for c in range(k)] for level, k in enumerate(self.sizes)]
        return ["".join(heads[lv][c] for lv, c in enumerate(row)) for row in codes.tolist()]

    def meta(self) -> dict:
        return {
            "levels": self.levels,
            "sizes": list(self.sizes),
            "letters": list(LETTERS[: self.levels + 1]),
            "dedup_letter": LETTERS[self.levels],
            "method": self.method,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> SidLayout:
        sizes = tuple(int(k) for k in meta["sizes"])
        if len(sizes) != int(meta["levels"]) + 1:
            raise ValueError(f"{meta['levels']} levels but {len(sizes)} sizes")
        return cls(sizes, str(meta.get("method", "")))


def sids_table(codes: np.ndarray, layout: SidLayout, version: str | None = None, revision: int = 0):
    """sids.parquet: item_id, c1..cL, dup, sid. The schema metadata holds the layout, the SID
    version (set by a full build: `version_of` its codes; kept when items are added, since no
    existing SID changes) and the revision (items added since that build)."""
    import pyarrow as pa

    cols = {"item_id": pa.array(np.arange(len(codes), dtype=np.int32))}
    for level in range(layout.levels):
        cols[f"c{level + 1}"] = pa.array(codes[:, level].astype(np.int32))
    cols["dup"] = pa.array(codes[:, layout.levels].astype(np.int32))
    cols["sid"] = pa.array(layout.strings(codes), pa.string())
    meta = {**layout.meta(), "version": version or version_of(codes, layout), "revision": revision}
    return pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta)})


def version_of(codes: np.ndarray, layout: SidLayout) -> str:
    """The SID version: a hash of every item's codes and the layout. Models record it."""
    h = hashlib.sha256(json.dumps(layout.meta(), sort_keys=True).encode())
    h.update(np.ascontiguousarray(codes, dtype="<i8").tobytes())
    return h.hexdigest()[:16]


@dataclass
class Sids:
    """Every item's SID codes (item order) with their layout and cluster descriptions."""

    codes: np.ndarray  # [N, L+1] int64: levels then dup
    layout: SidLayout
    descriptions: dict[int, str] = field(default_factory=dict)  # level-1 cluster -> text
    version: str = ""  # of the full build; models record it (items added keep it)
    revision: int = 0  # additions since the full build

    @property
    def n_items(self) -> int:
        return len(self.codes)

    def cluster_of_items(self) -> np.ndarray:
        """Interest cluster (level-1 code) per item, int64 [N]."""
        return self.codes[:, 0]

    def n_clusters(self) -> int:
        return self.layout.sizes[0]

    def clusters(self) -> list[Cluster]:
        """Every level-1 cluster that holds at least one item, ascending."""
        return [(int(c),) for c in np.unique(self.codes[:, 0])]

    def strings(self) -> list[str]:
        return self.layout.strings(self.codes)
