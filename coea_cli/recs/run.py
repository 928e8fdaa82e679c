"""The `recommend` command: top-K lists for every user into LMDB and Parquet, or one lookup;
under torchrun too (see `run_recommend`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from coea_cli import console, dist, store
from coea_cli.common import Ctx
from coea_cli.errors import ArtifactError, BadInput
from coea_cli.options import RecommendOptions
from coea_cli.recs.engine import Engine, track_variant
from coea_cli.recs.lists import Weights
from coea_cli.recs.tune import choose, name_of
from coea_cli.workspace import Dir, Workspace, read_json, read_table
from coea_cli.workspace import recs as recs_store


def lookup(ws: Workspace, user: str, out: Dir) -> dict:
    """One user's list by the user's original id, read as a serving process reads it."""
    from coea_cli.serving import Reader

    with Reader(out.path, check_every=float("inf")) as reader:
        found = reader.get(user)
        if found is None:
            raise BadInput(f"unknown user {user!r}: not in {reader.path}")
        version = reader.version
    titles = ws.item_titles()
    rows = [
        {
            "rank": r + 1,
            "item": item,
            "title": titles[dense] if dense < len(titles) else "",
            "score": round(float(score), 4),
            "cluster": int(cluster),
            "source": source,
        }
        for r, (item, dense, score, cluster, source) in enumerate(
            zip(found.items, found.item_ids, found.scores, found.clusters, found.sources,
                strict=True)
        )
    ]  # fmt: skip
    made = {k: version.get(k) for k in ("track", "round", "generation", "created")}
    return {"user": user, **made, "recommendations": rows}


def run_recommend(ctx: Ctx[RecommendOptions]) -> dict | None:
    """Under torchrun every rank builds the lists, the LLM passes shared among them
    (`llm/decoding.py`); rank 0 alone writes, the others wait for it."""
    o = ctx.opts
    ws = ctx.ws
    out = ws.recs(o.shard_spec())
    rank, size, _ = dist.init_distributed(ctx.device)
    try:
        if o.user is not None or o.merge_shards is not None:  # no model: rank 0 alone
            result = None
            if rank == 0:
                if o.user is not None:
                    result = lookup(ws, str(o.user), out)
                else:
                    result = merge_shards(ctx, o.merge_shards)
            dist.barrier(size)
            return result
        return _recommend(ctx, out, rank, size)
    finally:
        dist.close(size)


def _recommend(ctx: Ctx[RecommendOptions], out: Dir, rank: int, size: int) -> dict:
    o = ctx.opts
    ws = ctx.ws
    shard = o.shard_spec()
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
    t_valid = time.time() - t0
    engine = Engine(ws, int(before), ctx.device)
    users = np.arange(engine.world.n_users, dtype=np.int64)
    if shard is not None:
        users = users[users % shard[1] == shard[0]]
    result = engine.recommend(users, variant, o, o.k, ctx.seed, weights)
    t1 = time.time()
    made = made_by(ws, st, track, variant, int(before), weights)
    report = {
        "users": len(users),
        "variant": variant.name,
        **made,
        "validation": validation,
        "shard": o.shard,
        "seconds": {
            k: round(v, 2) for k, v in {"validation": t_valid, **result["seconds"]}.items()
        },
    }
    if rank == 0:
        with st.write() as tmp:
            lists = recs_store.Lists.from_dict(result["lists"])
            meta = recs_store.new_meta(**made, shard=o.shard)
            write_s = _write(ws, tmp, lists, meta)
            report["generation"] = meta["generation"]
            report["seconds"] |= {"write": round(sum(write_s.values()), 2)}
            report["seconds"]["total"] = round(time.time() - t0, 2)
            report["users_per_second"] = len(users) / max(1e-9, t1 - t0)
            store.write_json(out.file("report", tmp), report)
    report = dist.broadcast(report, 0, size)  # the others wait for the write
    console.log(
        f"recommended {o.k} items to {len(users):,} users in {report['seconds']['total']:.1f} s "
        f"(ranking: {report['weights']}; {variant.name}, round {variant.round})"
    )
    return {"status": "written", **report}


def made_by(ws: Workspace, st, track, variant, before: int, weights) -> dict:
    """What produced the lists: the track and round, the adapters, the DSIE and the SIDs, with
    the hashes of the files served (the same as in the manifest); report.json and the LMDB's
    meta both carry it."""
    hashes = st.input_hashes()
    state = track.require_state()

    def rel(path) -> str:
        return Path(path).relative_to(ws.root).as_posix()

    dsie = ws.dsie().file("model")
    return {
        "track": track.name,
        "round": variant.round,
        "novelty": rel(variant.novelty),
        "relevance": rel(variant.relevance),
        "weights": name_of(weights),
        "before_period": before,
        "models": {
            "novelty": hashes.get(rel(variant.novelty)),
            "relevance": hashes.get(rel(variant.relevance)),
            "dsie": hashes.get(rel(dsie)),
            "backbone": state.get("serving", {}).get("backbone_fingerprint"),
            "sid_version": st.lineage.get("sid_version"),
        },
        "data": st.lineage.get("data"),
    }


def _write(ws: Workspace, folder, lists, meta: dict) -> dict:
    """recs.parquet and recs.lmdb of `lists` into the stage's temporary folder."""
    users, items = ws.original_ids("users"), ws.original_ids("items")
    return recs_store.write(folder, lists, users, items, meta)


def _check_rounds(track, before: int, test: int) -> None:
    """Serving as of `before` needs every round the log allows before it (round k trains on
    period k; the newest period is held out): adapters of an older log are stale."""
    state = track.require_state()
    need = min(before, test) - 1
    if int(state["round"]) < need:
        raise ArtifactError(
            track.state_path(),
            track.producer(),
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


def merge_shards(ctx: Ctx[RecommendOptions], n: int) -> dict:
    """recs/shards/I-of-N (I = 0..N-1) as one store in recs/, exactly what one unsharded run
    with the same options would write (manifest included, so a later plain `recommend` with
    these options is a no-op). Every shard must have been made with these options and seed,
    from the current inputs and by the same models."""
    ws, o = ctx.ws, ctx.opts
    shards = [ws.recs((i, n)) for i in range(n)]
    missing = [i for i, d in enumerate(shards) if not (d.path / store.MANIFEST).exists()]
    if missing:
        names = ", ".join(f"{i}-of-{n}" for i in missing)
        raise ArtifactError(
            ws.recs().path / "shards", f"recommend --shard {missing[0]}/{n}", f"no shard {names}"
        )
    manifests, reports = [], []
    for i, d in enumerate(shards):
        fix = f"recommend --shard {i}/{n}"
        manifests.append(read_json(d.path / store.MANIFEST, fix))
        reports.append(read_json(d.require("report"), fix))
    want = {k: v for k, v in o.recorded().items() if k != "shard"}
    for i, m in enumerate(manifests):
        got = {k: v for k, v in m.get("options", {}).items() if k != "shard"}
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if diff or m.get("seed") != ctx.seed:
            what = ", ".join(f"--{k.replace('_', '-')} {got.get(k)!r}" for k in diff)
            what = what or f"--seed {m.get('seed')}"
            raise BadInput(
                f"{shards[i].path}: made with {what}; merge with the options the shards were "
                "made with"
            )
    keys = manifests[0]["inputs"]
    inputs = {k: (Path(k) if Path(k).is_absolute() else ws.root / k) for k in keys}
    st = ctx.stage(ws.recs().path, inputs)
    current = st.input_hashes()
    same = ("track", "round", "novelty", "relevance", "weights", "before_period", "models")
    for i, (m, r) in enumerate(zip(manifests, reports, strict=True)):
        stale = m["inputs"] != current
        other = any(r.get(k) != reports[0].get(k) for k in same)
        if stale or other:
            why = "its inputs changed since" if stale else "other models than shard 0 made it"
            raise ArtifactError(shards[i].path, f"recommend --shard {i}/{n} --force", why)
    if ctx.fresh(st):
        return {"status": "up to date", **store.read_json(ws.recs().file("report"))}
    t0 = time.time()
    tables = [read_table(d.require("table"), "recommend") for d in shards]
    lists = recs_store.lists_of_table(pa.concat_tables(tables, promote_options="permissive"))
    total = sum(int(r["users"]) for r in reports)
    listed = sum(len(np.unique(t["user_id"].to_numpy())) for t in tables)
    if listed != len(lists.users) or (len(lists.users) and lists.users[-1] >= total):
        raise BadInput(f"{ws.recs().path / 'shards'}: the shards' users overlap")
    lists = lists.padded(total)
    made = {k: reports[0].get(k) for k in (*same, "data")}
    report = {
        "users": total,
        "variant": reports[0].get("variant"),
        **made,
        "validation": reports[0].get("validation"),
        "shard": None,
        "merged_shards": n,
        "seconds": {"shards": [r.get("seconds", {}).get("total") for r in reports]},
    }
    with st.write(carry=["shards"]) as tmp:  # the shards stay: merging again is a no-op
        meta = recs_store.new_meta(**made, shard=None, merged_shards=n)
        _write(ws, tmp, lists, meta)
        report["generation"] = meta["generation"]
        report["seconds"]["merge"] = round(time.time() - t0, 2)
        store.write_json(ws.recs().file("report", tmp), report)
    console.log(f"merged {n} shards: {total:,} users into {ws.recs().path}")
    return {"status": "written", **report}
