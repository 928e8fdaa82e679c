"""Artifact store: atomic writes, manifests, up-to-date checks and the workspace lock.

Every command writes its artifact folder through `stage()`: outputs go to a temporary
sibling folder, `manifest.json` is written last, then the folder replaces the old one with
`os.replace`. A command killed at any point leaves the previous artifact intact.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from coea_cli.errors import MissingArtifact, WorkspaceLocked

MANIFEST = "manifest.json"
_TMP = ".tmp-"
_OLD = ".old-"
_VERSIONED = ("coea", "numpy", "pyarrow", "torch", "transformers", "peft", "bitsandbytes")


# ---------------------------------------------------------------- hashing and json


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """Hash of a file, or of a folder (sorted relative names and file hashes)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != MANIFEST):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary name, then os.replace)."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- atomic files and folders


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP}{path.name}.{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces the folder `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = path.with_name(f"{_TMP}{path.name}.{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing it. The old folder is moved aside under a name
    of this process (`.old-NAME.PID`) while the parent folder is locked, so concurrent swaps
    of one folder never share a name; a crash between the two renames is undone by
    `recover(dst)`, which brings the old folder back."""
    old = dst.with_name(f"{_OLD}{dst.name}.{os.getpid()}")
    with _folder_lock(dst.parent):
        if old.exists():  # left by a dead process that had this pid
            shutil.rmtree(old)
        if dst.exists():
            os.replace(dst, old)
        os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def recover(path: Path) -> None:
    """Undo an interrupted `replace_dir` and drop stale temporary siblings of `path`, both
    left by processes that are no longer running."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    with _folder_lock(path.parent):
        for entry in sorted(path.parent.iterdir()):
            found = leftover(entry.name)
            if found is None or found[1] != path.name or _alive(found[2]):
                continue
            if found[0] == _TMP:
                _remove(entry)
            elif path.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.replace(entry, path)


def leftover(name: str) -> tuple[str, str, int] | None:
    """(prefix, target name, pid) of `.tmp-NAME.PID` or `.old-NAME.PID` (pid 0 for the
    `.old-NAME` of older versions); None for any other name."""
    for prefix in (_TMP, _OLD):
        if name.startswith(prefix):
            target, _, pid = name.removeprefix(prefix).rpartition(".")
            if target and pid.isdigit():
                return prefix, target, int(pid)
            return (prefix, name.removeprefix(prefix), 0) if prefix == _OLD else None
    return None


def sweep(root: Path) -> list[Path]:
    """Clean what dead processes left under `root`: temporary files and folders of
    interrupted atomic writes are removed, folders moved aside by an interrupted swap are put
    back (or removed when the new one had arrived). Returns the entries handled."""
    handled = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            found = leftover(name)
            if found is not None and not _alive(found[2]):
                recover(Path(folder) / found[1])
                handled.append(Path(folder) / name)
        dirs[:] = [d for d in dirs if leftover(d) is None]
    return handled


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder (flock on its descriptor), held for a swap; waits."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- table and tensor formats


def write_parquet(path: Path, table) -> None:
    """Write a pyarrow Table (or dict of columns) to Parquet atomically (zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, dict):
        table = pa.table(table)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: Path, columns: list[str] | None = None, command: str | None = None):
    """Read a Parquet file; a missing file names the command that makes it."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise MissingArtifact(path, command or "prepare")
    return pq.read_table(path, columns=columns)


def write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Write numpy arrays to safetensors atomically; metadata values are JSON-encoded."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    # One sorted JSON entry: safetensors does not keep metadata key order, and identical
    # content must give identical bytes (hashes drive the up-to-date checks).
    meta = {"coea": json.dumps(metadata or {}, default=_json_default, sort_keys=True)}
    with atomic_file(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)


def read_tensors(path: Path, command: str | None = None) -> tuple[dict, dict]:
    """Read a safetensors file as numpy arrays plus its decoded metadata."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise MissingArtifact(path, command or "prepare")
    with safe_open(str(path), framework="numpy") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        raw = f.metadata() or {}
        meta = (
            json.loads(raw["coea"]) if "coea" in raw else {k: json.loads(v) for k, v in raw.items()}
        )
    return arrays, meta


def write_lmdb(
    path: Path,
    records: Iterable[tuple[bytes, bytes]],
    map_size: int = 64 << 20,
    append: bool = False,
    batch: int = 100_000,
) -> int:
    """Build an LMDB environment (a folder) from (key, value) pairs and swap it in atomically.

    The map (LMDB's size limit, not an allocation) starts at `map_size` and doubles whenever
    a batch of `batch` records does not fit, so a store of any size is written. With `append`
    the keys must come in ascending byte order: pages are then filled whole, which is faster
    and smaller; a key out of order raises ValueError. Returns the number of records written.
    """
    import lmdb

    n = 0
    with atomic_dir(path) as tmp:
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=False, sync=False)
        try:
            pairs = iter(records)
            while chunk := list(itertools.islice(pairs, batch)):
                while True:
                    try:
                        with env.begin(write=True) as txn:
                            for key, value in chunk:
                                if not txn.put(key, value, append=append):
                                    raise ValueError(f"LMDB key {key[:60]!r} is out of order")
                        break
                    except lmdb.MapFullError:  # the batch was aborted: grow and write it again
                        env.set_mapsize(2 * env.info()["map_size"])
                n += len(chunk)
            env.sync(True)
        finally:
            env.close()
    return n


def open_lmdb(path: Path, command: str | None = None):
    """Open an LMDB folder read-only (no lock file, many readers)."""
    import lmdb

    path = Path(path)
    if not (path / "data.mdb").exists():
        raise MissingArtifact(path, command or "prepare")
    return lmdb.open(str(path), readonly=True, lock=False, subdir=True, readahead=False)


# ---------------------------------------------------------------- manifests and stages


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def normalise(options: dict) -> dict:
    """Options as JSON-comparable values (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(options, default=_json_default, sort_keys=True))


@dataclass
class Stage:
    """One command's output folder, written atomically with a manifest.

    `inputs` maps a key to a file or folder whose hash the manifest records: paths inside
    `root` (the workspace) are keyed by their path relative to it, so a moved, copied or
    differently spelled workspace stays up to date; other inputs by the key given.
    """

    folder: Path
    command: str
    options: dict
    inputs: Mapping[str, Path] | Iterable[Path]
    seed: int | None = None
    root: Path | None = None
    started: float = field(default_factory=time.time)
    extra: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)  # versions of the inputs (SIDs, data)
    tmp: Path | None = None
    _hashes: dict | None = None

    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def up_to_date(self) -> bool:
        """True when the folder holds this command's outputs for the same options and inputs."""
        return self.stale_reason() is None

    def stale_reason(self) -> str | None:
        """None when up to date, else what differs (for --verbose)."""
        recover(self.folder)
        path = self.manifest_path()
        if not path.exists():
            return "no previous output"
        try:
            old = read_json(path)
        except (OSError, json.JSONDecodeError):
            return "unreadable manifest"
        if old.get("command") != self.command:
            return f"written by {old.get('command')!r}"
        options = normalise(self.options)
        if old.get("options") != options:
            prev = old.get("options") or {}
            keys = sorted(k for k in set(prev) | set(options) if prev.get(k) != options.get(k))
            return "options changed: " + ", ".join(keys)
        if old.get("seed") != self.seed:
            return f"seed changed ({old.get('seed')} -> {self.seed})"
        hashes, prev = self.input_hashes(), old.get("inputs") or {}
        if prev != hashes:
            keys = sorted(k for k in set(prev) | set(hashes) if prev.get(k) != hashes.get(k))
            return "inputs changed: " + ", ".join(keys)
        for rel, digest in old.get("outputs", {}).items():
            out = self.folder / rel
            if not out.exists() or sha256_path(out) != digest:
                return f"output {rel} missing or changed"
        return None

    def keyed_inputs(self) -> dict[str, Path]:
        if isinstance(self.inputs, Mapping):
            return {k: Path(v) for k, v in self.inputs.items()}
        return {self._key(Path(p)): Path(p) for p in self.inputs}

    def _key(self, path: Path) -> str:
        if self.root is not None:
            root, full = Path(self.root).resolve(), path.resolve()
            if full.is_relative_to(root):
                return full.relative_to(root).as_posix()
        return str(path.resolve())

    def input_hashes(self) -> dict:
        if self._hashes is None:
            hashes = {}
            for key, p in self.keyed_inputs().items():
                if not p.exists():
                    raise MissingArtifact(p, "prepare")
                hashes[key] = sha256_path(p)
            self._hashes = hashes
        return self._hashes

    def manifest(self, outputs: dict) -> dict:
        return {
            "command": self.command,
            "options": normalise(self.options),
            "seed": self.seed,
            "inputs": self.input_hashes(),
            "outputs": outputs,
            "versions": versions(),
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 3),
            **({"lineage": self.lineage} if self.lineage else {}),
            **self.extra,
        }

    @contextmanager
    def write(self, keep: Iterable[str] = (), carry: Iterable[str] = ()) -> Iterator[Path]:
        """Yield a temporary folder for the outputs; on success the manifest is written and
        the folder swapped in whole. `keep` names entries of the existing folder to carry
        over (copied) as outputs; `carry` names entries carried over (hard-linked) that are
        not this command's outputs (another run's folders inside this one), so the manifest
        does not hash them."""
        self.input_hashes()  # before any output exists, so a missing input writes nothing
        carry = set(carry)
        with atomic_dir(self.folder) as tmp:
            for name in keep:
                src = self.folder / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                elif src.exists():
                    shutil.copy2(src, tmp / name)
            for name in carry:
                if (self.folder / name).is_dir():
                    shutil.copytree(self.folder / name, tmp / name, copy_function=_link)
            self.tmp = tmp
            yield tmp
            outputs = {
                str(p.relative_to(tmp)): sha256_path(p)
                for p in sorted(tmp.iterdir())
                if p.name != MANIFEST and p.name not in carry
            }
            write_json(tmp / MANIFEST, self.manifest(outputs))


def _link(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- workspace lock


@contextmanager
def workspace_lock(work: Path, command: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on the workspace for a state-advancing command.

    A second concurrent holder gets WorkspaceLocked at once. The lock is released by the OS
    if the process dies, so a crash never leaves the workspace locked.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise WorkspaceLocked(
                f"workspace {work} is locked by {holder}; try again when it has finished"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command})".encode(), 0)
        yield
    finally:
        os.close(fd)
