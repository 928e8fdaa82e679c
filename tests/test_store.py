"""Artifact store: atomic writes, crash recovery, manifests, LMDB, safetensors and the lock."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from coea_cli import store
from coea_cli.errors import MissingArtifact, WorkspaceLocked


def test_stage_interrupted_keeps_old_folder(tmp_path):
    folder = tmp_path / "art"
    with store.Stage(folder, "cmd", {"a": 1}, []).write() as tmp:
        (tmp / "x.txt").write_text("old")
    with pytest.raises(RuntimeError), store.Stage(folder, "cmd", {"a": 2}, []).write() as tmp:
        (tmp / "x.txt").write_text("new")
        raise RuntimeError("killed halfway")
    assert (folder / "x.txt").read_text() == "old"
    assert store.read_json(folder / "manifest.json")["options"] == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary leftovers


def test_recover_after_crash_between_renames(tmp_path):
    folder = tmp_path / "art"
    with store.Stage(folder, "cmd", {}, []).write() as tmp:
        (tmp / "x.txt").write_text("old")
    # Simulate a kill after the old folder was moved aside but before the new one arrived.
    os.replace(folder, tmp_path / ".old-art")
    store.recover(folder)
    assert (folder / "x.txt").read_text() == "old"


def test_stale_temp_from_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".tmp-art.999999"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"partial")
    store.recover(tmp_path / "art")
    assert not stale.exists()


def test_atomic_file_on_exception(tmp_path):
    path = tmp_path / "t.json"
    store.write_json(path, {"v": 1})
    with pytest.raises(ValueError), store.atomic_file(path) as tmp:
        tmp.write_text("garbage")
        raise ValueError
    assert store.read_json(path) == {"v": 1}


def test_up_to_date_tracks_options_inputs_outputs(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    folder = tmp_path / "art"
    with store.Stage(folder, "cmd", {"k": 1}, [src], seed=3).write() as tmp:
        (tmp / "out.txt").write_text("o")
    assert store.Stage(folder, "cmd", {"k": 1}, [src], 3).up_to_date()
    assert not store.Stage(folder, "cmd", {"k": 2}, [src], 3).up_to_date()
    assert not store.Stage(folder, "cmd", {"k": 1}, [src], 4).up_to_date()
    src.write_text("b")
    assert not store.Stage(folder, "cmd", {"k": 1}, [src], 3).up_to_date()
    src.write_text("a")
    (folder / "out.txt").write_text("tampered")
    assert not store.Stage(folder, "cmd", {"k": 1}, [src], 3).up_to_date()


def test_tensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.standard_normal((5, 3)).astype(np.float32),
        "i": np.arange(5, dtype=np.int32),
    }
    store.write_tensors(tmp_path / "t.safetensors", arrays, {"dims": [5, 3], "name": "x"})
    back, meta = store.read_tensors(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(back["a"], arrays["a"])
    np.testing.assert_array_equal(back["i"], arrays["i"])
    assert meta == {"dims": [5, 3], "name": "x"}
    with pytest.raises(MissingArtifact, match="coea build-sids"):
        store.read_tensors(tmp_path / "missing.safetensors", command="build-sids")


def test_lmdb_round_trip_and_replace(tmp_path):
    path = tmp_path / "db.lmdb"
    rng = np.random.default_rng(1)
    records = {f"k{i}".encode(): rng.bytes(int(rng.integers(1, 50))) for i in range(300)}
    assert store.write_lmdb(path, records.items()) == 300
    env = store.open_lmdb(path)
    with env.begin() as txn:
        assert all(txn.get(k) == v for k, v in records.items())
    env.close()
    store.write_lmdb(path, [(b"only", b"one")])
    env = store.open_lmdb(path)
    with env.begin() as txn:
        assert txn.get(b"k1") is None and txn.get(b"only") == b"one"
    env.close()


def _hold_lock(work, ready, release):
    with store.workspace_lock(work, "holder"):
        ready.set()
        release.wait(10)


def test_lock_second_holder_fails_fast(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        t0 = time.time()
        with pytest.raises(WorkspaceLocked, match="holder"), store.workspace_lock(tmp_path, "me"):
            pass
        assert time.time() - t0 < 1.0
    finally:
        release.set()
        p.join(10)
    with store.workspace_lock(tmp_path, "me"):  # free again once the holder is gone
        pass


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_cleans_what_dead_processes_left(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / f".tmp-items.parquet.{dead}").write_bytes(b"half")
    (tmp_path / f".tmp-recs.{dead}" / "recs.lmdb").mkdir(parents=True)
    (tmp_path / f".old-sids.{dead}").mkdir()  # a swap killed between its renames
    (tmp_path / f".old-sids.{dead}" / "sids.parquet").write_bytes(b"old")
    (tmp_path / "groups").mkdir()  # a swap killed after its renames
    (tmp_path / f".old-groups.{dead}").mkdir()
    (tmp_path / f".tmp-dsie.{live}").mkdir()  # a running command's
    handled = store.sweep(tmp_path)
    assert len(handled) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".tmp-dsie.{live}", "data", "groups", "sids",
    ]  # fmt: skip
    assert (tmp_path / "sids" / "sids.parquet").read_bytes() == b"old"
    assert list((tmp_path / "data").iterdir()) == []
    assert store.sweep(tmp_path) == []


def _swap_many(folder, tag, n):
    for k in range(n):
        with store.atomic_dir(folder) as tmp:
            (tmp / "a.txt").write_text(f"{tag} {k}")
            (tmp / "b.txt").write_text(f"{tag} {k}")


def test_concurrent_swaps_of_one_folder(tmp_path):
    """Two writers replacing one folder (two `recommend` runs) never collide: each swap
    moves the old folder aside under its own name, and the result is one writer's whole."""
    ctx = mp.get_context("spawn")
    folder = tmp_path / "recs"
    procs = [ctx.Process(target=_swap_many, args=(folder, t, 300)) for t in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = ((folder / n).read_text() for n in ("a.txt", "b.txt"))
    assert a == b and a.split()[1] == "299"
    assert [p.name for p in tmp_path.iterdir()] == ["recs"]


def test_records_table_aligns_columns():
    from coea_cli.console import records_table

    rows = [
        {"rank": 1, "title": "Brazil", "score": 1.5},
        {"rank": 10, "title": "Fargo (1996)", "score": 0.25},
    ]
    assert records_table(rows).splitlines() == [
        "rank  title         score",
        "   1  Brazil          1.5",
        "  10  Fargo (1996)   0.25",
    ]
