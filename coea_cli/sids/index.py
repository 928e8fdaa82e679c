"""LMDB index of SIDs.

Keys:
    b"sid:" + sid string          -> item id (ASCII digits)
    b"item:" + str(item id)       -> sid string
    b"cluster:" + prefix string   -> item ids, little-endian int32 array
                                     (prefixes of 1..L levels: "<a_12>", "<a_12><b_7>", ...)
    b"meta"                       -> JSON: levels, sizes, letters
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from coea_cli import store
from coea_cli.sids import cluster_token


def index_records(
    item_ids: np.ndarray, codes: np.ndarray, sids: list[str], meta: dict
) -> Iterator[tuple[bytes, bytes]]:
    """All (key, value) pairs of the index; codes [N, L+1] (levels then dup)."""
    levels = meta["levels"]
    for i, s in zip(item_ids.tolist(), sids, strict=True):
        yield b"sid:" + s.encode(), str(i).encode()
        yield b"item:" + str(i).encode(), s.encode()
    for depth in range(1, levels + 1):
        prefix = codes[:, :depth]
        order = np.lexsort(prefix.T[::-1])
        keys = prefix[order]
        cut = np.r_[0, np.flatnonzero((np.diff(keys, axis=0) != 0).any(1)) + 1, len(order)]
        for s, e in itertools.pairwise(cut):
            members = np.sort(item_ids[order[s:e]]).astype("<i4")
            yield b"cluster:" + cluster_token(keys[s]).encode(), members.tobytes()
    yield b"meta", json.dumps(meta).encode()


def write_index(path: Path, item_ids, codes, sids, meta) -> int:
    n = len(item_ids)
    size = max(1 << 26, 64 * n * (meta["levels"] + 4) + (1 << 24))
    return store.write_lmdb(path, index_records(np.asarray(item_ids), codes, sids, meta), size)


class SidIndex:
    """Read-only lookups in sid_index.lmdb."""

    def __init__(self, path: Path):
        self.env = store.open_lmdb(path, "build-sids")

    def close(self) -> None:
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key)

    def item_of(self, sid: str) -> int | None:
        v = self._get(b"sid:" + sid.encode())
        return None if v is None else int(v)

    def sid_of(self, item_id: int) -> str | None:
        v = self._get(b"item:" + str(int(item_id)).encode())
        return None if v is None else v.decode()

    def items_in(self, prefix: str | tuple[int, ...]) -> np.ndarray:
        """Item ids under a cluster prefix ("<a_12>" or (12,)); empty when unknown."""
        key = prefix if isinstance(prefix, str) else cluster_token(prefix)
        v = self._get(b"cluster:" + key.encode())
        return np.zeros(0, np.int32) if v is None else np.frombuffer(v, dtype="<i4").copy()

    def meta(self) -> dict:
        return json.loads(self._get(b"meta"))
