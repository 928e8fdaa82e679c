"""Reading the stored lists from a serving process.

    from coea_cli.serving import Reader

    reader = Reader("coea-work")          # a workspace, its recs/ folder or recs/recs.lmdb
    lst = reader.get("196")               # one user by original id; None if unknown
    lst.items, lst.scores, lst.clusters, lst.sources   # original item ids, in rank order
    lst.version["round"], lst.version["generation"]    # what produced the list
    reader.get_many(["196", "22"])        # [UserList | None, ...] in the order asked
    reader.table(["196", "22"])           # one pyarrow table: user, rank, item, score, ...

The reader opens `recs.lmdb` once and keeps one read transaction on it: the store is never
changed in place, so a lookup is one B-tree search in memory-mapped pages, with no file
opened and nothing copied but the user's record bytes. The fields of a list are decoded when
first read.

A newer version: `recommend` builds a new `recs/` and swaps the folder in whole. At most every
`check_every` seconds (default 1) a lookup compares the store's file identity (inode, size,
modification time) with the one open; when it changed, the reader opens the new store, reads
its `meta` and serves it from that lookup on (`refresh()` checks at once). Lists already
returned keep their bytes and their version. While a swap is half done the old store keeps
serving.

In memory: `Reader(path, preload=True)` reads every list into a dict once per version
(about 0.7 GB and a few seconds per million users of 20 items, shared by the process's
readers), so a lookup is one dict probe and does not touch the store; the lookup that
notices a newer version loads it before answering.

One Reader per thread (each holds its own read transaction; the readers of a process share
one open environment per version); open readers after a fork, not before. `close()` (or
`with Reader(...) as r:`) releases the transaction, and the map with the last reader.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path

import lmdb
import numpy as np

from coea_cli import store
from coea_cli.errors import ArtifactError, MissingArtifact
from coea_cli.workspace.recs import ITEMS, META, RECORD, SOURCES, USER

_SIZE = RECORD.itemsize
_monotonic = time.monotonic
_PREFIX = USER.decode()
_STRUCTS: dict[int, struct.Struct] = {}


def _struct(n: int) -> struct.Struct:
    s = _STRUCTS.get(n)
    if s is None:
        s = _STRUCTS[n] = struct.Struct("<" + "ifiB" * n)
    return s


class UserList:
    """One user's stored list, in rank order. Fields are decoded on first access."""

    __slots__ = ("_fields", "_raw", "_store", "user")

    def __init__(self, user: str, raw: bytes, st: _Store):
        self.user = user
        self._raw = raw
        self._store = st

    def _decode(self) -> tuple:
        try:
            return self._fields
        except AttributeError:
            pass
        n = len(self._raw) // _SIZE
        v = _struct(n).unpack(self._raw)
        dense, codes = v[0::4], v[3::4]
        if n > 1:
            items = itemgetter(*dense)(self._store.item_ids)
            sources = itemgetter(*codes)(SOURCES)
        else:
            items = tuple(self._store.item_ids[i] for i in dense)
            sources = tuple(SOURCES[c] for c in codes)
        self._fields = (items, v[1::4], v[2::4], sources, dense)
        return self._fields

    def __len__(self) -> int:
        return len(self._raw) // _SIZE

    @property
    def items(self) -> tuple[str, ...]:
        """Original item ids."""
        return self._decode()[0]

    @property
    def scores(self) -> tuple[float, ...]:
        """DSIE's score of each item (as stored, float32)."""
        return self._decode()[1]

    @property
    def clusters(self) -> tuple[int, ...]:
        """Interest cluster (index) of each item."""
        return self._decode()[2]

    @property
    def sources(self) -> tuple[str, ...]:
        """Where each slot came from: draw, reserve or fill."""
        return self._decode()[3]

    @property
    def item_ids(self) -> tuple[int, ...]:
        """Dense item ids (rows of the workspace's items table)."""
        return self._decode()[4]

    @property
    def records(self) -> np.ndarray:
        """The raw records (RECORD dtype: item, score, cluster, source codes)."""
        return np.frombuffer(self._raw, dtype=RECORD)

    @property
    def version(self) -> dict:
        """The store's meta: generation, round, adapters and model hashes, created, ..."""
        return self._store.meta

    def to_dict(self) -> dict:
        """JSON-ready: user, generation, round and the ranked rows."""
        items, scores, clusters, sources, _ = self._decode()
        rows = [
            {"rank": r + 1, "item": i, "score": s, "cluster": c, "source": src}
            for r, (i, s, c, src) in enumerate(zip(items, scores, clusters, sources, strict=True))
        ]
        meta = self._store.meta
        return {
            "user": self.user,
            "generation": meta.get("generation"),
            "round": meta.get("round"),
            "recommendations": rows,
        }

    def __repr__(self) -> str:
        generation = self.version.get("generation")
        return f"UserList(user={self.user!r}, n={len(self)}, generation={generation!r})"


class _Store:
    """One version of recs.lmdb, open once per process and shared by its readers (LMDB allows
    one environment per file and process): the environment, its meta and item ids."""

    def __init__(self, path: Path, identity: tuple):
        self.identity = identity
        self.readers = 0
        self.memo: dict[str, bytes] | None = None  # every list, once a reader preloads
        self.lock = threading.Lock()
        try:
            self.env = store.open_lmdb(path, command="recommend")
        except lmdb.Error as e:
            raise ArtifactError(
                path, "recommend --force", f"not a readable LMDB store ({e})"
            ) from None
        try:
            with self.env.begin() as txn:
                meta, items = txn.get(META), txn.get(ITEMS)
            if meta is None or items is None:
                raise ArtifactError(
                    path,
                    "recommend --force",
                    "written by an older coea (no meta entry): rewrite it",
                )
            self.meta = json.loads(meta)
            self.item_ids = tuple(json.loads(items))
        except (lmdb.Error, ValueError) as e:
            self.env.close()
            raise ArtifactError(
                path, "recommend --force", f"unreadable meta or items ({e})"
            ) from None
        except BaseException:
            self.env.close()
            raise

    def preload(self) -> dict[str, bytes]:
        """Every user's record bytes by original id (read once per version)."""
        with self.lock:
            if self.memo is None:
                memo, n = {}, len(USER)
                with self.env.begin() as txn:
                    cursor = txn.cursor()
                    if cursor.set_range(USER):
                        for key, raw in cursor:
                            if not key.startswith(USER):
                                break
                            memo[key[n:].decode()] = raw
                self.memo = memo
            return self.memo


_OPEN: dict[tuple, _Store] = {}
_LOCK = threading.Lock()


def _acquire(path: Path) -> _Store:
    """The open store for the file now at `path` (opened if no reader holds it)."""
    with _LOCK:
        for _ in range(5):
            identity = _identity(path)
            st = _OPEN.get(identity)
            if st is None:
                st = _Store(path, identity)
                if _identity(path) != identity:  # swapped while opening: try again
                    st.env.close()
                    continue
                _OPEN[identity] = st
            st.readers += 1
            return st
        raise OSError(f"{path} keeps changing")


def _release(st: _Store) -> None:
    with _LOCK:
        st.readers -= 1
        if st.readers == 0:
            _OPEN.pop(st.identity, None)
            st.env.close()


def _identity(path: Path) -> tuple:
    s = os.stat(Path(path) / "data.mdb")
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns


def locate(path: Path | str) -> Path:
    """The recs.lmdb folder of a workspace, a recs/ folder or a recs.lmdb folder."""
    path = Path(path)
    for candidate in (path / "recs" / "recs.lmdb", path / "recs.lmdb", path):
        if (candidate / "data.mdb").exists():
            return candidate
    raise MissingArtifact(path / "recs" / "recs.lmdb", "recommend")


class Reader:
    """Stored lists by original user id, from one long-lived process (see the module doc)."""

    def __init__(self, path: Path | str, check_every: float = 1.0, preload: bool = False):
        self.path = locate(path)
        self.check_every = float(check_every)
        self.preloaded = bool(preload)
        self._store = _acquire(self.path)
        self._txn = self._store.env.begin()
        self._txn_get = self._txn.get
        self._memo = self._store.preload() if preload else None
        self._next_check = time.monotonic() + self.check_every
        self.reopened = 0  # how many newer versions this reader has opened

    # ------------------------------------------------------------ lookups

    def get(self, user) -> UserList | None:
        """The user's list by original id (str or int), or None for a user not in the store."""
        if _monotonic() >= self._next_check:
            self.refresh()
        if type(user) is not str:
            user = str(user)
        memo = self._memo
        raw = memo.get(user) if memo is not None else self._txn_get((_PREFIX + user).encode())
        if raw is None:
            return None
        return UserList(user, raw, self._store)

    def __getitem__(self, user) -> UserList:
        found = self.get(user)
        if found is None:
            raise KeyError(user)
        return found

    def __contains__(self, user) -> bool:
        return self.get(user) is not None

    def get_many(self, users: Iterable) -> list[UserList | None]:
        """Several users' lists, in the order asked (None for unknown users); all from the
        same version."""
        if time.monotonic() >= self._next_check:
            self.refresh()
        get, memo, st, out = self._txn_get, self._memo, self._store, []
        for user in users:
            if type(user) is not str:
                user = str(user)
            raw = memo.get(user) if memo is not None else get(USER + user.encode())
            out.append(None if raw is None else UserList(user, raw, st))
        return out

    def table(self, users: Iterable):
        """Several users' lists as one pyarrow table (user, rank, item, item_id, score,
        cluster, source; users absent from the store have no rows), decoded in one pass."""
        import pyarrow as pa

        found = [x for x in self.get_many(users) if x is not None]
        raw = b"".join(x._raw for x in found)
        rec = np.frombuffer(raw, dtype=RECORD)
        counts = np.array([len(x) for x in found], dtype=np.int64)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        ids = np.array(self._store.item_ids, dtype=object) if found else np.zeros(0, object)
        return pa.table(
            {
                "user": pa.array(np.repeat([x.user for x in found], counts).tolist(), pa.string()),
                "rank": pa.array((np.arange(len(rec)) - starts + 1).astype(np.int16)),
                "item": pa.array(ids[rec["item"]].tolist() if len(rec) else [], pa.string()),
                "item_id": pa.array(rec["item"].astype(np.int32)),
                "score": pa.array(rec["score"].astype(np.float32)),
                "cluster": pa.array(rec["cluster"].astype(np.int32)),
                "source": pa.array([SOURCES[s] for s in rec["source"].tolist()], pa.string()),
            }
        )

    # ------------------------------------------------------------ versions

    @property
    def version(self) -> dict:
        """The meta of the version served now (generation, round, adapters, models, ...)."""
        return self._store.meta

    def refresh(self) -> bool:
        """Open the store again if a newer version was swapped in; True when it was."""
        self._next_check = time.monotonic() + self.check_every
        try:
            if _identity(self.path) == self._store.identity:
                return False
            new = _acquire(self.path)
        except (OSError, ArtifactError, lmdb.Error, ValueError):
            return False  # a swap under way: keep serving the open version
        try:
            memo = new.preload() if self.preloaded else None
        except (lmdb.Error, UnicodeDecodeError):
            _release(new)
            return False
        old, txn = self._store, self._txn
        self._store, self._txn = new, new.env.begin()
        self._txn_get = self._txn.get
        self._memo = memo
        self.reopened += 1
        txn.abort()
        _release(old)
        return True

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
            _release(self._store)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
