"""The SID layout and token format, defined once: `build-sids` writes them, everything reads
them from sids/sids.parquet.

A SID is one token per level, ``<a_12><b_7><c_3>``, followed by the dedup level's token
(``<d_0>`` for an item that shares its codes with no other item). An item's interest cluster
is its first `depth` codes (build-sids --cluster-depth; level 1 by default), held in Python as
a tuple of codes, ``(12,)`` <-> ``"<a_12>"`` or ``(12, 7)`` <-> ``"<a_12><b_7>"``, and in
arrays as its index: the codes read as digits in the levels' sizes (`ClusterSpace`).
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
class ClusterSpace:
    """Interest clusters: the first `len(sizes)` SID levels. A cluster's index is its codes
    read as mixed-radix digits, so it never changes when items are added:
    sizes (32, 8): (3, 5) <-> 3 * 8 + 5 = 29."""

    sizes: tuple[int, ...]  # codes per level of the cluster's levels

    @property
    def depth(self) -> int:
        return len(self.sizes)

    @property
    def size(self) -> int:
        """Number of possible clusters (indices 0 .. size - 1), used or not."""
        return int(np.prod(self.sizes))

    def index(self, cluster: Sequence[int]) -> int:
        if len(cluster) != self.depth:
            raise ValueError(f"cluster {tuple(cluster)} does not have {self.depth} level(s)")
        return int(np.ravel_multi_index(tuple(int(c) for c in cluster), self.sizes))

    def code(self, index: int) -> Cluster:
        return tuple(int(c) for c in np.unravel_index(int(index), self.sizes))

    def of_codes(self, codes: np.ndarray) -> np.ndarray:
        """Cluster index per row of SID codes [N, >= depth], int64 [N]."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, codes.shape[-1])
        return np.ravel_multi_index(tuple(codes[:, : self.depth].T), self.sizes).astype(np.int64)


@dataclass(frozen=True)
class SidLayout:
    """L code levels plus the dedup level: their sizes, the method that made them and the
    number of levels that make an interest cluster."""

    sizes: tuple[int, ...]  # codes per level, then the dedup level's size (L + 1 values)
    method: str = ""
    depth: int = 1  # interest cluster = the first `depth` codes

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or len(self.sizes) > len(LETTERS) or min(self.sizes) < 1:
            raise ValueError(f"bad SID layout sizes {self.sizes}")
        if not 1 <= self.depth <= self.levels:
            raise ValueError(f"cluster depth {self.depth} outside 1..{self.levels}")

    @property
    def clusters(self) -> ClusterSpace:
        return ClusterSpace(tuple(self.sizes[: self.depth]))

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
        out = {
            "levels": self.levels,
            "sizes": list(self.sizes),
            "letters": list(LETTERS[: self.levels + 1]),
            "dedup_letter": LETTERS[self.levels],
            "method": self.method,
        }
        # recorded only when not 1, so the versions of level-1 builds stay as they were
        return out | ({"cluster_depth": self.depth} if self.depth != 1 else {})

    @classmethod
    def from_meta(cls, meta: dict) -> SidLayout:
        sizes = tuple(int(k) for k in meta["sizes"])
        if len(sizes) != int(meta["levels"]) + 1:
            raise ValueError(f"{meta['levels']} levels but {len(sizes)} sizes")
        return cls(sizes, str(meta.get("method", "")), int(meta.get("cluster_depth", 1)))


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
    descriptions: dict[int, str] = field(default_factory=dict)  # cluster index -> text
    version: str = ""  # of the full build; models record it (items added keep it)
    revision: int = 0  # additions since the full build

    @property
    def n_items(self) -> int:
        return len(self.codes)

    def cluster_of_items(self) -> np.ndarray:
        """Interest cluster index per item, int64 [N]."""
        return self.layout.clusters.of_codes(self.codes)

    def n_clusters(self) -> int:
        """Possible cluster indices, used or not."""
        return self.layout.clusters.size

    def clusters(self) -> list[Cluster]:
        """Every cluster that holds at least one item, ascending."""
        space = self.layout.clusters
        return [space.code(c) for c in np.unique(self.cluster_of_items())]

    def strings(self) -> list[str]:
        return self.layout.strings(self.codes)
