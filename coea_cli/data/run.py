"""The `prepare` command: read, filter, split, write."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.data.prepare import Prepared, append_log, prepare_log
from coea_cli.data.readers import read_source
from coea_cli.errors import ArtifactError, BadInput
from coea_cli.options import Format, PrepareOptions
from coea_cli.workspace import Workspace


def load_prepared(ws: Workspace) -> Prepared:
    return Prepared(ws.interactions(), ws.items_table(), ws.users_table(), ws.dataset())


def run_prepare(ctx: Ctx[PrepareOptions]) -> dict:
    import pyarrow as pa

    # The system allocator hands large freed buffers back at once: lower peak memory.
    pa.set_memory_pool(pa.system_memory_pool())
    o = ctx.opts
    if o.append is not None:
        with store.workspace_lock(ctx.work, "prepare --append"):
            return _append(ctx)
    if o.source is None:
        from coea_cli.data.fetch import embedded_dataset

        name = str(o.dataset or "ml-100k")
        console.log(f"using the embedded {name} (RecBole atomic files)")
        source, fmt = embedded_dataset(name), Format.recbole
    else:
        source, fmt = Path(o.source), o.format
        if not source.exists():
            raise BadInput(f"--source: not found: {source}")
    external = {
        "source": source,
        **{k: v for k, v in (("items", o.items), ("users", o.users)) if v},
    }
    st = ctx.stage(ctx.ws.data.path, external)
    if ctx.fresh(st):
        return _summary(load_prepared(ctx.ws), fresh=True)
    console.log(f"reading {source} ({fmt})")
    raw = read_source(source, str(fmt), o.columns, o.items, o.users)
    prepared = prepare_log(
        raw,
        min_user=o.min_user,
        min_item=o.min_item,
        rating_threshold=o.rating_threshold,
        dedup=o.dedup,
        fractions=o.period_fractions(),
    )
    prepared.stats.update(
        {"source": str(source), "format": str(fmt), "columns": o.columns, "appended": []}
    )
    with st.write() as tmp:
        _write(ctx.ws, tmp, prepared)
    return _summary(prepared)


def _append(ctx: Ctx[PrepareOptions]) -> dict:
    o = ctx.opts
    ws = ctx.ws
    existing = load_prepared(ws)
    path = Path(o.append)
    if not path.exists():
        raise BadInput(f"--append: file not found: {path}")
    digest = store.sha256_path(path)
    done = existing.stats.get("appended", [])
    if any(a["sha256"] == digest for a in done):
        console.log(f"{path} was already appended; nothing to do")
        return _summary(existing, fresh=True)
    fmt = o.format if o.format != Format.recbole or path.is_dir() else Format.table
    raw = read_source(path, str(fmt), o.columns or existing.stats.get("columns"), o.items, o.users)
    threshold = existing.stats.get("filters", {}).get("rating_threshold")
    prepared = append_log(existing, raw, rating_threshold=threshold, dedup=o.dedup)
    prepared.stats["appended"] = [*done, {"path": str(path), "sha256": digest}]
    manifest = ws.data.path / store.MANIFEST
    try:
        old = store.read_json(manifest)
    except (OSError, ValueError) as e:
        raise ArtifactError(manifest, "prepare", f"not readable ({e})") from None
    # The folder keeps the options and inputs of the first prepare: a rerun of that command
    # stays a no-op only through --append's own check above.
    st = ctx.stage(ws.data.path, {}, old.get("options", {}))
    st.extra = {"appended": prepared.stats["appended"]}
    with st.write() as tmp:
        _write(ws, tmp, prepared)
    console.log(f"appended period {prepared.stats['periods'][-1]['period']} from {path}")
    return _summary(prepared)


def _write(ws: Workspace, folder: Path, p: Prepared) -> None:
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
    store.write_parquet(ws.data.file("interactions", folder), p.interactions)
    store.write_parquet(ws.data.file("items", folder), p.items)
    store.write_parquet(ws.data.file("users", folder), p.users)
    store.write_json(ws.data.file("dataset", folder), p.stats)


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
