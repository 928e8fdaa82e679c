"""The `recommend` command: top-K lists for every user into LMDB and Parquet, or one lookup."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.errors import ArtifactError, BadInput
from coea_cli.options import RecommendOptions
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.recs.lists import RECORD, SOURCES, Weights
from coea_cli.recs.tune import choose, name_of
from coea_cli.workspace import Dir, Workspace


def lookup(ws: Workspace, user: str, out: Dir) -> dict:
    """One user's list from LMDB, by the user's original id."""
    path = out.require("lmdb")
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
    orig, titles = ws.original_ids("items"), ws.item_titles()
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


def run_recommend(ctx: Ctx[RecommendOptions]) -> dict:
    o = ctx.opts
    ws = ctx.ws
    shard = o.shard_spec()
    out = ws.recs(shard)
    if o.user is not None:
        return lookup(ws, str(o.user), out)
    test = int(ws.dataset()["test_period"])
    before = test + 1 if o.latest else test if o.before_period is None else o.before_period
    if before > test + 1:
        raise BadInput(f"--before-period {before}: the log ends with period {test}")
    track = ws.track(o.track)
    if o.round is None:
        _check_rounds(track, before, test)
    variant = track_variant(
        ws, track, ctx.device, ctx.seed, o.round, before=None if o.round is not None else before
    )
    inputs = [ws.data.require("interactions"), ws.sids_dir.require("sids")]
    inputs += [ws.groups_dir.require("groups"), ws.dsie().require("model")]
    inputs += [ws.dsie().require("states"), variant.novelty, variant.relevance]
    if o.fixed_weights() is None and before > 1:  # auto: validated with the DSIE of before - 1
        inputs.append(ws.dsie(ws.dsie_name(before - 1)).require("model"))
    st = ctx.stage(out.path, inputs)
    if ctx.fresh(st):
        return {"status": "up to date", **store.read_json(out.file("report"))}
    t0 = time.time()
    weights, validation = serving_weights(ws, o, int(before), ctx.device, ctx.seed)
    engine = Engine(ws, int(before), ctx.device)
    users = np.arange(engine.world.n_users, dtype=np.int64)
    if shard is not None:
        users = users[users % shard[1] == shard[0]]
    result = engine.recommend(users, variant, o, o.k, ctx.seed, weights)
    t1 = time.time()
    report = {
        "users": len(users),
        "variant": variant.name,
        "weights": name_of(weights),
        "validation": validation,
        "novelty": variant.novelty.relative_to(ws.root).as_posix(),
        "relevance": variant.relevance.relative_to(ws.root).as_posix(),
        "before_period": int(before),
        "shard": o.shard,
        "seconds": {**{k: round(v, 2) for k, v in result["seconds"].items()}},
    }
    with st.write() as tmp:
        lists = result["lists"]
        store.write_parquet(out.file("table", tmp), _table(lists))
        s = time.time()
        store.write_lmdb(out.file("lmdb", tmp), _records(lists, ws.original_ids("users")))
        report["seconds"]["write"] = round(time.time() - s, 2)
        report["seconds"]["total"] = round(time.time() - t0, 2)
        report["users_per_second"] = len(users) / max(1e-9, t1 - t0)
        store.write_json(out.file("report", tmp), report)
    console.log(
        f"recommended {o.k} items to {len(users):,} users in {report['seconds']['total']:.1f} s "
        f"(ranking: {report['weights']})"
    )
    return {"status": "written", **report}


def _check_rounds(track, before: int, test: int) -> None:
    """Serving as of `before` needs every round the log allows before it (round k trains on
    period k; the newest period is held out): adapters of an older log are stale."""
    state = track.require_state()
    need = min(before, test) - 1
    if int(state["round"]) < need:
        producer = "pco-round" + ("" if track.name == "main" else f" --track {track.name}")
        raise ArtifactError(
            track.state_path(),
            producer,
            f"track {track.name} has run rounds up to {state['round']}; serving as of period "
            f"{before} needs round {need} (or serve an older round with --round)",
        )


def serving_weights(ws: Workspace, o: RecommendOptions, before: int, device: str, seed: int):
    """--weights: chosen on the period before `before` (auto), or as given."""
    fixed = o.fixed_weights()
    if fixed == "top-m":
        return None, {"note": "--weights top-m"}
    if fixed is not None:
        return Weights(*fixed), {"note": f"--weights {o.weights}"}
    return choose(ws, ws.track(o.track), before, o, device, seed)


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
