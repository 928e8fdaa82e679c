"""The stored lists (`recs/`): one layout, shared by the writer (`recommend`) and every reader
(`coea_cli.serving`, `evaluate`, `recommend --user`).

`recs.lmdb` is an LMDB environment (a folder), written once and swapped in whole, never
changed in place:

    b"meta"             JSON object: format, generation (new at every write), created, users, k,
                        track, round, the adapters and model hashes that made the lists, ...
    b"items"            JSON array: the original item id of each dense item id
    b"o:" + user        the user's list in rank order (user: the original user id, UTF-8):
                        K packed 13-byte records of RECORD (item: dense item id int32,
                        score float32, cluster int32, source uint8 indexing SOURCES),
                        little-endian

`recs.parquet` holds the same lists, one row per slot, sorted by user_id then rank: user_id
(int32, dense), user (string, original id), rank (int16, from 1), item_id (int32, dense),
item (string, original id), score (float32), cluster (int32, the item's interest cluster index), source
(string: draw, reserve or fill). The two string columns are dictionary-encoded.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coea_cli import store
from coea_cli.workspace.core import RECS

FORMAT = 1
RECORD = np.dtype([("item", "<i4"), ("score", "<f4"), ("cluster", "<i4"), ("source", "u1")])
SOURCES = ("draw", "reserve", "fill")
META = b"meta"
ITEMS = b"items"
USER = b"o:"
ROWS_PER_GROUP = 1 << 22  # Parquet rows written at a time (bounds the writer's memory)


def user_key(user) -> bytes:
    """The LMDB key of a user's list, from the original user id."""
    return USER + str(user).encode()


@dataclass
class Lists:
    """Many users' lists, columnar: user `users[j]` (dense id, ascending) has the records
    `records[offsets[j]:offsets[j + 1]]` in rank order."""

    users: np.ndarray  # [U] int64
    offsets: np.ndarray  # [U + 1] int64
    records: np.ndarray  # [R] RECORD

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.users) + 1 or self.offsets[-1] != len(self.records):
            raise ValueError("offsets do not fit the users and records")
        if len(self.users) > 1 and not (np.diff(self.users) > 0).all():
            raise ValueError("users must be distinct and ascending")

    @classmethod
    def from_dict(cls, lists: dict) -> Lists:
        """From {dense user: RECORD array}."""
        users = np.array(sorted(lists), dtype=np.int64)
        parts = [np.asarray(lists[int(u)], dtype=RECORD) for u in users]
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        records = np.concatenate(parts) if parts else np.zeros(0, RECORD)
        return cls(users, offsets, records)

    def to_dict(self) -> dict:
        o = self.offsets
        return {int(u): self.records[o[j] : o[j + 1]] for j, u in enumerate(self.users)}

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, n_users: int) -> Lists:
        """Every user 0..n_users-1, those absent with an empty list."""
        counts = np.zeros(n_users, dtype=np.int64)
        counts[self.users] = self.counts()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Lists(np.arange(n_users, dtype=np.int64), offsets, self.records)

    def table(self, user_ids: Sequence[str], item_ids, start: int = 0, stop: int | None = None):
        """recs.parquet rows of users `start:stop` (positions in `users`)."""
        import pyarrow as pa

        stop = len(self.users) if stop is None else stop
        users, o = self.users[start:stop], self.offsets
        rec = self.records[o[start] : o[stop]]
        counts = np.diff(o[start : stop + 1])
        row = np.repeat(np.arange(len(users)), counts)
        rank = np.arange(len(rec)) - np.repeat(o[start:stop] - o[start], counts) + 1
        names = pa.array([str(user_ids[int(u)]) for u in users], pa.string())
        items = item_ids if isinstance(item_ids, pa.Array) else pa.array(item_ids, pa.string())
        sources = pa.array(SOURCES, pa.string())
        return pa.table(
            {
                "user_id": pa.array(np.repeat(users, counts).astype(np.int32)),
                "user": pa.DictionaryArray.from_arrays(pa.array(row.astype(np.int32)), names),
                "rank": pa.array(rank.astype(np.int16)),
                "item_id": pa.array(rec["item"].astype(np.int32)),
                "item": pa.DictionaryArray.from_arrays(pa.array(rec["item"]), items),
                "score": pa.array(rec["score"].astype(np.float32)),
                "cluster": pa.array(rec["cluster"].astype(np.int32)),
                "source": pa.DictionaryArray.from_arrays(
                    pa.array(rec["source"].astype(np.int32)), sources
                ),
            }
        )


def new_meta(**fields) -> dict:
    """The `meta` entry: the given fields plus the format, a fresh generation and the time."""
    return {
        "format": FORMAT,
        "generation": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    }


def write(folder: Path, lists: Lists, user_ids: Sequence[str], item_ids: Sequence[str],
          meta: dict, parquet: bool = True) -> dict:  # fmt: skip
    """Write recs.lmdb (and recs.parquet) into `folder` (a stage's temporary folder).
    `user_ids`/`item_ids`: original ids by dense id. Returns seconds per file."""
    folder = Path(folder)
    seconds = {}
    t = time.time()
    if parquet:
        write_parquet(folder / RECS["table"], lists, user_ids, item_ids)
        seconds["parquet"] = round(time.time() - t, 2)
        t = time.time()
    meta = {**meta, "users": len(lists.users), "k": int(lists.counts().max(initial=0))}
    pairs = lmdb_pairs(lists, user_ids, item_ids, meta)
    store.write_lmdb(folder / RECS["lmdb"], pairs, append=True)
    seconds["lmdb"] = round(time.time() - t, 2)
    return seconds


def write_parquet(path: Path, lists: Lists, user_ids, item_ids) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = pa.array([str(x) for x in item_ids], pa.string())
    with store.atomic_file(path) as tmp:
        writer = None
        start = 0
        counts = lists.counts()
        cum = np.cumsum(counts)
        while start < len(lists.users) or writer is None:
            base = int(cum[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(cum, base + ROWS_PER_GROUP, "right")))
            stop = min(stop, len(lists.users))
            table = lists.table(user_ids, items, start, stop)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            start = stop
        writer.close()


def lmdb_pairs(lists: Lists, user_ids, item_ids, meta: dict) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) in ascending key order: items, meta, then every user's list."""
    yield ITEMS, json.dumps([str(x) for x in item_ids]).encode()
    yield META, json.dumps(meta, sort_keys=True, default=store._json_default).encode()
    keys = [user_key(user_ids[int(u)]) for u in lists.users]
    order = np.argsort(np.array(keys, dtype=bytes), kind="stable") if keys else []
    raw, o = lists.records, lists.offsets
    for j in order:
        yield keys[j], raw[o[j] : o[j + 1]].tobytes()


def read_meta(path: Path) -> dict | None:
    """The `meta` entry of a recs.lmdb folder (None for a store written before it had one)."""
    env = store.open_lmdb(path, command="recommend")
    try:
        with env.begin() as txn:
            raw = txn.get(META)
    finally:
        env.close()
    return None if raw is None else json.loads(raw)


def lists_of_table(table) -> Lists:
    """recs.parquet rows (user_id, rank, item_id, score, cluster, source) as Lists."""
    import pyarrow as pa

    table = table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
    users = table["user_id"].to_numpy().astype(np.int64)
    rec = np.zeros(len(users), dtype=RECORD)
    rec["item"] = table["item_id"].to_numpy()
    rec["score"] = table["score"].to_numpy()
    rec["cluster"] = table["cluster"].to_numpy()
    source = table["source"]
    if pa.types.is_dictionary(source.type):
        source = source.cast(pa.string())
    names = np.array(source.to_pylist(), dtype=object)
    for code, name in enumerate(SOURCES):
        rec["source"][names == name] = code
    starts = np.flatnonzero(np.r_[True, np.diff(users) != 0]) if len(users) else np.zeros(0, int)
    offsets = np.append(starts, len(users)).astype(np.int64)
    return Lists(users[starts], offsets, rec)
