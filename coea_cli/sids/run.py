"""The `build-sids` command: item vectors -> unique Collaborative Semantic IDs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coea_cli import console, store
from coea_cli.common import Ctx, skip_if_fresh
from coea_cli.errors import BadInput, MissingArtifact
from coea_cli.sids import LETTERS, META_KEY, sid_paths, sid_strings

METHODS = ("rqvae", "rq-kmeans")
MAX_AUTO_K = 256


def auto_codebook_size(n_items: int) -> int:
    """K = 2^round(log2(sqrt(N))), clipped to [2, 256] and to N.

    1,349 items -> 32; 1,682 -> 32; 10,000 -> 128; 100,000 -> 256; 80 -> 8.
    """
    k = 2 ** round(math.log2(math.sqrt(max(n_items, 1))))
    return int(min(max(k, 2), MAX_AUTO_K, n_items))


def auto_epochs(n_items: int) -> int:
    """Maximum RQ-VAE epochs: ceil(150,000 / N) clipped to [10, 200].

    Small catalogues need many passes, large ones few (the number of optimiser steps is
    what matters): 1,349 items -> 112 epochs (336 steps of 512); 100,000 items -> 10
    epochs (1,960 steps).
    """
    return int(min(200, max(10, math.ceil(150_000 / max(n_items, 1)))))


def parse_epochs(spec: str, n_items: int) -> int:
    spec = str(spec).strip().lower()
    if spec == "auto":
        return auto_epochs(n_items)
    try:
        epochs = int(spec)
    except ValueError:
        raise BadInput(f"--epochs: expected auto or a positive integer (got {spec!r})") from None
    if epochs < 1:
        raise BadInput("--epochs must be >= 1")
    return epochs


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
    from coea_cli.sids.rqvae import RQConfig, rq_kmeans, train_rqvae

    t0 = time.perf_counter()
    with threadpool_limits(cpu_threads if cpu_threads > 0 else None, user_api="blas"):
        if method == "rqvae":
            cfg = cfg or RQConfig(sizes=sizes, cpu_threads=cpu_threads)
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


def load_embeddings(path: Path, tensor: str, n_items: int) -> np.ndarray:
    """Read one embedding tensor and check it against data/items.parquet."""
    arrays, _ = store.read_tensors(path, "tokenize-items")
    if tensor not in arrays:
        raise BadInput(f"{path}: no tensor {tensor!r} (has {', '.join(sorted(arrays))})")
    x = arrays[tensor]
    if x.ndim != 2:
        raise BadInput(f"{path}: tensor {tensor!r} must be [items, dim], got shape {x.shape}")
    ids = arrays.get("item_id")
    if ids is None:
        raise BadInput(f"{path}: no item_id tensor")
    if len(ids) != n_items or len(x) != n_items:
        raise BadInput(
            f"{path}: {len(ids)} item ids / {len(x)} rows, but data/items.parquet has "
            f"{n_items} items; rerun `coea tokenize-items`"
        )
    bad = np.flatnonzero(ids != np.arange(n_items))
    if len(bad):
        r = int(bad[0])
        raise BadInput(
            f"{path}: row {r} has item_id {ids[r]}, expected {r} (the item order of "
            "data/items.parquet); rerun `coea tokenize-items`"
        )
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise BadInput(
            f"{path}: tensor {tensor!r} has NaN/Inf in {int((~finite).sum())} row(s), "
            f"first at row {r} (item {r})"
        )
    return x.astype(np.float32)


def _check_options(o: dict) -> None:
    if o["method"] not in METHODS:
        raise BadInput(f"--method must be one of {', '.join(METHODS)} (got {o['method']!r})")
    if not 1 <= o["levels"] < len(LETTERS):
        raise BadInput(f"--levels must be 1..{len(LETTERS) - 1}")
    parse_epochs(o["epochs"], 1)
    for name in ("latent_dim", "batch_size", "patience", "init_sample"):
        if o[name] < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be >= 1")
    if o["cpu_threads"] < 0:
        raise BadInput("--cpu-threads must be >= 0 (0 = torch's default)")
    if o["rebalance_candidates"] < 1:
        raise BadInput("--rebalance-candidates must be >= 1")
    if not (o["lr"] > 0 and o["beta"] >= 0):
        raise BadInput("--lr must be > 0 and --beta >= 0")
    try:
        hidden = [int(v) for v in str(o["hidden"]).split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"--hidden: expected comma-separated widths (got {o['hidden']!r})") from None
    if any(h < 1 for h in hidden):
        raise BadInput("--hidden: widths must be >= 1")


def run_build_sids(ctx: Ctx) -> dict:
    o = ctx.options
    _check_options(o)
    emb_path = (
        Path(o["embeddings"]) if o["embeddings"] else ctx.path("items", "item_emb.safetensors")
    )
    items_path = ctx.path("data", "items.parquet")
    inter_path = ctx.path("data", "interactions.parquet")
    for p in (items_path, inter_path):
        if not p.exists():
            raise MissingArtifact(p, "prepare")
    if not emb_path.exists():
        raise MissingArtifact(emb_path, "tokenize-items")
    paths = sid_paths(ctx.work)
    inputs = [emb_path, items_path, inter_path]
    st = store.Stage(paths["dir"], "build-sids", o, inputs, ctx.seed)
    if skip_if_fresh(ctx, st.up_to_date(), str(paths["dir"])):
        return summary(store.read_json(paths["report"]), fresh=True)

    from coea_cli.items.encoder import pick_device
    from coea_cli.items.run import check_items_table

    t0 = time.perf_counter()
    device = pick_device(ctx.device)
    items = store.read_parquet(items_path)
    n = check_items_table(items, items_path)
    x = load_embeddings(emb_path, o["embedding"], n)
    sizes = parse_sizes(o["codebook_size"], o["levels"], n)
    cfg = None
    if o["method"] == "rqvae":
        from coea_cli.sids.rqvae import RQConfig

        cfg = RQConfig(
            sizes=sizes,
            latent=o["latent_dim"],
            hidden=tuple(int(v) for v in str(o["hidden"]).split(",") if v.strip()),
            beta=o["beta"],
            lr=o["lr"],
            batch_size=o["batch_size"],
            epochs=parse_epochs(o["epochs"], n),
            patience=o["patience"],
            init_sample=o["init_sample"],
            cpu_threads=o["cpu_threads"],
        )
    console.log(
        f"{o['method']}: {n:,} items x {x.shape[1]} dims -> {len(sizes)} levels of {list(sizes)} "
        f"codes ({o['embedding']} vectors)"
    )
    build = build_codes(
        x,
        method=o["method"],
        sizes=sizes,
        cfg=cfg,
        seed=ctx.seed,
        device=device,
        rebalance=o["rebalance"],
        candidates=o["rebalance_candidates"],
        cpu_threads=o["cpu_threads"],
    )
    inter = store.read_parquet(inter_path, columns=["item_id", "period"])
    with store.stage(paths["dir"], "build-sids", o, inputs, ctx.seed) as stg:
        report = write_outputs(stg.tmp, build, items, inter, o, ctx.seed, t0)
        stg.extra = {"summary": summary(report)}
    log_report(report)
    return summary(report)


def write_outputs(folder: Path, build: SidBuild, items, inter, o: dict, seed: int, t0: float):
    """sids.parquet, rqvae.safetensors, sid_index.lmdb, clusters.parquet, report.json."""
    import json

    import pyarrow as pa

    from coea_cli.sids.clusters import describe_clusters, genre_coherence, level_usage
    from coea_cli.sids.index import write_index

    codes, sizes = build.codes, build.sizes
    levels = codes.shape[1] - 1
    n = len(codes)
    item_ids = np.arange(n, dtype=np.int32)
    meta = {
        "levels": levels,
        "sizes": list(sizes),
        "letters": list(LETTERS[: levels + 1]),
        "dedup_letter": LETTERS[levels],
        "method": o["method"],
    }
    t = time.perf_counter()
    sids = sid_strings(codes)
    cols = {"item_id": pa.array(item_ids)}
    for level in range(levels):
        cols[f"c{level + 1}"] = pa.array(codes[:, level])
    cols["dup"] = pa.array(codes[:, levels])
    cols["sid"] = pa.array(sids, pa.string())
    table = pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta)})
    store.write_parquet(folder / "sids.parquet", table)

    q = build.quantized
    store.write_tensors(
        folder / "rqvae.safetensors",
        q.tensors,
        {"method": o["method"], "embedding": o["embedding"], "meta": meta, **_model_meta(q)},
    )
    n_records = write_index(folder / "sid_index.lmdb", item_ids, codes, sids, meta)

    period = inter["period"].to_numpy()
    popularity = np.bincount(inter["item_id"].to_numpy()[period == 0], minlength=n)
    categories = items["categories"].to_pylist() if "categories" in items.column_names else None
    titles = items["title"].to_pylist() if "title" in items.column_names else [None] * n
    clusters = describe_clusters(codes[:, 0], sizes[0], categories, titles, popularity)
    store.write_parquet(
        folder / "clusters.parquet",
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
    coherence = genre_coherence(codes[:, 0], categories, seed) if categories else None
    unique = len(set(sids))
    report = {
        "method": o["method"],
        "items": n,
        "embedding": o["embedding"],
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
            "space": "latent" if o["method"] == "rqvae" else "input",
        },
        "genre_coherence": coherence,
        "clusters_nonempty": int(sum(1 for s in clusters["size"] if s)),
        "training": {k: v for k, v in q.info.items() if k != "config"},
        "index_records": n_records,
        "seconds": {
            **build.seconds,
            "outputs": round(time.perf_counter() - t, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
        "seed": seed,
    }
    store.write_json(folder / "report.json", report)
    return report


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
        "genre_coherence": (
            {k: coh[k] for k in ("same_cluster", "random", "ratio")} if coh else None
        ),
        "seconds": report["seconds"]["total"],
    }
