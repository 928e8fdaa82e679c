"""The cron loop as a user runs it: six weeks appended one by one, each followed by
`examples/cron.sh`, with new users and new items every week."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from coea_cli import store
from coea_cli.config import load_default_map
from tests.helpers import coea
from tests.synth import GENRES

ROOT = Path(__file__).resolve().parents[1]
WEEKS = 6
WEEK = 7 * 24 * 3600
CONFIG = """
[build-sids]
hidden = "32"
latent_dim = 8
epochs = "15"
batch_size = 32

[profile-groups]
groups = 3

[train-dsie]
hidden = 32
heads = 2
long_len = 20
short_len = 4
batch_size = 16
epochs = 1

[pco-round]
backbone_hidden = 32
backbone_layers = 1
backbone_steps = 4
round0_epochs = 1
epochs = 1
lora_r = 4
n = 4
batch_size = 32

[recommend]
k = 10
n = 4
"""


def _world(seed: int, n_users: int = 48, n_items: int = 60, new: int = 2):
    """Users and items with genres; the last `new * WEEKS` of each arrive `new` per week."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), n_items)
    likes = [rng.choice(len(GENRES), 2, replace=False) for _ in range(n_users)]
    arrive_u = np.zeros(n_users, dtype=int)
    arrive_i = np.zeros(n_items, dtype=int)
    arrive_u[n_users - new * WEEKS :] = np.repeat(np.arange(1, WEEKS + 1), new)
    arrive_i[n_items - new * WEEKS :] = np.repeat(np.arange(1, WEEKS + 1), new)
    return rng, genre, likes, arrive_u, arrive_i


def _segment(world, week: int, per_user: int, t0: int) -> pa.Table:
    """Interactions of week `week` (0: the initial log, spread over its first six days)."""
    rng, genre, likes, arrive_u, arrive_i = world
    rows = {"user": [], "item": [], "timestamp": []}
    start, span = (t0 + (5 + week) * WEEK, WEEK) if week else (t0, 6 * WEEK)
    for u in np.flatnonzero(arrive_u <= week):
        avail = np.flatnonzero(arrive_i <= week)
        fresh = np.flatnonzero(arrive_i == week)
        for _ in range(per_user):
            liked = avail[np.isin(genre[avail], likes[u])]
            pool = fresh if len(fresh) and rng.random() < 0.15 else liked
            pool = pool if len(pool) else avail
            rows["user"].append(f"u{u}")
            rows["item"].append(f"i{rng.choice(pool)}")
            rows["timestamp"].append(int(start + rng.integers(0, span)))
    return pa.table(rows).sort_by("timestamp")


def _tables(world, folder: Path, week: int, t0: int) -> dict:
    _, genre, _, arrive_u, arrive_i = world
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"week-{week}.csv"
    pacsv.write_csv(_segment(world, week, 24 if week == 0 else 4, t0), log)
    items = np.flatnonzero(arrive_i == week) if week else np.flatnonzero(arrive_i == 0)
    users = np.flatnonzero(arrive_u == week) if week else np.flatnonzero(arrive_u == 0)
    item_path, user_path = folder / f"items-{week}.csv", folder / f"users-{week}.csv"
    pacsv.write_csv(
        pa.table(
            {
                "item": [f"i{i}" for i in items],
                "title": [f"{GENRES[genre[i]]} story {i}" for i in items],
                "categories": [GENRES[genre[i]] for i in items],
            }
        ),
        item_path,
    )
    pacsv.write_csv(
        pa.table(
            {
                "user": [f"u{u}" for u in users],
                "age": [int(18 + 7 * (u % 6)) for u in users],
                "gender": ["MF"[u % 2] for u in users],
            }
        ),
        user_path,
    )
    return {"log": log, "items": item_path, "users": user_path}


@pytest.mark.slow
def test_cron_week_after_week(tmp_path):
    world = _world(int(np.random.default_rng().integers(1000)))
    t0 = 1_600_000_000
    config = tmp_path / "coea.toml"
    config.write_text(CONFIG)
    work = tmp_path / "work"
    first = _tables(world, tmp_path / "raw", 0, t0)
    steps = [
        ("prepare", "--source", first["log"], "--format", "table", "--items", first["items"],
         "--users", first["users"], "--min-user", 1, "--min-item", 1,
         "--periods", "0.5,0.25,0.25"),
        ("tokenize-items",), ("build-sids",), ("profile-groups",), ("train-dsie",),
        ("pco-round", "--rounds", 2), ("recommend", "--latest"),
    ]  # fmt: skip
    defaults = load_default_map(str(config))
    for args in steps:
        r = coea(*args, "--work", work, default_map=defaults)
        assert r.code == 0, (args, r.stderr)

    env = {**os.environ, "COEA": str(Path(sys.executable).parent / "coea"),
           "COEA_CONFIG": str(config), "DSIE_EPOCHS": "1"}  # fmt: skip
    initial_items = store.read_parquet(work / "data" / "items.parquet").num_rows
    recommended_new: set[int] = set()
    for week in range(1, WEEKS + 1):
        before = store.read_parquet(work / "sids" / "sids.parquet")
        new = _tables(world, tmp_path / "raw", week, t0)
        cmd = ["bash", str(ROOT / "examples" / "cron.sh"), str(work), str(new["log"]),
               str(new["items"]), str(new["users"])]  # fmt: skip
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-4000:]
        lines = p.stderr.strip().splitlines()
        assert all(line[:4].isdigit() and line[10] == "T" for line in lines), lines[:3]
        assert lines[-1].endswith("cron: done")

        data = store.read_json(work / "data" / "dataset.json")
        assert data["periods"][-1]["new_items"] == 2 and data["periods"][-1]["new_users"] == 2
        sids = store.read_parquet(work / "sids" / "sids.parquet")
        assert sids.slice(0, before.num_rows).equals(before)  # old SIDs byte-identical
        assert sids.num_rows == data["items"]
        assert sids["item_id"].to_pylist() == list(range(data["items"]))
        assert len(set(sids["sid"].to_pylist())) == sids.num_rows  # one SID per item
        recs = store.read_parquet(work / "recs" / "recs.parquet")
        assert set(recs["user_id"].to_pylist()) == set(range(data["users"]))
        report = store.read_json(work / "recs" / "report.json")
        assert report["before_period"] == data["test_period"] + 1
        items = np.asarray(recs["item_id"].to_pylist())
        recommended_new |= set(items[items >= initial_items].tolist())
    assert recommended_new, "no new item was ever recommended"

    # a rerun of the last week changes nothing
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "already appended; nothing to do" in p.stderr
    assert "nothing to do" in p.stderr and "up to date" in p.stderr
