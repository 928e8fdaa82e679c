"""The `recommend` command: top-K lists for every user into LMDB and Parquet, or one lookup."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from coea_cli import console, store
from coea_cli.common import Ctx, skip_if_fresh
from coea_cli.errors import BadInput, MissingArtifact
from coea_cli.pco.models import LLMOptions
from coea_cli.pco.state import MAIN, Track, load_state
from coea_cli.recs.engine import Engine, EngineOptions, Variant
from coea_cli.recs.lists import RECORD, SOURCES, ListOptions


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise BadInput(f"--shard: expected I/N such as 0/4, got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BadInput(f"--shard {spec}: need 0 <= I < N")
    return i, n


def out_dir(work: Path, shard: tuple[int, int] | None) -> Path:
    if shard is None:
        return Path(work) / "recs"
    return Path(work) / "recs" / "shards" / f"{shard[0]}-of-{shard[1]}"


def lookup(work: Path, user: str, shard: tuple[int, int] | None = None) -> dict:
    """One user's list from LMDB, by the user's original id."""
    path = out_dir(work, shard) / "recs.lmdb"
    env = store.open_lmdb(path, command="recommend")
    try:
        with env.begin() as txn:
            dense = txn.get(b"o:" + user.encode())
            if dense is None:
                raise BadInput(f"unknown user {user!r}: not in {path}")
            raw = txn.get(b"u:" + dense)
    finally:
        env.close()
    recs = np.frombuffer(raw, dtype=RECORD)
    items = store.read_parquet(Path(work) / "data" / "items.parquet", ["original_id", "title"])
    orig, titles = items["original_id"].to_pylist(), items["title"].to_pylist()
    rows = [
        {
            "rank": r + 1,
            "item": orig[int(x["item"])],
            "title": titles[int(x["item"])],
            "score": round(float(x["score"]), 4),
            "cluster": int(x["cluster"]),
            "source": SOURCES[int(x["source"])],
        }
        for r, x in enumerate(recs)
    ]
    return {"user": user, "recommendations": rows}


def check_options(o: dict) -> None:
    """The list options `recommend` and `evaluate` share."""
    if "k" in o and o["k"] < 1:
        raise BadInput(f"--k must be at least 1 (got {o['k']})")
    if o["n"] < 1:
        raise BadInput(f"--n must be at least 1 (got {o['n']})")
    if o["top_m"] < 1:
        raise BadInput(f"--top-m must be at least 1 (got {o['top_m']})")
    if not o["temperature"] > 0:
        raise BadInput(f"--temperature must be above 0 (got {o['temperature']})")
    if o["key_recent"] < 0:
        raise BadInput(f"--key-recent must be 0 or more (got {o['key_recent']})")
    if not 0.0 <= o["explore_ratio"] <= 1.0:
        raise BadInput("--explore-ratio must be between 0 and 1")


def run_recommend(ctx: Ctx) -> dict:
    o = ctx.options
    shard = parse_shard(o["shard"])
    if o["user"] is not None:
        return lookup(ctx.work, str(o["user"]), shard)
    check_options(o)
    work = Path(ctx.work)
    track = Track(work, o["track"] or MAIN)
    state = load_state(track)
    if state is None:
        raise MissingArtifact(track.state_path(), "pco-round")
    variant = _variant(work, track, state, o)
    meta = store.read_json(work / "data" / "dataset.json")
    before = int(meta["test_period"]) if o["before_period"] is None else int(o["before_period"])
    folder = out_dir(work, shard)
    inputs = [
        work / "data" / "interactions.parquet",
        work / "sids" / "sids.parquet",
        work / "groups" / "groups.parquet",
        work / "dsie" / "dsie.safetensors",
        variant.novelty,
        variant.relevance,
    ]
    options = {k: v for k, v in o.items() if k != "user"}
    checked = store.Stage(folder, "recommend", options, inputs, ctx.seed)
    if skip_if_fresh(ctx, checked.up_to_date(), str(folder)):
        return {"status": "up to date", **store.read_json(folder / "report.json")}
    llm = LLMOptions(
        base_model=state.get("base_model", "scratch"), device=ctx.device, seed=ctx.seed
    )
    t0 = time.time()
    engine = Engine(work, before, llm)
    users = np.arange(engine.world.n_users, dtype=np.int64)
    if shard is not None:
        users = users[users % shard[1] == shard[0]]
    opt = EngineOptions(
        n=o["n"], temperature=o["temperature"], key_recent=o["key_recent"], seed=ctx.seed,
        lists=ListOptions(k=o["k"], top_m=o["top_m"], explore_ratio=o["explore_ratio"]),
    )  # fmt: skip
    result = engine.recommend(users, variant, opt)
    t1 = time.time()
    originals = store.read_parquet(work / "data" / "users.parquet", ["original_id"])
    originals = originals["original_id"].to_pylist()
    report = {
        "users": len(users),
        "unique_keys": result["keys"],
        "keys_per_user": result["keys"] / max(1, len(users)),
        "variant": variant.name,
        "novelty": str(variant.novelty.relative_to(work)),
        "relevance": str(variant.relevance.relative_to(work)),
        "before_period": before,
        "shard": o["shard"],
        "seconds": {**{k: round(v, 2) for k, v in result["seconds"].items()}},
    }
    with store.stage(folder, "recommend", options, inputs, checked=checked) as st:
        lists = result["lists"]
        store.write_parquet(st.tmp / "recs.parquet", _table(lists))
        s = time.time()
        store.write_lmdb(st.tmp / "recs.lmdb", _records(lists, originals))
        report["seconds"]["write"] = round(time.time() - s, 2)
        report["seconds"]["total"] = round(time.time() - t0, 2)
        report["users_per_second"] = len(users) / max(1e-9, t1 - t0)
        store.write_json(st.tmp / "report.json", report)
    console.log(
        f"recommended {o['k']} items to {len(users):,} users from {result['keys']:,} serving keys "
        f"in {report['seconds']['total']:.1f} s"
    )
    return {"status": "written", **report}


def _variant(work: Path, track: Track, state: dict, o: dict) -> Variant:
    if o["round"] is None:
        cur = state["current"]
        return Variant(f"{track.name}", work / cur["novelty"], work / cur["relevance"], o["dsie"])
    k = int(o["round"])
    entry = next((h for h in state["history"] if h["round"] == k), None)
    if entry is None:
        raise BadInput(f"--round {k}: track {track.name} has no round {k}")
    return Variant(
        f"{track.name}@{k}", work / entry["novelty"], work / entry["relevance"], o["dsie"]
    )


def _table(lists: dict) -> pa.Table:
    users, ranks, items, scores, clusters, sources = [], [], [], [], [], []
    for u in sorted(lists):
        rec = lists[u]
        users += [u] * len(rec)
        ranks += list(range(1, len(rec) + 1))
        items += rec["item"].tolist()
        scores += rec["score"].tolist()
        clusters += rec["cluster"].tolist()
        sources += [SOURCES[s] for s in rec["source"].tolist()]
    return pa.table(
        {
            "user_id": pa.array(users, pa.int32()),
            "rank": pa.array(ranks, pa.int16()),
            "item_id": pa.array(items, pa.int32()),
            "score": pa.array(scores, pa.float32()),
            "cluster": pa.array(clusters, pa.int32()),
            "source": pa.array(sources, pa.string()),
        }
    )


def _records(lists: dict, originals: list[str]):
    for u in sorted(lists):
        dense = str(u).encode()
        yield b"u:" + dense, lists[u].tobytes()
        yield b"o:" + str(originals[u]).encode(), dense
