"""Bad input of every kind, to every command: exit 2, a message that names the file, row,
column or option, and a workspace left byte for byte as it was.

One tiny workspace holds every artifact (the upstream ones written in their documented
schemas, then real `train-dsie`, `pco-round` and `recommend` runs); each case runs on a copy,
damaged or not, with bad files beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coea_cli import store
from coea_cli.cli import main
from coea_cli.data.prepare import prepare_log
from coea_cli.data.readers import read_source
from coea_cli.data.values import TIME_MAX, TIME_MIN
from coea_cli.errors import BadInput
from tests.helpers import coea
from tests.pco_fixtures import TINY, tiny_workspace
from tests.test_prepare import write_ml1m, write_ml100k, write_recbole

DSIE = ["--epochs", 1, "--hidden", 32, "--heads", 2, "--long-len", 20, "--short-len", 4]
SERVE = ["--k", 10, "--n", 2, "--weights", "top-m"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    work = tiny_workspace(tmp_path_factory.mktemp("bad"))
    rng = np.random.default_rng(0)
    n_items = store.read_json(work / "data" / "dataset.json")["items"]
    content = rng.normal(size=(n_items, 8)).astype(np.float32)
    store.write_tensors(
        work / "items" / "item_emb.safetensors",
        {"item_id": np.arange(n_items, dtype=np.int32), "content": content,
         "collab": content, "fused": np.concatenate([content, content], axis=1)},
    )  # fmt: skip
    store.write_tensors(
        work / "groups" / "group_emb.safetensors",
        {"persona": rng.normal(size=(3, 8)).astype(np.float32), "group": np.arange(3)},
    )
    for args in (
        ("train-dsie", *DSIE),
        ("pco-round", *TINY, "--rounds", 2),
        ("recommend", *SERVE),
    ):
        r = coea(*args, "--work", work)
        assert r.code == 0, (args, r.stderr)
    return work


def tree(work: Path) -> dict[str, str]:
    """Every file's sha256 and every folder, by relative path. `.lock` is left out: it only
    holds the pid of the last command that took the workspace lock."""
    out = {}
    for p in sorted(work.rglob("*")):
        rel = p.relative_to(work).as_posix()
        if rel == ".lock":
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
    return out


# ---------------------------------------------------------------- building the cases


def opts(*args):
    return lambda work, tmp: list(args)


def raw(name: str, data: bytes | str, *extra):
    """`prepare --format table` (or --append) of one file written beside the workspace."""

    def make(work, tmp):
        path = tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        flag = "--append" if "--append" in extra else "--source"
        rest = [a for a in extra if a != "--append"]
        return [flag, path, "--format", "table", "--min-user", 1, "--min-item", 1, *rest]

    return make


def parquet(columns: dict, *extra):
    """`prepare --format table` of a Parquet file with these columns (user, item, timestamp)."""

    def make(work, tmp):
        path = tmp / "log.parquet"
        pq.write_table(pa.table(columns), path)
        return ["--source", path, "--format", "table", "--min-user", 1, "--min-item", 1, *extra]

    return make


GOOD_CSV = "user,item,timestamp\na,x,1000\nb,y,2000\nc,z,3000\n"


def with_tables(items: bytes | None = None, users: bytes | None = None, suffix: str = ".csv"):
    """The good log with an items and/or a users table of these bytes."""

    def make(work, tmp):
        log = tmp / "log.csv"
        log.write_text(GOOD_CSV)
        args = ["--source", log, "--format", "table", "--min-user", 1, "--min-item", 1]
        for flag, data in (("--items", items), ("--users", users)):
            if data is not None:
                path = tmp / f"{flag[2:]}{suffix}"
                path.write_bytes(data)
                args += [flag, path]
        return args

    return make


def layout(fmt: str, write, edit):
    """`prepare --format FMT` of a folder (or zip) in that layout, edited by `edit(folder)`."""

    def make(work, tmp):
        folder = write(tmp / fmt)
        source = edit(folder) or folder
        return ["--source", source, "--format", fmt, "--min-user", 1, "--min-item", 1]

    return make


def replace_line(name: str, line: int, text: bytes):
    def edit(folder):
        path = folder / name
        lines = path.read_bytes().splitlines()
        lines[line - 1] = text
        path.write_bytes(b"\n".join(lines) + b"\n")

    return edit


def corrupt_zip(folder: Path) -> Path:
    """A zip with a member that fails its CRC check."""
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.iterdir()):
            z.write(p, p.name)
    data = bytearray(path.read_bytes())
    at = data.find(b"::") + 10  # inside the first member's stored bytes
    data[at] = ord("7") if data[at] != ord("7") else ord("8")
    path.write_bytes(bytes(data))
    return path


def damage(rel: str, how: str, *args):
    """Damage one artifact of the copy, then run with `args`."""

    def make(work, tmp):
        path = work / rel
        if how == "delete":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif how == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif how == "garbage":
            path.write_bytes(b"\x00garbage{" * 9)
        elif how == "header":  # a safetensors header length far past the end of the file
            data = path.read_bytes()
            path.write_bytes((2**40).to_bytes(8, "little") + data[8:])
        else:
            raise ValueError(how)
        return list(args)

    return make


def edit_json(rel: str, change, *args):
    def make(work, tmp):
        path = work / rel
        d = json.loads(path.read_text())
        path.write_text(json.dumps(change(d)))
        return list(args)

    return make


def drop(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def strip_layout(work, tmp):
    path = work / "sids" / "sids.parquet"
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    return []


def pickle_only_model(work, tmp):
    """A model folder with a config and a pickle checkpoint only."""
    folder = tmp / "model"
    folder.mkdir()
    shutil.copy(work / "llm" / "backbone" / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not loaded")
    return [*TINY, "--round", 0, "--track", "other", "--base-model", folder]


def nan_fused(work, tmp):
    path = work / "items" / "item_emb.safetensors"
    arrays, meta = store.read_tensors(path)
    arrays["fused"][3, 1] = np.nan
    store.write_tensors(path, arrays, meta)
    return []


def truncated_parquet(work, tmp):
    path = tmp / "log.parquet"
    pq.write_table(pa.table({"user": ["a"], "item": ["x"], "timestamp": [1]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    return ["--source", path, "--format", "table"]


def current_adapter_damaged(work, tmp):
    """The Novelty adapter the next round starts from, with a broken header."""
    state = json.loads((work / "pco" / "state.json").read_text())
    damage(f"{state['current']['novelty']}/adapter_model.safetensors", "header")(work, tmp)
    return [*TINY, "--round", 1]


def outside(work, tmp):
    return ["--out", str(tmp / "escape")]


def config(text: str):
    def make(work, tmp):
        path = tmp / "c.toml"
        path.write_text(text)
        return ["--config", path]

    return make


def directory_named_csv(work, tmp):
    folder = tmp / "x.csv"
    folder.mkdir()
    return ["--source", folder, "--format", "table"]


def directory_appended(work, tmp):
    folder = tmp / "week.csv"
    folder.mkdir()
    return ["--append", folder, "--format", "table"]


BIG = 2**63
LATIN = "user,item,timestamp\na,x,1000\nb,caf\xe9,2000\n".encode("latin-1")

CASES = [
    # ---- prepare: table files (CSV, TSV, Parquet)
    ("prepare", raw("log.csv", LATIN), ("log.csv", "line 3", "utf-8")),
    ("prepare", raw("log.tsv", LATIN.replace(b",", b"\t")), ("log.tsv", "line 3", "utf-8")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,1\nb,y,99999999999999999999999\n"),
     ("log.csv", "row 2", "timestamp")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,1\nb,y,nan\n"),
     ("log.csv", "row 2", "timestamp")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,inf\nb,y,2\n"),
     ("log.csv", "row 1", "timestamp")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,1.5\nb,y,-1e300\n"),
     ("log.csv", "row 2", "timestamp")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,1\nb,y,\n"),
     ("log.csv", "row 2", "timestamp")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,1\n,y,2\n"),
     ("log.csv", "row 2", "user")),
    ("prepare", raw("log.csv", "user,item,timestamp\na,x,1\nb,y,2,9\n"), ("log.csv", "line 3")),
    ("prepare", raw("log.csv", "user,item,timestamp\n"), ("log.csv", "empty")),
    ("prepare", raw("log.csv", "uid,iid,ts\na,x,1\n"), ("log.csv", "missing column")),
    ("prepare", raw("log.xlsx", "user,item,timestamp\na,x,1\n"), ("log.xlsx", ".xlsx")),
    ("prepare", raw("log.csv", "user,item,timestamp,rating\na,x,1,5\nb,y,2,five\n"),
     ("log.csv", "rating")),
    ("prepare", directory_named_csv, ("x.csv", "folder")),
    ("prepare", parquet({"user": ["a", "b"], "item": ["x", "y"], "timestamp": [1.0, math.nan]}),
     ("log.parquet", "row 2", "timestamp")),
    ("prepare", parquet({"user": ["a", "b"], "item": ["x", "y"],
                         "timestamp": pa.array([1, 2**64 - 1], pa.uint64())}),
     ("log.parquet", "row 2", "timestamp")),
    ("prepare", parquet({"user": ["a", "b"], "item": ["x", "y"], "timestamp": [1e300, 1.0]}),
     ("log.parquet", "row 1", "timestamp")),
    ("prepare", parquet({"user": ["a", "b"], "item": ["x", "y"], "timestamp": [1.0, -math.inf]}),
     ("log.parquet", "row 2", "timestamp")),
    ("prepare", parquet({"user": ["a", "b"], "item": ["x", "y"],
                         "timestamp": pa.array([1, -10**6], pa.date32())}),
     ("log.parquet", "row 2", "timestamp")),
    ("prepare", parquet({"user": [[1], [2]], "item": ["x", "y"], "timestamp": [1, 2]}),
     ("log.parquet", "column user", "list")),
    ("prepare", parquet({"user": ["a", "b"], "item": [{"k": 1}, {"k": 2}], "timestamp": [1, 2]}),
     ("log.parquet", "column item", "struct")),
    ("prepare", parquet({"user": ["a", "b"], "item": pa.array([b"x", b"\xff\xfe"], pa.binary()),
                         "timestamp": [1, 2]}),
     ("log.parquet", "row 2", "column item", "utf-8")),
    ("prepare", parquet({"user": [1.0, 1.5], "item": ["x", "y"], "timestamp": [1, 2]}),
     ("log.parquet", "row 2", "column user")),
    ("prepare", parquet({"user": [float(BIG), float(BIG + 4096)], "item": ["x", "y"],
                         "timestamp": [1, 2]}),
     ("log.parquet", "row 1", "column user")),
    ("prepare", parquet({"user": [1.0, math.nan], "item": ["x", "y"], "timestamp": [1, 2]}),
     ("log.parquet", "row 2", "column user")),
    ("prepare", parquet({"user": [True, False], "item": ["x", "y"], "timestamp": [1, 2]}),
     ("log.parquet", "column user", "bool")),
    ("prepare", truncated_parquet, ("log.parquet", "Parquet")),
    # ---- prepare: items and users tables
    ("prepare", with_tables(items=b"item,title\nx,A\nx,B\n"), ("items.csv", "row 2", "'x' repeats row 1")),
    ("prepare", with_tables(items="item,title\nx,A\ny,Caf\xe9\n".encode("latin-1")),
     ("items.csv", "line 3", "utf-8")),
    ("prepare", with_tables(users=b"uid,age\na,3\n"), ("users.csv", "missing column")),
    ("prepare", with_tables(users=b"user,age\na,3\na,4\n"), ("users.csv", "row 2", "'a' repeats row 1")),
    # ---- prepare: --append
    ("prepare", raw("week.csv", LATIN, "--append"), ("week.csv", "line 3", "utf-8")),
    ("prepare", raw("week.csv", "user,item,timestamp\nu1,i1,5\n", "--append"),
     ("week.csv", "timestamp", "before")),
    ("prepare", directory_appended, ("week.csv", "folder")),
    # ---- prepare: GroupLens and RecBole layouts
    ("prepare", layout("ml-100k", write_ml100k, replace_line("u.data", 2, b"1\t2\t3\tsoon")),
     ("u.data", "row 2", "timestamp")),
    ("prepare", layout("ml-100k", write_ml100k,
                       replace_line("u.data", 3, b"1\t2\t3\t99999999999999999999999")),
     ("u.data", "row 3", "timestamp")),
    ("prepare", layout("ml-100k", write_ml100k, replace_line("u.item", 2, b"2|short")),
     ("u.item", "line 2")),
    ("prepare", layout("ml-100k", write_ml100k, lambda f: (f / "u.data").unlink()),
     ("u.data", "missing")),
    ("prepare", layout("ml-1m", write_ml1m, replace_line("ratings.dat", 4, b"1::2::3")),
     ("ratings.dat", "line 4")),
    ("prepare", layout("ml-1m", write_ml1m, replace_line("users.dat", 2, b"2::F::old::3::1")),
     ("users.dat", "row 2", "age")),
    ("prepare", layout("ml-1m", write_ml1m, corrupt_zip), ("ml-1m.zip:", "cannot be read")),
    ("prepare", layout("recbole", write_recbole, replace_line("toy.inter", 3, b"1\t2\t3\tnan")),
     ("toy.inter", "row 2", "timestamp")),
    ("prepare", layout("recbole", write_recbole, replace_line("toy.inter", 2, b"1\t2\tx\t5")),
     ("toy.inter", "rating")),
    ("prepare", layout("recbole", write_recbole, replace_line(
        "toy.inter", 1, b"user_id:token\titem_id:token\trating:float\twhen:float")),
     ("toy.inter", "missing column", "timestamp")),
    ("prepare", layout("recbole", write_recbole, replace_line("toy.user", 2, b"1\t\xff\tF\tw")),
     ("toy.user", "line 2", "utf-8")),
    # ---- prepare: options
    ("prepare", opts("--rating-threshold", "nan"), ("--rating-threshold",)),
    ("prepare", opts("--periods", "0.5,nan"), ("--periods",)),
    ("prepare", opts("--periods", "0.5,0.5,inf"), ("--periods",)),
    ("prepare", opts("--min-user", -1), ("--min-user",)),
    ("prepare", opts("--min-item", 0), ("--min-item",)),
    ("prepare", opts("--min-user", 2**64), ("--min-user", "64 bits")),
    ("prepare", raw("log.csv", GOOD_CSV, "--columns", "user=user,when=ts"), ("--columns", "when")),
    ("prepare", config("min_usr = 3\n"), ("c.toml", "min-usr")),
    ("prepare", config("[prepare]\nmin_user = [\n"), ("c.toml", "TOML")),
    # ---- tokenize-items
    ("tokenize-items", damage("data/items.parquet", "truncate"),
     ("data/items.parquet", "coea prepare")),
    ("tokenize-items", damage("data/dataset.json", "garbage"),
     ("data/dataset.json", "coea prepare")),
    ("tokenize-items", opts("--batch-size", 0), ("--batch-size",)),
    ("tokenize-items", opts("--collab-weight", "nan"), ("--collab-weight",)),
    ("tokenize-items", opts("--ppmi-alpha", 2), ("--ppmi-alpha",)),
    # ---- build-sids
    ("build-sids", opts("--seed", -1), ("--seed",)),
    ("build-sids", opts("--levels", 0), ("--levels",)),
    ("build-sids", opts("--lr", "nan"), ("--lr",)),
    ("build-sids", opts("--rebuild", "--codebook-size", 1), ("--codebook-size",)),
    ("build-sids", opts("--hidden", "64,0"), ("--hidden",)),
    ("build-sids", damage("items/item_emb.safetensors", "header", "--rebuild"),
     ("items/item_emb.safetensors", "coea tokenize-items")),
    ("build-sids", damage("items/item_emb.safetensors", "truncate", "--rebuild"),
     ("items/item_emb.safetensors", "coea tokenize-items")),
    ("build-sids", nan_fused, ("items/item_emb.safetensors", "row 3", "coea tokenize-items")),
    # ---- profile-groups
    ("profile-groups", damage("sids/sids.parquet", "truncate"),
     ("sids/sids.parquet", "coea build-sids")),
    ("profile-groups", strip_layout, ("sids/sids.parquet", "layout", "coea build-sids")),
    ("profile-groups", damage("sids/clusters.parquet", "delete"),
     ("sids/clusters.parquet", "coea build-sids")),
    ("profile-groups", opts("--groups", 0), ("--groups",)),
    ("profile-groups", opts("--attr-weight", "-inf"), ("--attr-weight",)),
    ("profile-groups", opts("--profile-model", "no/such/model"), ("--profile-model",)),
    # ---- train-dsie
    ("train-dsie", opts("--out", "../escape"), ("--out", "../escape")),
    ("train-dsie", outside, ("--out", "escape")),
    ("train-dsie", opts("--init-from", "../dsie"), ("--init-from", "../dsie")),
    ("train-dsie", opts("--init-from", "nosuch"), ("nosuch", "coea train-dsie")),
    ("train-dsie", opts("--dropout", 1), ("--dropout",)),
    ("train-dsie", opts("--lr", "inf"), ("--lr",)),
    ("train-dsie", opts("--cutoff", 99), ("--cutoff",)),
    ("train-dsie", opts("--seed", 2**32), ("--seed",)),
    ("train-dsie", damage("groups/group_emb.safetensors", "garbage"),
     ("groups/group_emb.safetensors", "coea profile-groups")),
    ("train-dsie", damage("data/interactions.parquet", "truncate"),
     ("data/interactions.parquet", "coea prepare")),
    # ---- pco-round
    ("pco-round", opts("--round", -1), ("--round",)),
    ("pco-round", opts("--holdout", 2), ("--holdout",)),
    ("pco-round", opts("--holdout", "nan"), ("--holdout",)),
    ("pco-round", opts("--track", "../../x"), ("--track", "../../x")),
    ("pco-round", opts("--tau-neg", 0.9, "--tau-pos", 0.5), ("--tau-neg",)),
    ("pco-round", opts("--round", 5), ("--round 5",)),
    ("pco-round", opts("--round", 2), ("--round 2", "test period")),
    ("pco-round", opts("--template-dir", "no/such/dir"), ("--template-dir",)),
    ("pco-round", pickle_only_model, ("--base-model", "safetensors")),
    ("pco-round", damage("pco/state.json", "garbage"), ("pco/state.json", "coea pco-round")),
    ("pco-round", edit_json("pco/state.json", drop("current")),
     ("pco/state.json", "coea pco-round")),
    ("pco-round", current_adapter_damaged, ("adapter_model.safetensors", "coea pco-round")),
    # ---- recommend
    ("recommend", damage("llm", "delete", *SERVE), ("llm", "coea pco-round")),
    ("recommend", opts("--track", "mian", *SERVE), ("mian", "pco-round")),
    ("recommend", opts("--track", "../x", *SERVE), ("--track", "../x")),
    ("recommend", damage("dsie/dsie.safetensors", "header", *SERVE),
     ("dsie/dsie.safetensors", "coea train-dsie")),
    ("recommend", damage("dsie/config.json", "garbage", *SERVE, "--force"),
     ("dsie/config.json", "coea train-dsie")),
    ("recommend", damage("llm/relevance/round-001/adapter_model.safetensors", "header", *SERVE),
     ("llm/relevance/round-001", "coea pco-round")),
    ("recommend", edit_json("pco/state.json", drop("serving"), *SERVE),
     ("pco/state.json", "coea pco-round")),
    ("recommend", damage("recs/recs.lmdb/data.mdb", "garbage", "--user", "u1"),
     ("recs/recs.lmdb", "coea recommend")),
    ("recommend", opts("--user", "nobody"), ("nobody", "recs.lmdb")),
    ("recommend", opts("--k", 0), ("--k",)),
    ("recommend", opts("--temperature", "nan"), ("--temperature",)),
    ("recommend", opts("--explore-ratio", 1.5), ("--explore-ratio",)),
    ("recommend", opts("--shard", "3/2"), ("--shard",)),
    ("recommend", opts("--shard", "../1"), ("--shard",)),
    ("recommend", opts("--weights", "nan,1"), ("--weights",)),
    ("recommend", opts("--weights", "0,1,1.5"), ("--weights", "W_POPULARITY")),
    ("recommend", opts("--weights", "1,2,0,4"), ("--weights",)),
    ("recommend", opts("--before-period", 99, *SERVE), ("--before-period",)),
    # ---- evaluate and simulate
    ("evaluate", opts("--ks", "0,5"), ("--ks",)),
    ("evaluate", opts("--mmr-lambda", "nan"), ("--mmr-lambda",)),
    ("evaluate", damage("recs/recs.parquet", "truncate", "--ks", 10),
     ("recs/recs.parquet", "coea recommend")),
    ("simulate", opts("--out", "../escape"), ("--out",)),
    ("simulate", opts("--systems", "popularity,oracle"), ("--systems", "oracle")),
    ("simulate", opts("--accept-rate", 1.5), ("--accept-rate",)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[f"{k:03d}-{c[0]}" for k, c in enumerate(CASES)])
def test_bad_input_exits_2_and_writes_nothing(base, tmp_path, case):
    command, make, expect = case
    work = tmp_path / "w"
    shutil.copytree(base, work)
    args = make(work, tmp_path)
    before = tree(work)
    code, stderr = cli(command, *args, "--work", work)
    assert code == 2, (code, stderr)
    message = " ".join(stderr.split())  # joined as one line, however it wrapped
    for text in expect:
        assert text in message, (text, stderr)
    assert "Traceback" not in stderr
    assert tree(work) == before


def cli(*args) -> tuple[int, str]:
    """Exit code and stderr of `coea ARGS` run as the installed command runs it (`main`
    reads --config), in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return code, err.getvalue()


def test_table_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    assert {c[0] for c in CASES} >= {
        "prepare", "tokenize-items", "build-sids", "profile-groups", "train-dsie", "pco-round",
        "recommend", "evaluate", "simulate",
    }  # fmt: skip


# ---------------------------------------------------------------- ids kept exact


def test_huge_integer_ids_round_trip(tmp_path):
    """CSV user ids beyond int64 are kept as their exact text: none merged."""
    users = [str(BIG + k) for k in range(20)]
    text = "user,item,timestamp\n" + "".join(f"{u},i{k % 3},{k}\n" for k, u in enumerate(users))
    path = tmp_path / "log.csv"
    path.write_text(text)
    work = tmp_path / "w"
    r = coea("prepare", "--source", path, "--format", "table", "--min-user", 1, "--min-item", 1,
             "--periods", 2, "--work", work)  # fmt: skip
    assert r.code == 0, r.stderr
    got = pq.read_table(work / "data" / "users.parquet")["original_id"].to_pylist()
    assert sorted(got) == sorted(users)


# ---------------------------------------------------------------- the table reader, fuzzed

ID_VALUES = {
    "int": st.integers(-(2**63), 2**63 - 1),
    "uint": st.integers(0, 2**64 - 1),
    "huge": st.integers(2**63, 2**80),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "text": st.text(min_size=1, max_size=6),
    "bytes": st.binary(min_size=1, max_size=4),
    "list": st.lists(st.integers(0, 3), max_size=2),
    "bool": st.booleans(),
}
GOOD_TIMES = st.integers(0, 2_000_000_000)
ODD_TIMES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**64 - 1),
    st.text(max_size=12),
)
ARROW = {
    "int": pa.int64(), "uint": pa.uint64(), "huge": None, "float": pa.float64(),
    "text": pa.string(), "bytes": pa.binary(), "list": pa.list_(pa.int64()), "bool": pa.bool_(),
}  # fmt: skip


@st.composite
def logs(draw):
    n = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(sorted(ID_VALUES)))
    users = draw(st.lists(ID_VALUES[kind], min_size=n, max_size=n))
    items = draw(st.lists(st.sampled_from(["x", "y", "z"]), min_size=n, max_size=n))
    odd = draw(st.booleans())
    times = draw(st.lists(ODD_TIMES if odd else GOOD_TIMES, min_size=n, max_size=n))
    fmt = draw(st.sampled_from(["parquet", "csv", "tsv"]))
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return kind, users, items, times, fmt, encoding


def _write_log(folder: Path, kind, users, items, times, fmt, encoding) -> Path | None:
    if fmt == "parquet":
        try:
            t = pa.table(
                {"user": pa.array(users, ARROW[kind]), "item": items, "timestamp": pa.array(times)}
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return None  # no such Parquet column (e.g. ints beyond uint64, mixed times)
        path = folder / "log.parquet"
        pq.write_table(t, path)
        return path
    sep = "," if fmt == "csv" else "\t"
    cells = [str(v) for v in users + times]
    if kind in ("list", "bytes") or any(c in v for v in cells for c in (sep, "\n", "\r", '"')):
        return None  # cells CSV would quote or split
    text = f"user{sep}item{sep}timestamp\n"
    text += "".join(f"{u}{sep}{i}{sep}{t}\n" for u, i, t in zip(users, items, times, strict=True))
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        return None
    if encoding != "utf-8" and data != text.encode():
        try:
            data.decode("utf-8")
            return None  # other bytes that happen to be valid UTF-8: no reader can tell
        except UnicodeDecodeError:
            pass
    path = folder / f"log.{fmt}"
    path.write_bytes(data)
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_table_reader_rejects_or_round_trips(tmp_path_factory, log):
    """Either a BadInput naming the file, or every row's user id comes back as the exact
    text (CSV) or value (Parquet) it was, with no two original ids merged."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = _write_log(folder, *log)
    if path is None:
        event("no such file")
        return
    kind, users, _, times, fmt, _ = log
    try:
        raw = read_source(path, "table")
        prepared = prepare_log(
            raw, min_user=1, min_item=1, rating_threshold=None, dedup=False, fractions=[0.5, 0.5]
        )
    except BadInput as e:
        assert path.name in str(e)
        event("rejected")
        return
    event(f"read: {kind} ids, {fmt}")
    inter = prepared.interactions
    original = prepared.users["original_id"].to_pylist()
    got = Counter(original[u] for u in inter["user_id"].to_pylist())
    want = Counter(_as_text(u, fmt) for u in users)
    assert got == want
    assert len(set(original)) == len(original)  # no two original ids share a dense id
    ts = inter["timestamp"].to_numpy()
    assert ((ts >= TIME_MIN) & (ts <= TIME_MAX)).all()
    if all(isinstance(t, int) for t in times):
        assert sorted(ts.tolist()) == sorted(times)


def _as_text(value, fmt: str) -> str:
    """The original id as text: the CSV cell itself, a Parquet integer in decimal, an integral
    Parquet float as the integer it holds, a Parquet string as is."""
    if fmt != "parquet":
        return str(value)
    if isinstance(value, float):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
