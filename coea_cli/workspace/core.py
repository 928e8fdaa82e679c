"""The workspace: every artifact by name, each read through a validating, cached loader.

Stages never build artifact paths themselves and never import another stage's command module:
they ask the workspace. A missing, truncated or corrupt artifact raises ArtifactError naming
the file and the command that rebuilds it (exit 2).

    ws = Workspace("coea-work")
    ws.dataset()              # data/dataset.json
    ws.history()              # History: every user's items at any period cutoff
    ws.sids()                 # Sids: codes, layout, version, cluster descriptions
    ws.groups()               # Groups: group of each user, persona texts and embeddings
    ws.track("main").state()  # PCO state (None before round 0)
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coea_cli import store
from coea_cli.errors import ArtifactError, WorkspaceLocked
from coea_cli.workspace.history import History
from coea_cli.workspace.sids import META_KEY, SidLayout, Sids, version_of
from coea_cli.workspace.tracks import Track, tracks, unfinished_rounds

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Dir:
    """An artifact folder: its files by key, and the command that writes it."""

    path: Path
    producer: str
    files: dict[str, str]

    def file(self, key: str, folder: Path | None = None) -> Path:
        """The file's path in this folder, or in `folder` (a stage's temporary folder)."""
        return (self.path if folder is None else Path(folder)) / self.files[key]

    def require(self, key: str) -> Path:
        p = self.file(key)
        if not p.exists():
            raise ArtifactError(p, self.producer, "missing")
        return p


DATA = {
    "interactions": "interactions.parquet",
    "items": "items.parquet",
    "users": "users.parquet",
    "dataset": "dataset.json",
}
ITEMS = {"text": "item_text.parquet", "emb": "item_emb.safetensors"}
SIDS = {
    "sids": "sids.parquet",
    "model": "rqvae.safetensors",
    "clusters": "clusters.parquet",
    "report": "report.json",
}
GROUPS = {
    "groups": "groups.parquet",
    "personas": "personas.parquet",
    "emb": "group_emb.safetensors",
    "report": "report.json",
    "plot": "similarity.png",
}
DSIE = {
    "model": "dsie.safetensors",
    "config": "config.json",
    "states": "user_states.safetensors",
    "report": "report.json",
}
RECS = {
    "lmdb": "recs.lmdb",
    "table": "recs.parquet",
    "report": "report.json",
}
EVAL = {
    "report": "report.json",
    "markdown": "report.md",
    "rounds": "rounds.png",
    "tradeoff": "tradeoff.png",
}
ROLLING = {"report": "report.json", "markdown": "report.md", "periods": "periods.png"}
EXTERNAL = {"report": "report.json", "markdown": "report.md", "tradeoff": "tradeoff.png"}
SIM = {
    "oracle": "oracle.safetensors",
    "periods": "periods.parquet",
    "accepted": "accepted.parquet",
    "report": "report.json",
    "markdown": "report.md",
    "curves": "curves.png",
}


def check_name(option: str, name: str) -> str:
    """A name typed by a user that becomes one folder inside the workspace."""
    if not _NAME.fullmatch(str(name)) or name in (".", ".."):
        raise ArtifactError(
            None, None, f"{option} {name!r}: use letters, digits, '.', '-' and '_' only"
        )
    return name


@dataclass(frozen=True)
class Groups:
    of_user: np.ndarray  # [U] int64 group of each user at the test period's start
    persona_text: dict[int, str]  # group -> persona
    by_period: dict[int, np.ndarray]  # period start -> [U] groups (empty: static groups)

    def at(self, period: int | None) -> np.ndarray:
        """Each user's group at the start of `period` (from the history before it); the test
        period's for None or a period past the table."""
        if period is None or period not in self.by_period:
            return self.of_user
        return self.by_period[period]


class Workspace:
    """One experiment's folder (`--work`). Loaders cache what they read."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._cache: dict = {}
        self.data = Dir(self.root / "data", "prepare", DATA)
        self.items = Dir(self.root / "items", "tokenize-items", ITEMS)
        self.sids_dir = Dir(self.root / "sids", "build-sids", SIDS)
        self.groups_dir = Dir(self.root / "groups", "profile-groups", GROUPS)
        self.eval = Dir(self.root / "eval", "evaluate", EVAL)
        self.rolling = Dir(self.root / "eval-rolling", "evaluate --rolling", ROLLING)
        self.backbone = self.root / "llm" / "backbone"

    def dsie(self, name: str = "dsie") -> Dir:
        producer = "train-dsie"
        if name.startswith("dsie-before-"):
            producer += f" --cutoff {name.removeprefix('dsie-before-')}"
        return Dir(self.root / check_name("--out", name), producer, DSIE)

    def dsie_name(self, cutoff: int | None) -> str:
        """The DSIE folder for a cutoff: dsie/ (trained on the periods before the test period)
        for the test period, a later one or None; dsie-before-K/ for an earlier period K."""
        test = int(self.dataset()["test_period"])
        return "dsie" if cutoff is None or cutoff >= test else f"dsie-before-{int(cutoff)}"

    def recs(self, shard: tuple[int, int] | None = None) -> Dir:
        path = self.root / "recs"
        if shard is not None:
            path = path / "shards" / f"{shard[0]}-of-{shard[1]}"
        return Dir(path, "recommend", RECS)

    def external_eval(self, name: str) -> Dir:
        """eval-NAME/: another system's lists scored by `evaluate --recs FILE --name NAME`."""
        return Dir(self.root / f"eval-{check_name('--name', name)}", "evaluate --recs", EXTERNAL)

    def sim(self, name: str = "sim") -> Dir:
        return Dir(self.root / check_name("--out", name), "simulate", SIM)

    def track(self, name: str = "main") -> Track:
        return Track(self.root, name)

    def tracks(self) -> list[str]:
        return tracks(self.root)

    def sweep(self) -> list[Path]:
        """Clean what dead commands left, at the start of every command: temporary files and
        folders of interrupted writes, folders moved aside by an interrupted swap (put back),
        and rounds newer than their track's state (only while no command holds the workspace
        lock). Returns what was removed or put back."""
        if not self.root.is_dir():
            return []
        done = store.sweep(self.root)
        if unfinished_rounds(self.root):
            try:
                with store.workspace_lock(self.root, "cleanup"):
                    rounds = unfinished_rounds(self.root)  # again, under the lock
                    for p in rounds:
                        shutil.rmtree(p)
                    done += rounds
            except WorkspaceLocked:
                pass  # a pco-round is running: its rounds are not finished yet
        return done

    def checkpoints(self, name: str) -> Path:
        return self.root / "checkpoints" / check_name("--out", name)

    def lineage(self, inputs) -> dict:
        """What a manifest records of the versions its stage was made from: the SID version
        and revision when it reads sids/sids.parquet, the data's extent when it reads
        data/interactions.parquet."""
        paths = {
            Path(p).resolve() for p in (inputs.values() if isinstance(inputs, dict) else inputs)
        }
        out: dict = {}
        if self.sids_dir.file("sids").resolve() in paths:
            sids = self.sids(partial=True)
            out |= {"sid_version": sids.version, "sid_revision": sids.revision}
        if self.data.file("interactions").resolve() in paths:
            d = self.dataset()
            out["data"] = {k: d.get(k) for k in ("test_period", "users", "items", "interactions")}
        return out

    def _once(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    # ---------------------------------------------------------------- data/

    def dataset(self) -> dict:
        """data/dataset.json: counts, periods, test period, filters."""

        def load():
            path = self.data.require("dataset")
            d = read_json(path, "prepare")
            for key in ("users", "items", "test_period", "periods"):
                if key not in d:
                    raise ArtifactError(path, "prepare", f"no {key!r} entry")
            return d

        return self._once("dataset", load)

    def interactions(self, columns: list[str] | None = None):
        return read_table(self.data.require("interactions"), "prepare", columns)

    def items_table(self, columns: list[str] | None = None):
        return read_table(self.data.require("items"), "prepare", columns)

    def users_table(self, columns: list[str] | None = None):
        return read_table(self.data.require("users"), "prepare", columns)

    def history(self) -> History:
        """Every interaction in time order, with the workspace's counts."""

        def load():
            meta = self.dataset()
            path = self.data.file("interactions")
            t = self.interactions(["user_id", "item_id", "timestamp", "period"])
            users = t["user_id"].to_numpy().astype(np.int64)
            items = t["item_id"].to_numpy().astype(np.int64)
            n_users, n_items = int(meta["users"]), int(meta["items"])
            for col, ids, n in (("user_id", users, n_users), ("item_id", items, n_items)):
                bad = np.flatnonzero((ids < 0) | (ids >= n))
                if len(bad):
                    r = int(bad[0])
                    problem = f"row {r}: column {col} = {ids[r]} is outside 0..{n - 1}"
                    raise ArtifactError(path, "prepare", problem)
            return History(
                users=users,
                items=items,
                times=t["timestamp"].to_numpy(),
                periods=t["period"].to_numpy().astype(np.int64),
                n_users=n_users,
                n_items=n_items,
                test_period=int(meta["test_period"]),
            )

        return self._once("history", load)

    def item_titles(self) -> list[str]:
        t = self.items_table(["item_id", "title"]).sort_by("item_id")
        return [str(x) if x is not None else "" for x in t["title"].to_pylist()]

    def original_ids(self, what: str) -> list[str]:
        """Original ids of users or items by dense id."""
        table = self.users_table if what == "users" else self.items_table
        return [str(x) for x in table(["original_id"])["original_id"].to_pylist()]

    # ---------------------------------------------------------------- items/

    def item_embedding(self, tensor: str) -> np.ndarray:
        """One tensor of items/item_emb.safetensors, [N, d] float32 in item order, checked
        against data/."""
        path = self.items.require("emb")
        arrays, _ = read_tensors(path, "tokenize-items")
        n = int(self.dataset()["items"])
        if tensor not in arrays:
            raise ArtifactError(path, "tokenize-items", f"no tensor {tensor!r}")
        x, ids = arrays[tensor], arrays.get("item_id")
        if x.ndim != 2:
            raise ArtifactError(path, "tokenize-items", f"{tensor!r} has shape {x.shape}")
        if ids is None or len(ids) != n or len(x) != n:
            raise ArtifactError(
                path, "tokenize-items", f"{len(x)} rows, but data/items.parquet has {n} items"
            )
        bad = np.flatnonzero(ids != np.arange(n))
        if len(bad):
            r = int(bad[0])
            raise ArtifactError(
                path, "tokenize-items", f"row {r} has item_id {ids[r]}, expected {r}"
            )
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            r = int(np.flatnonzero(~finite)[0])
            raise ArtifactError(
                path, "tokenize-items", f"{tensor!r} has NaN/Inf in row {r} (item {r})"
            )
        return x.astype(np.float32)

    def item_texts(self) -> list[str]:
        t = read_table(self.items.require("text"), "tokenize-items", ["item_id", "text"])
        return t.sort_by("item_id")["text"].to_pylist()

    # ---------------------------------------------------------------- sids/

    def sids(self, partial: bool = False) -> Sids:
        """SID codes of every item, their layout (from the Parquet metadata) and the interest
        cluster descriptions; checked against data/items.parquet. With `partial`, SIDs of the
        first items only are accepted (items were added since): build-sids extends them."""

        def load():
            path = self.sids_dir.require("sids")
            table = read_table(path, "build-sids")
            raw = (table.schema.metadata or {}).get(META_KEY)
            try:
                meta = json.loads(raw)
                layout = SidLayout.from_meta(meta)
            except (TypeError, ValueError, KeyError):
                raise ArtifactError(path, "build-sids", "no valid SID layout metadata") from None
            names = [f"c{i + 1}" for i in range(layout.levels)] + ["dup", "item_id"]
            missing = [c for c in names if c not in table.column_names]
            if missing:
                raise ArtifactError(path, "build-sids", f"no column(s) {missing}")
            n = int(self.dataset()["items"])
            ids = table["item_id"].to_numpy().astype(np.int64)
            m = len(ids) if partial and len(ids) <= n else n
            if len(ids) != m or not np.array_equal(np.sort(ids), np.arange(m)):
                raise ArtifactError(
                    path, "build-sids", f"{len(ids)} items, data/items.parquet has {n}"
                )
            n = m
            codes = np.zeros((n, layout.levels + 1), dtype=np.int64)
            for j, c in enumerate(names[:-1]):
                col = table[c].to_numpy().astype(np.int64)
                if len(col) and (col.min() < 0 or col.max() >= layout.sizes[j]):
                    raise ArtifactError(path, "build-sids", f"column {c} outside its codebook")
                codes[ids, j] = col
            version = str(meta.get("version") or version_of(codes, layout))
            revision = int(meta.get("revision", 0))
            return Sids(codes, layout, self._cluster_descriptions(), version, revision)

        return self._once(("sids", partial), load)

    def _cluster_descriptions(self) -> dict[int, str]:
        path = self.sids_dir.require("clusters")
        t = read_table(path, "build-sids", ["cluster", "description"])
        return {
            int(c): str(d)
            for c, d in zip(t["cluster"].to_pylist(), t["description"].to_pylist(), strict=True)
        }

    def sid_report(self) -> dict:
        return read_json(self.sids_dir.require("report"), "build-sids")

    # ---------------------------------------------------------------- groups/

    def groups(self) -> Groups:
        """The group of every user and each group's persona text."""

        def load():
            meta = self.dataset()
            n_users, test = int(meta["users"]), int(meta["test_period"])
            path = self.groups_dir.require("groups")
            table = read_table(path, "profile-groups")
            if "period" not in table.column_names:  # static groups: the same at every period
                table = table.append_column("period", pa.array([test] * table.num_rows))
            by_period = {}
            for p in sorted(set(table["period"].to_pylist())):
                part = table.filter(pc.equal(table["period"], p))
                by_period[int(p)] = _user_groups(part, n_users, path)
            known = [p for p in by_period if p <= test]
            if not known:
                raise ArtifactError(path, "profile-groups", f"no groups for period {test}")
            latest = by_period[max(known)]  # periods appended since: the latest placement
            p = read_table(
                self.groups_dir.require("personas"), "profile-groups", ["group", "persona"]
            )
            text = dict(zip(p["group"].to_pylist(), p["persona"].to_pylist(), strict=True))
            return Groups(latest, text, by_period)

        return self._once("groups", load)

    def persona_embeddings(self) -> np.ndarray:
        """groups/group_emb.safetensors "persona": [G, d] float32, one row per group."""
        path = self.groups_dir.require("emb")
        arrays, _ = read_tensors(path, "profile-groups")
        persona = arrays.get("persona")
        if persona is None or persona.ndim != 2 or self.groups().of_user.max() >= len(persona):
            raise ArtifactError(path, "profile-groups", "persona embeddings do not fit the groups")
        return persona.astype(np.float32)

    # ---------------------------------------------------------------- dsie/

    def dsie_config(self, name: str = "dsie") -> dict:
        d = self.dsie(name)
        return read_json(d.require("config"), "train-dsie")

    def dsie_weights(self, name: str = "dsie") -> dict:
        """DSIE's weights as torch tensors (codes and personas included)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.dsie(name).require("model")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(
                path, "train-dsie", f"not a readable safetensors file ({e})"
            ) from None

    def user_states(self, name: str = "dsie") -> tuple[dict, dict]:
        """dsie/user_states.safetensors: (arrays long/short/fused [U, h] and user_id, meta)."""
        return read_tensors(self.dsie(name).require("states"), "train-dsie")


# ---------------------------------------------------------------- validating readers


def _user_groups(table, n_users: int, path: Path) -> np.ndarray:
    """[U] group of each user from (user_id, group) rows; every user must have one."""
    users = table["user_id"].to_numpy().astype(np.int64)
    groups = table["group"].to_numpy().astype(np.int64)
    of_user = np.full(n_users, -1, dtype=np.int64)
    ok = (users >= 0) & (users < n_users)
    of_user[users[ok]] = groups[ok]
    missing = np.flatnonzero(of_user < 0)
    if len(missing):
        raise ArtifactError(
            path,
            "profile-groups",
            f"{len(missing)} users have no group (first user_id {missing[0]})",
        )
    if (groups < 0).any():
        raise ArtifactError(path, "profile-groups", "negative group ids")
    return of_user


def read_table(path: Path, producer: str, columns: list[str] | None = None):
    """A Parquet file; unreadable or missing columns raise ArtifactError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise ArtifactError(path, producer, "missing")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise ArtifactError(path, producer, f"not a readable Parquet file ({e})") from None


def read_json(path: Path, producer: str) -> dict:
    if not Path(path).exists():
        raise ArtifactError(path, producer, "missing")
    try:
        d = store.read_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(path, producer, f"not readable JSON ({e})") from None
    if not isinstance(d, dict):
        raise ArtifactError(path, producer, "not a JSON object")
    return d


def read_tensors(path: Path, producer: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError

    if not Path(path).exists():
        raise ArtifactError(path, producer, "missing")
    try:
        return store.read_tensors(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(path, producer, f"not a readable safetensors file ({e})") from None
