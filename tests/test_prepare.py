"""`coea prepare`: every input format, filters, periods, append, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli.data.prepare import duplicate_mask, kcore, period_bounds
from tests.helpers import coea
from tests.synth import make_log

# ---------------------------------------------------------------- fixtures in each format


def _rows(seed: int, n_users: int = 12, n_items: int = 15, n: int = 150):
    rng = np.random.default_rng(seed)
    u = rng.integers(1, n_users + 1, n)
    i = rng.integers(1, n_items + 1, n)
    r = rng.integers(1, 6, n)
    t = 880_000_000 + np.sort(rng.integers(0, 5_000_000, n))
    return u, i, r, t


def write_ml100k(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    u, i, r, t = _rows(seed)
    lines = [f"{a}\t{b}\t{c}\t{d}" for a, b, c, d in zip(u, i, r, t, strict=True)]
    (folder / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    items = []
    for k in range(1, 16):
        flags = ["0"] * 19
        flags[k % 19] = "1"
        flags[(k * 7) % 19] = "1"
        title = f"Caf\xe9 Movie {k} (19{50 + k})"
        items.append(f"{k}|{title}|01-Jan-19{50 + k}||http://x|" + "|".join(flags))
    (folder / "u.item").write_bytes("\n".join(items).encode("latin-1"))
    users = [f"{k}|{20 + k}|{'MF'[k % 2]}|student|0000{k}" for k in range(1, 13)]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    return folder


def write_ml1m(folder: Path, seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    u, i, r, t = _rows(seed)
    lines = [f"{a}::{b}::{c}::{d}" for a, b, c, d in zip(u, i, r, t, strict=True)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [f"{k}::Film n\xb0{k} ({1960 + k})::Comedy|Drama" for k in range(1, 16)]
    (folder / "movies.dat").write_bytes("\n".join(movies).encode("latin-1"))
    users = [f"{k}::{'MF'[k % 2]}::25::{k % 21}::1234{k}" for k in range(1, 13)]
    (folder / "users.dat").write_text("\n".join(users) + "\n")
    return folder


def write_recbole(folder: Path, seed: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    u, i, r, t = _rows(seed)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{a}\t{b}\t{c}\t{d}" for a, b, c, d in zip(u, i, r, t, strict=True)]
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{k}\tMovie {k}\t{1980 + k}\tAction Comedy" for k in range(1, 16)]
    (folder / "toy.item").write_text("\n".join(items) + "\n")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token"]
    users += [f"{k}\t{30 + k}\tF\twriter" for k in range(1, 13)]
    (folder / "toy.user").write_text("\n".join(users) + "\n")
    return folder


def _zip(folder: Path) -> Path:
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w") as z:
        for p in folder.iterdir():
            z.write(p, f"inner/{p.name}")
    return path


def _prepare(work: Path, *args) -> dict:
    r = coea("prepare", *args, "--min-user", 1, "--min-item", 1, "--work", work, "--json")
    assert r.code == 0, r.stderr
    return r.json()


def _tables(work: Path):
    d = work / "data"
    return (
        pq.read_table(d / "interactions.parquet"),
        pq.read_table(d / "items.parquet"),
        pq.read_table(d / "users.parquet"),
        json.loads((d / "dataset.json").read_text()),
    )


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("as_zip", [False, True])
def test_ml100k_folder_and_zip(tmp_path, as_zip):
    src = write_ml100k(tmp_path / "ml")
    if as_zip:
        src = _zip(src)
    out = _prepare(tmp_path / "w", "--source", src, "--format", "ml-100k")
    assert out["raw"]["interactions"] == 150
    inter, items, users, meta = _tables(tmp_path / "w")
    assert inter.num_rows == 150
    assert items["title"][0].as_py().startswith("Caf\xe9 Movie")
    assert all(y is not None for y in items["year"].to_pylist())
    assert all(len(c) == 2 for c in items["categories"].to_pylist())
    assert set(users.column_names) >= {"user_id", "original_id", "age", "gender", "occupation"}
    assert meta["test_period"] == 5


def test_ml1m_latin1(tmp_path):
    src = write_ml1m(tmp_path / "ml1m")
    _prepare(tmp_path / "w", "--source", src, "--format", "ml-1m")
    inter, items, users, _ = _tables(tmp_path / "w")
    assert inter.num_rows == 150
    assert items["title"][0].as_py().startswith("Film n\xb0")
    assert items["categories"][0].as_py() == ["Comedy", "Drama"]
    assert "occupation" in users.column_names


def test_recbole_atomic(tmp_path):
    src = write_recbole(tmp_path / "rb")
    _prepare(tmp_path / "w", "--source", src, "--format", "recbole")
    inter, items, users, _ = _tables(tmp_path / "w")
    assert inter.num_rows == 150
    assert items["categories"][0].as_py() == ["Action", "Comedy"]
    assert users["age"].type == pa.int64()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_column_mapping(tmp_path, suffix):
    u, i, r, t = _rows(3)
    table = pa.table({"uid": u, "iid": i, "score": r.astype(float), "ts": t})
    path = tmp_path / f"log{suffix}"
    if suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    cols = "user=uid,item=iid,time=ts,rating=score"
    _prepare(tmp_path / "w", "--source", path, "--format", "table", "--columns", cols)
    inter, items, _, _ = _tables(tmp_path / "w")
    assert inter.num_rows == 150
    assert inter["rating"].type == pa.float32()
    assert items.num_rows == len(np.unique(i))


def test_table_iso_timestamps(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,x,2020-01-01T00:00:00\nb,y,2020-01-02T00:00:00\n")
    _prepare(tmp_path / "w", "--source", path, "--format", "table", "--periods", "2")
    inter, *_ = _tables(tmp_path / "w")
    assert inter["timestamp"].to_pylist() == [1577836800, 1577923200]


def test_embedded_ml100k_summary(tmp_path):
    """The embedded dataset, read from the recbole wheel (fetched once into the cache)."""
    r = coea("prepare", "--work", tmp_path / "w", "--json")
    assert r.code == 0, r.stderr
    out = r.json()
    assert out["raw"] == {"interactions": 100_000, "users": 943, "items": 1682}
    assert "943 users, 1,682 items, 100,000 interactions (before filters)" in r.stderr


def test_embedded_dataset_offline_without_cache(tmp_path, monkeypatch):
    """An empty cache and no registry (pip replaced by one that fails, as offline) give one
    message that says what to do, exit 2, and nothing written."""
    import subprocess

    monkeypatch.setenv("COEA_CACHE", str(tmp_path / "cache"))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", offline)
    r = coea("prepare", "--work", tmp_path / "w")
    assert r.code == 2
    assert "is not in the cache" in r.stderr and "make install" in r.stderr
    assert "No matching distribution" in r.stderr
    assert not (tmp_path / "w" / "data").exists()


# ---------------------------------------------------------------- filters and periods


def test_kcore_is_iterated():
    # user 0 has 2 items; item 2 only appears with user 0, so removing it leaves user 0 short.
    users = np.array([0, 0, 1, 1, 2, 2, 1, 2])
    items = np.array([1, 2, 1, 3, 1, 3, 4, 4])
    keep = kcore(users, items, min_user=2, min_item=2)
    kept_users = set(users[keep])
    assert 0 not in kept_users
    cu = np.bincount(users[keep])
    ci = np.bincount(items[keep])
    assert all(c >= 2 for c in cu[cu > 0]) and all(c >= 2 for c in ci[ci > 0])


def test_duplicates_removed_first_kept():
    u = np.array([1, 1, 2, 1])
    i = np.array([5, 5, 5, 5])
    t = np.array([10, 10, 10, 11])
    assert duplicate_mask([u, i, t]).tolist() == [False, True, False, False]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)), max_size=60))
def test_duplicate_mask_matches_naive(rows):
    keys = [np.array([r[j] for r in rows], dtype=np.int64) for j in range(3)]
    seen, want = set(), []
    for r in rows:
        want.append(r in seen)
        seen.add(r)
    assert duplicate_mask(keys).tolist() == want if rows else True


def test_duplicate_mask_exact_under_hash_collisions(monkeypatch):
    import coea_cli.data.prepare as prep

    monkeypatch.setattr(prep, "row_hash", lambda keys: np.zeros(len(keys[0]), dtype=np.uint64))
    u = np.array([1, 2, 1, 2, 3, 1])
    i = np.array([5, 6, 5, 7, 5, 5])
    assert prep.duplicate_mask([u, i]).tolist() == [False, False, True, False, False, True]


def test_filters_reported(tmp_path):
    path = tmp_path / "log.csv"
    rows = ["user,item,timestamp,rating", "a,x,1,5", "a,x,1,5", "a,y,2,1", "b,x,3,4", "b,y,4,5"]
    path.write_text("\n".join(rows) + "\n")
    r = coea(
        "prepare", "--source", path, "--format", "table", "--rating-threshold", 4,
        "--min-user", 1, "--min-item", 1, "--periods", "2", "--work", tmp_path / "w", "--json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    counts = r.json()["filters"]
    assert counts["raw"]["interactions"] == 5
    assert counts["after_rating_threshold"]["interactions"] == 4
    assert counts["after_dedup"]["interactions"] == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=5, max_size=200),
    st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6),
)
def test_period_split_property(times, weights):
    ts = np.sort(np.array(times, dtype=np.int64))
    fracs = list(np.array(weights) / np.sum(weights))
    bounds = period_bounds(ts, fracs)
    period = np.repeat(np.arange(len(fracs)), np.diff(bounds))
    assert len(period) == len(ts)  # every row lands in exactly one period
    assert np.all(np.diff(period) >= 0)  # periods increase with time
    for p in range(len(fracs) - 1):  # equal timestamps never straddle a boundary
        a, b = ts[period == p], ts[period > p]
        if len(a) and len(b):
            assert a.max() < b.min()


def test_no_interaction_lost_and_ties_keep_file_order(tmp_path):
    paths = make_log(tmp_path / "raw", n_users=20, n_items=30, per_user=10)
    raw = pacsv.read_csv(paths["interactions"])
    _prepare(
        tmp_path / "w", "--source", paths["interactions"], "--format", "table",
        "--items", paths["items"], "--users", paths["users"],
    )  # fmt: skip
    inter, items, users, meta = _tables(tmp_path / "w")
    assert inter.num_rows == raw.num_rows
    assert sum(p["interactions"] for p in meta["periods"]) == inter.num_rows
    ts = inter["timestamp"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert np.all(np.diff(inter["period"].to_numpy()) >= 0)
    # the multiset of (user, item, time) is preserved through the id maps
    uo = np.array(users["original_id"].to_pylist())[inter["user_id"].to_numpy()]
    io = np.array(items["original_id"].to_pylist())[inter["item_id"].to_numpy()]
    got = sorted(zip(uo, io, ts.tolist(), strict=True))
    want = sorted(
        zip(
            raw["user"].to_pylist(),
            raw["item"].to_pylist(),
            raw["timestamp"].to_pylist(),
            strict=True,
        )
    )
    assert got == want


# ---------------------------------------------------------------- append


def test_append_keeps_ids_and_adds_period(tmp_path):
    work = tmp_path / "w"
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,x,1\na,y,2\nb,x,3\nb,y,4\nc,z,5\n")
    _prepare(work, "--source", path, "--format", "table", "--periods", "2")
    before, items0, users0, _ = _tables(work)
    new = tmp_path / "new.csv"
    new.write_text("user,item,timestamp\nb,z,6\nd,x,7\nd,w,8\n")
    r = coea("prepare", "--append", new, "--format", "table", "--work", work, "--json")
    assert r.code == 0, r.stderr
    inter, items, users, meta = _tables(work)
    assert inter.num_rows == before.num_rows + 3
    assert items["original_id"].to_pylist()[: items0.num_rows] == items0["original_id"].to_pylist()
    assert users["original_id"].to_pylist()[: users0.num_rows] == users0["original_id"].to_pylist()
    assert users["original_id"].to_pylist()[-1] == "d"
    assert items["original_id"].to_pylist()[-1] == "w"
    added = inter.slice(before.num_rows)
    assert set(added["period"].to_pylist()) == {2}
    assert meta["periods"][-1]["new_users"] == 1 and meta["test_period"] == 2
    # the same file again is a no-op
    r = coea("prepare", "--append", new, "--format", "table", "--work", work, "--json")
    assert r.code == 0 and r.json()["status"] == "up to date"
    assert _tables(work)[0].num_rows == inter.num_rows


def test_append_before_last_time_is_rejected(tmp_path):
    work = tmp_path / "w"
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,x,10\nb,y,20\n")
    _prepare(work, "--source", path, "--format", "table", "--periods", "2")
    old = (work / "data" / "interactions.parquet").read_bytes()
    new = tmp_path / "new.csv"
    new.write_text("user,item,timestamp\nb,x,5\n")
    r = coea("prepare", "--append", new, "--format", "table", "--work", work)
    assert r.code == 2 and "timestamp" in r.stderr
    assert (work / "data" / "interactions.parquet").read_bytes() == old


# ---------------------------------------------------------------- manifest, no-op, force


def test_manifest_noop_and_force(tmp_path):
    src = write_ml100k(tmp_path / "ml")
    work = tmp_path / "w"
    args = ["--source", src, "--format", "ml-100k"]
    assert _prepare(work, *args)["status"] == "written"
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    assert manifest["command"] == "prepare"
    assert manifest["options"]["min_user"] == 1
    assert set(manifest["outputs"]) == {
        "interactions.parquet", "items.parquet", "users.parquet", "dataset.json",
    }  # fmt: skip
    assert set(manifest["inputs"]) == {"source"} and "versions" in manifest
    mtime = (work / "data" / "interactions.parquet").stat().st_mtime_ns
    assert _prepare(work, *args)["status"] == "up to date"
    assert (work / "data" / "interactions.parquet").stat().st_mtime_ns == mtime
    assert _prepare(work, *args, "--force")["status"] == "written"
    assert _prepare(work, *args, "--periods", "3")["status"] == "written"  # options changed
    (src / "u.data").write_text((src / "u.data").read_text() + "1\t1\t5\t889999999\n")
    assert _prepare(work, *args, "--periods", "3")["status"] == "written"  # input changed


def test_config_file_supplies_defaults(tmp_path):
    src = write_ml100k(tmp_path / "ml")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'work = "{tmp_path / "cw"}"\n[prepare]\nperiods = "3"\nmin-user = 1\nmin_item = 1\n'
    )
    from coea_cli.config import load_default_map

    r = coea("prepare", "--source", src, "--format", "ml-100k", "--json",
             default_map=load_default_map(str(cfg)))  # fmt: skip
    assert r.code == 0, r.stderr
    assert len(r.json()["periods"]) == 3
    assert (tmp_path / "cw" / "data" / "dataset.json").exists()


# ---------------------------------------------------------------- bad input: exit 2, nothing written


def _bad(tmp_path, *args, expect: str):
    work = tmp_path / "w"
    r = coea("prepare", *args, "--min-user", 1, "--min-item", 1, "--work", work)
    assert r.code == 2, (r.code, r.stderr)
    assert expect in r.stderr, r.stderr
    assert not (work / "data").exists()
    return r


def test_bad_missing_file(tmp_path):
    _bad(tmp_path, "--source", tmp_path / "nope.csv", "--format", "table", expect="not found")


def test_bad_missing_columns(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("uid,iid,when\n1,2,3\n")
    _bad(tmp_path, "--source", p, "--format", "table", expect="missing column")


def test_bad_timestamp(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,timestamp\n1,2,2020-01-01\n1,3,yesterday\n")
    _bad(tmp_path, "--source", p, "--format", "table", expect="row 2")


def test_bad_encoding(tmp_path):
    folder = write_recbole(tmp_path / "rb")
    inter = folder / "toy.inter"
    inter.write_bytes(inter.read_bytes() + b"5\t\xff\xfe\t3\t880000000\n")
    _bad(tmp_path, "--source", folder, "--format", "recbole", expect="not valid utf-8")


def test_bad_empty_file(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("")
    _bad(tmp_path, "--source", p, "--format", "table", expect="empty")
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("")
    _bad(tmp_path, "--source", folder, "--format", "ml-100k", expect="empty")


def test_bad_non_integer_field(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.data").write_text("1\t2\t3\t880000000\n1\t2\t3\tsoon\n")
    _bad(tmp_path, "--source", folder, "--format", "ml-100k", expect="row 2")


def test_bad_empty_after_filters(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,timestamp\na,x,1\nb,y,2\n")
    work = tmp_path / "w"
    r = coea("prepare", "--source", p, "--format", "table", "--min-user", 3, "--work", work)
    assert r.code == 2 and "no interactions left" in r.stderr
    assert not (work / "data").exists()


@pytest.mark.parametrize("spec", ["0.5,0.4", "0.5,abc", "1", "0.5,-0.5,1.0"])
def test_bad_period_fractions(tmp_path, spec):
    p = tmp_path / "log.csv"
    p.write_text("user,item,timestamp\na,x,1\nb,y,2\n")
    _bad(tmp_path, "--source", p, "--format", "table", "--periods", spec, expect="--periods")


def test_bad_format_and_device(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,timestamp\na,x,1\n")
    _bad(tmp_path, "--source", p, "--format", "xml", expect="--format")
    _bad(tmp_path, "--source", p, "--format", "table", "--device", "tpu", expect="--device")


def test_bad_input_leaves_previous_artifact(tmp_path):
    work = tmp_path / "w"
    good = tmp_path / "log.csv"
    good.write_text("user,item,timestamp\na,x,1\nb,y,2\n")
    _prepare(work, "--source", good, "--format", "table", "--periods", "2")
    before = {p.name: p.read_bytes() for p in (work / "data").iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\na,x\n")
    r = coea("prepare", "--source", bad, "--format", "table", "--work", work, "--force")
    assert r.code == 2
    assert {p.name: p.read_bytes() for p in (work / "data").iterdir()} == before


# ---------------------------------------------------------------- CLI basics


def test_version_and_help_are_light():
    code = (
        "import sys; from coea_cli.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    r = coea("--version")
    assert r.code == 0 and r.stdout.startswith("coea ")
    r = coea("prepare", "--help")
    assert r.code == 0 and "--periods" in r.stdout and "--append" in r.stdout
