"""The `build-sids` command: item vectors -> unique Collaborative Semantic IDs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.errors import BadInput
from coea_cli.options import SidMethod, SidOptions
from coea_cli.workspace import SidLayout, Workspace, sids_table
from coea_cli.workspace.sids import LETTERS

MAX_AUTO_K = 256


def auto_codebook_size(n_items: int) -> int:
    """K = 2^round(log2(sqrt(N))), clipped to [2, 256] and to N.

    1,349 items -> 32; 1,682 -> 32; 10,000 -> 128; 100,000 -> 256; 80 -> 8.
    """
    k = 2 ** round(math.log2(math.sqrt(max(n_items, 1))))
    return int(min(max(k, 2), MAX_AUTO_K, n_items))


def parse_sizes(spec: str, levels: int, n_items: int) -> tuple[int, ...]:
    """`auto`, one K for every level, or a comma list of L sizes."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return (auto_codebook_size(n_items),) * levels
    try:
        sizes = tuple(int(v) for v in spec.split(","))
    except ValueError:
        raise BadInput(f"--codebook-size: expected auto, K or K1,...,KL (got {spec!r})") from None
    if len(sizes) == 1:
        sizes = sizes * levels
    if len(sizes) != levels:
        raise BadInput(f"--codebook-size: {len(sizes)} sizes for {levels} levels")
    for k in sizes:
        if k < 2:
            raise BadInput(f"--codebook-size: each size must be >= 2 (got {k})")
        if k > n_items:
            raise BadInput(
                f"--codebook-size {k} is larger than the catalogue allows: "
                f"{n_items} items (at most {n_items} codes per level)"
            )
    return sizes


@dataclass
class SidBuild:
    """Codes of every item plus what the report needs."""

    codes: np.ndarray  # [N, L+1] int32: levels then dedup
    sizes: tuple[int, ...]  # level sizes then the dedup level's size
    quantized: object  # rqvae.Quantized
    before: dict  # collisions straight from the quantiser
    after: dict  # collisions after rebalancing (before the dedup level)
    moved: int
    seconds: dict = field(default_factory=dict)


def build_codes(
    x: np.ndarray,
    *,
    method: str,
    sizes: tuple[int, ...],
    cfg=None,
    seed: int = 0,
    device: str = "cpu",
    rebalance: bool = True,
    candidates: int = 16,
    progress: bool = True,
    cpu_threads: int = 1,
) -> SidBuild:
    """Quantise, rebalance colliding last-level codes and add the dedup level.

    numpy's BLAS runs with `cpu_threads` threads (0 = its default) during quantisation:
    the k-means matrices are small enough that one thread is fastest, above all on a busy
    machine.
    """
    from threadpoolctl import threadpool_limits

    from coea_cli.sids.collisions import collision_stats, dedup_level, rebalance_last_level
    from coea_cli.sids.rqvae import rq_kmeans, train_rqvae

    t0 = time.perf_counter()
    with threadpool_limits(cpu_threads if cpu_threads > 0 else None, user_api="blas"):
        if method == "rqvae":
            if cfg is None:
                raise ValueError("the rqvae method needs its RQConfig")
            q = train_rqvae(x, cfg, seed=seed, device=device, progress=progress)
        else:
            q = rq_kmeans(x, sizes, seed=seed, progress=progress)
    t1 = time.perf_counter()
    before = collision_stats(q.codes)
    codes, moved = q.codes, 0
    if rebalance:
        codes, moved = rebalance_last_level(codes, q.last_residual, q.codebooks[-1], candidates)
    after = collision_stats(codes)
    dup = dedup_level(codes, q.last_residual, q.codebooks[-1])
    full = np.concatenate([codes, dup[:, None]], axis=1).astype(np.int32)
    t2 = time.perf_counter()
    return SidBuild(
        codes=full,
        sizes=(*sizes, int(dup.max()) + 1),
        quantized=q,
        before=before,
        after=after,
        moved=moved,
        seconds={"quantise": round(t1 - t0, 3), "collisions": round(t2 - t1, 3)},
    )


def run_build_sids(ctx: Ctx[SidOptions]) -> dict:
    o = ctx.opts
    ws = ctx.ws
    inputs = [ws.data.require("items"), ws.data.require("interactions"), ws.items.require("emb")]
    st = ctx.stage(ws.sids_dir.path, inputs)
    existing = None if o.rebuild or ctx.force else _extendable(ctx)
    if existing is not None:
        n = int(ws.dataset()["items"])
        if existing.n_items == n:
            console.log("every item has a SID (existing SIDs are kept; --rebuild makes new ones)")
            return summary(ws.sid_report(), fresh=True)
        return _extend(ctx, st, existing)
    if not o.rebuild and ctx.fresh(st):
        return summary(ws.sid_report(), fresh=True)

    t0 = time.perf_counter()
    n = int(ws.dataset()["items"])
    x = ws.item_embedding(str(o.embedding))
    sizes = parse_sizes(o.codebook_size, o.levels, n)
    cfg = None
    if o.method == SidMethod.rqvae:
        from coea_cli.sids.rqvae import RQConfig

        cfg = RQConfig.from_options(o, sizes, n)
    console.log(
        f"{o.method}: {n:,} items x {x.shape[1]} dims -> {len(sizes)} levels of {list(sizes)} "
        f"codes ({o.embedding} vectors)"
    )
    build = build_codes(
        x,
        method=str(o.method),
        sizes=sizes,
        cfg=cfg,
        seed=ctx.seed,
        device=ctx.device,
        rebalance=o.rebalance,
        candidates=o.rebalance_candidates,
        cpu_threads=o.cpu_threads,
    )
    items = ws.items_table()
    history = ws.history()
    with st.write() as tmp:
        report = write_outputs(ws, tmp, build, items, history, o, ctx.seed, t0)
        st.extra = {"summary": summary(report)}
    log_report(report)
    return summary(report)


def _extendable(ctx: Ctx[SidOptions]):
    """The existing SIDs, to which new items are added; None when there are none. Existing
    SIDs built with other options or seed are bad input: a new SID version is an explicit
    event (--rebuild), never a side effect of a changed setting."""
    ws = ctx.ws
    manifest = ws.sids_dir.path / store.MANIFEST
    if not (manifest.exists() and ws.sids_dir.file("model").exists()):
        return None
    try:
        recorded = store.read_json(manifest)
        sids = ws.sids(partial=True)
    except (OSError, ValueError, BadInput):
        return None  # unreadable: a full build replaces them
    now = {**store.normalise(ctx.opts.recorded()), "seed": ctx.seed}
    added_since = store.normalise(type(ctx.opts)().recorded())  # options newer than the build
    before = {**added_since, **recorded.get("options", {}), "seed": recorded.get("seed")}
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if changed:
        was = ", ".join(f"{k}={before.get(k)!r}" for k in changed)
        raise BadInput(
            f"sids/ holds SID version {sids.version}, built with {was}; these options would "
            f"build another version. Give --rebuild to build it (models trained on the old "
            f"SIDs must then be retrained), or the recorded options to add new items"
        )
    return sids


def _extend(ctx: Ctx[SidOptions], st, old) -> dict:
    """Encode the items added since the last build; every existing SID is kept."""
    import pyarrow as pa

    from coea_cli.sids.extend import encode, extend
    from coea_cli.workspace.core import read_table, read_tensors

    ws, o = ctx.ws, ctx.opts
    x = ws.item_embedding(str(o.embedding))[old.n_items :]
    tensors, meta = read_tensors(ws.sids_dir.require("model"), "build-sids --rebuild")
    codes, collided = extend(old.codes, encode(x, tensors, meta))
    sizes = (*old.layout.sizes[:-1], max(old.layout.sizes[-1], int(codes[:, -1].max()) + 1))
    layout = SidLayout(sizes, old.layout.method, old.layout.depth)
    report = ws.sid_report()
    added = {
        "revision": old.revision + 1,
        "items": len(x),
        "collision_rate_before_dedup": float(collided.mean()) if len(x) else 0.0,
        "dedup_size": sizes[-1],
    }
    report["additions"] = [*report.get("additions", []), added]
    report["items"], report["codebook_sizes"] = len(codes), list(sizes)
    clusters = read_table(ws.sids_dir.require("clusters"), "build-sids --rebuild")
    labels = layout.clusters.of_codes(codes)
    size = np.bincount(labels, minlength=layout.clusters.size)[clusters["cluster"].to_numpy()]
    clusters = clusters.set_column(
        clusters.column_names.index("size"), "size", pa.array(size.astype(np.int32))
    )
    with st.write(keep=[ws.sids_dir.files["model"]]) as tmp:
        table = sids_table(codes, layout, old.version, old.revision + 1)
        store.write_parquet(ws.sids_dir.file("sids", tmp), table)
        store.write_parquet(ws.sids_dir.file("clusters", tmp), clusters)
        store.write_json(ws.sids_dir.file("report", tmp), report)
        st.extra = {"summary": summary(report), "sid_version": old.version}
    console.log(
        f"{len(x):,} new items encoded with the trained quantiser; "
        f"{added['collision_rate_before_dedup']:.1%} collided before the dedup level; "
        f"{old.n_items:,} existing SIDs kept (version {old.version}, revision "
        f"{old.revision + 1})"
    )
    return summary(report)


def write_outputs(
    ws: Workspace,
    folder: Path,
    build: SidBuild,
    items,
    history,
    o: SidOptions,
    seed: int,
    t0: float,
) -> dict:
    """sids.parquet, rqvae.safetensors, clusters.parquet, report.json; returns the report."""
    import pyarrow as pa

    from coea_cli.sids.clusters import describe_clusters, genre_coherence

    codes, sizes = build.codes, build.sizes
    layout = SidLayout(tuple(sizes), str(o.method), o.cluster_depth)
    n = len(codes)
    t = time.perf_counter()
    store.write_parquet(ws.sids_dir.file("sids", folder), sids_table(codes, layout))
    q = build.quantized
    store.write_tensors(
        ws.sids_dir.file("model", folder),
        q.tensors,
        {"method": str(o.method), "embedding": str(o.embedding), "meta": layout.meta(),
         **_model_meta(q)},
    )  # fmt: skip
    popularity = history.item_counts(1)  # period 0
    categories = items["categories"].to_pylist() if "categories" in items.column_names else None
    titles = items["title"].to_pylist() if "title" in items.column_names else [None] * n
    labels = layout.clusters.of_codes(codes)
    clusters = describe_clusters(labels, layout.clusters, categories, titles, popularity)
    store.write_parquet(
        ws.sids_dir.file("clusters", folder),
        pa.table(
            {
                "cluster": pa.array(clusters["cluster"], pa.int32()),
                "prefix": pa.array(clusters["prefix"], pa.string()),
                "size": pa.array(clusters["size"], pa.int32()),
                "top_categories": pa.array(clusters["top_categories"], pa.list_(pa.string())),
                "description": pa.array(clusters["description"], pa.string()),
            }
        ),
    )
    report = _report(build, layout, o, seed)
    report["genre_coherence"] = genre_coherence(labels, categories, seed) if categories else None
    report["cluster_depth"] = layout.depth
    report["clusters_nonempty"] = int(sum(1 for s in clusters["size"] if s))
    report["seconds"] |= {
        "outputs": round(time.perf_counter() - t, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    store.write_json(ws.sids_dir.file("report", folder), report)
    return report


def _report(build: SidBuild, layout: SidLayout, o: SidOptions, seed: int) -> dict:
    """report.json: levels and their use, collisions, reconstruction, training."""
    from coea_cli.sids.clusters import level_usage

    codes, sizes, q = build.codes, build.sizes, build.quantized
    meta, levels, n = layout.meta(), layout.levels, len(codes)
    unique = len(set(layout.strings(codes)))
    return {
        "method": str(o.method),
        "items": n,
        "embedding": str(o.embedding),
        "dims": int(q.last_residual.shape[1]),
        "levels": levels,
        "codebook_sizes": list(sizes),
        "letters": meta["letters"],
        "dedup_letter": meta["dedup_letter"],
        "vocab_size": int(sum(sizes)),
        "level_stats": [
            {"level": lvl + 1, "letter": LETTERS[lvl], **level_usage(codes[:, lvl], sizes[lvl])}
            for lvl in range(levels + 1)
        ],
        "collisions": {
            "rate_from_quantiser": build.before["rate"],
            "rate_before_dedup": build.after["rate"],
            "items_in_collisions_before_dedup": build.after["in_collisions"],
            "largest_bucket_from_quantiser": build.before["largest_bucket"],
            "largest_bucket": build.after["largest_bucket"],
            "rebalanced_items": build.moved,
            "dedup_size": sizes[-1],
            "definition": "rate = 1 - distinct code tuples / items",
        },
        "unique_sids": unique,
        "all_unique": unique == n,
        "reconstruction": {
            "mse": q.recon_mse,
            "relative": q.recon_relative,
            "error_by_level": q.error_by_level,
            "space": "latent" if o.method == SidMethod.rqvae else "input",
        },
        "training": {k: v for k, v in q.info.items() if k != "config"},
        "seconds": dict(build.seconds),
        "seed": seed,
    }


def _model_meta(q) -> dict:
    keys = ("config", "in_dim", "fit_sample")
    return {k: q.info[k] for k in keys if k in q.info}


def log_report(report: dict) -> None:
    lv1 = report["level_stats"][0]
    col = report["collisions"]
    coh = report["genre_coherence"]
    console.log(
        f"{report['items']:,} items -> {report['unique_sids']:,} unique SIDs; level-1 "
        f"utilisation {lv1['utilisation']:.1%} ({lv1['used']}/{lv1['size']}); collisions "
        f"{col['rate_from_quantiser']:.2%} from the quantiser, {col['rate_before_dedup']:.2%} "
        f"after rebalancing; dedup level size {col['dedup_size']}"
    )
    if coh:
        ratio = f"{coh['ratio']:.2f}x" if coh["ratio"] is not None else "n/a"
        console.log(
            f"genre coherence: same-cluster pairs share a genre {coh['same_cluster']:.1%} vs "
            f"random pairs {coh['random']:.1%} ({ratio})"
        )


def summary(report: dict, fresh: bool = False) -> dict:
    lv1 = report["level_stats"][0]
    col = report["collisions"]
    coh = report["genre_coherence"]
    return {
        "status": "up to date" if fresh else "written",
        "method": report["method"],
        "items": report["items"],
        "codebook_sizes": report["codebook_sizes"],
        "unique_sids": report["unique_sids"],
        "collision_rate_before_dedup": round(col["rate_before_dedup"], 6),
        "collision_rate_from_quantiser": round(col["rate_from_quantiser"], 6),
        "level1_utilisation": round(lv1["utilisation"], 4),
        "cluster_depth": report.get("cluster_depth", 1),
        "clusters_nonempty": report.get("clusters_nonempty"),
        "genre_coherence": (
            {k: coh[k] for k in ("same_cluster", "random", "ratio")} if coh else None
        ),
        "seconds": report["seconds"]["total"],
    }
