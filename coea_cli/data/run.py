"""The `prepare` command: read, filter, split, write."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from coea_cli import console, store
from coea_cli.common import Ctx, skip_if_fresh
from coea_cli.data.prepare import Prepared, append_log, parse_periods, prepare_log
from coea_cli.data.readers import FORMATS, read_source
from coea_cli.errors import BadInput, MissingArtifact


def data_paths(work: Path) -> dict:
    d = Path(work) / "data"
    return {
        "dir": d,
        "interactions": d / "interactions.parquet",
        "items": d / "items.parquet",
        "users": d / "users.parquet",
        "dataset": d / "dataset.json",
    }


def load_prepared(work: Path) -> Prepared:
    p = data_paths(work)
    if not p["dataset"].exists():
        raise MissingArtifact(p["dataset"], "prepare")
    return Prepared(
        store.read_parquet(p["interactions"]),
        store.read_parquet(p["items"]),
        store.read_parquet(p["users"]),
        store.read_json(p["dataset"]),
    )


def run_prepare(ctx: Ctx) -> dict:
    import pyarrow as pa

    # The system allocator hands large freed buffers back at once: lower peak memory.
    pa.set_memory_pool(pa.system_memory_pool())
    o = ctx.options
    if o["format"] not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)} (got {o['format']!r})")
    parse_periods(o["periods"])
    if o["append"] is not None:
        with store.workspace_lock(ctx.work, "prepare --append"):
            return _append(ctx)
    if o["source"] is not None and o["dataset"] is not None:
        raise BadInput("give either --dataset or --source, not both")
    if o["source"] is None:
        from coea_cli.data.fetch import embedded_dataset

        name = o["dataset"] or "ml-100k"
        console.log(f"using the embedded {name} (RecBole atomic files)")
        source, fmt = embedded_dataset(name), "recbole"
    else:
        source, fmt = Path(o["source"]), o["format"]
        if not source.exists():
            raise BadInput(f"source not found: {source}")
    inputs = [source] + [Path(x) for x in (o["items"], o["users"]) if x is not None]
    options = {k: v for k, v in o.items() if k != "append"}
    paths = data_paths(ctx.work)
    checked = store.Stage(paths["dir"], "prepare", options, inputs, ctx.seed)
    if skip_if_fresh(ctx, checked.up_to_date(), str(paths["dir"])):
        return _summary(load_prepared(ctx.work), fresh=True)
    with store.stage(paths["dir"], "prepare", options, checked=checked) as st:
        console.log(f"reading {source} ({fmt})")
        raw = read_source(source, fmt, o["columns"], o["items"], o["users"])
        prepared = prepare_log(
            raw,
            min_user=o["min_user"],
            min_item=o["min_item"],
            rating_threshold=o["rating_threshold"],
            dedup=o["dedup"],
            periods=o["periods"],
        )
        prepared.stats.update(
            {"source": str(source), "format": fmt, "columns": o["columns"], "appended": []}
        )
        _write(st.tmp, prepared)
    return _summary(prepared)


def _append(ctx: Ctx) -> dict:
    o = ctx.options
    existing = load_prepared(ctx.work)
    path = Path(o["append"])
    if not path.exists():
        raise BadInput(f"--append: file not found: {path}")
    digest = store.sha256_path(path)
    done = existing.stats.get("appended", [])
    if any(a["sha256"] == digest for a in done):
        console.log(f"{path} was already appended; nothing to do")
        return _summary(existing, fresh=True)
    fmt = o["format"] if o["format"] != "recbole" or path.is_dir() else "table"
    raw = read_source(
        path, fmt, o["columns"] or existing.stats.get("columns"), o["items"], o["users"]
    )
    threshold = existing.stats.get("filters", {}).get("rating_threshold")
    prepared = append_log(existing, raw, rating_threshold=threshold, dedup=o["dedup"])
    prepared.stats["appended"] = [*done, {"path": str(path), "sha256": digest}]
    paths = data_paths(ctx.work)
    old_manifest = store.read_json(paths["dir"] / store.MANIFEST)
    with store.stage(paths["dir"], "prepare", old_manifest["options"], [], ctx.seed) as st:
        st.extra = {"appended": prepared.stats["appended"]}
        _write(st.tmp, prepared)
    console.log(f"appended period {prepared.stats['periods'][-1]['period']} from {path}")
    return _summary(prepared)


def _write(folder: Path, p: Prepared) -> None:
    n_u, n_i, n = p.users.num_rows, p.items.num_rows, p.interactions.num_rows
    p.stats.update(
        {
            "users": n_u,
            "items": n_i,
            "interactions": n,
            "density": n / max(1, n_u * n_i),
            "test_period": int(pc.max(p.interactions["period"]).as_py()),
            "id_maps": "items.parquet and users.parquet: original_id column by dense id",
        }
    )
    store.write_parquet(folder / "interactions.parquet", p.interactions)
    store.write_parquet(folder / "items.parquet", p.items)
    store.write_parquet(folder / "users.parquet", p.users)
    store.write_json(folder / "dataset.json", p.stats)


def _summary(p: Prepared, fresh: bool = False) -> dict:
    s = p.stats
    raw = s["counts"]["raw"]
    console.log(
        f"raw log: {raw['users']:,} users, {raw['items']:,} items, "
        f"{raw['interactions']:,} interactions (before filters)"
    )
    console.log(
        f"kept: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions, "
        f"density {s['density']:.4%}"
    )
    for row in s["periods"]:
        console.log(
            f"  period {row['period']}: {row['interactions']:,} interactions, "
            f"{row['users']:,} users"
        )
    return {
        "status": "up to date" if fresh else "written",
        "raw": raw,
        "users": s["users"],
        "items": s["items"],
        "interactions": s["interactions"],
        "density": round(s["density"], 6),
        "periods": [r["interactions"] for r in s["periods"]],
        "filters": s["counts"],
    }
