"""The `tokenize-items` command: item text, content, collaborative and fused embeddings."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from coea_cli import console, store
from coea_cli.common import Ctx, skip_if_fresh
from coea_cli.errors import BadInput, MissingArtifact


def item_paths(work: Path) -> dict:
    d = Path(work) / "items"
    return {"dir": d, "text": d / "item_text.parquet", "emb": d / "item_emb.safetensors"}


def check_items_table(items, path: Path) -> int:
    """Item ids must be 0..N-1 in row order; returns N."""
    if "item_id" not in items.column_names:
        raise BadInput(f"{path}: no item_id column")
    ids = items["item_id"].to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(ids != np.arange(len(ids)))
    if len(bad):
        r = int(bad[0])
        raise BadInput(f"{path}: row {r}: item_id is {ids[r]}, expected {r} (dense ids in order)")
    if len(ids) == 0:
        raise BadInput(f"{path}: no items")
    return len(ids)


def check_interactions(inter, n_items: int, path: Path) -> None:
    for col in ("user_id", "item_id", "timestamp", "period"):
        if col not in inter.column_names:
            raise BadInput(f"{path}: no {col} column")
    item = inter["item_id"].to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((item < 0) | (item >= n_items))
    if len(bad):
        r = int(bad[0])
        raise BadInput(
            f"{path}: row {r}: column item_id = {item[r]} is not an item of "
            f"data/items.parquet (0..{n_items - 1})"
        )


def _check_options(o: dict) -> None:
    if not (math.isfinite(o["collab_weight"]) and o["collab_weight"] >= 0):
        raise BadInput(f"--collab-weight must be a finite number >= 0 (got {o['collab_weight']})")
    if o["collab_dim"] < 1:
        raise BadInput("--collab-dim must be >= 1")
    if o["collab_window"] < 0:
        raise BadInput("--collab-window must be >= 0 (0 = whole period-0 history)")
    if o["batch_size"] < 1:
        raise BadInput("--batch-size must be >= 1")
    if not (0 <= o["ppmi_alpha"] <= 1):
        raise BadInput("--ppmi-alpha must be in [0, 1]")


def run_tokenize_items(ctx: Ctx) -> dict:
    from coea_cli.items.encoder import encoder_name, resolve_encoder_path

    o = ctx.options
    _check_options(o)
    items_path = ctx.path("data", "items.parquet")
    inter_path = ctx.path("data", "interactions.parquet")
    for p in (items_path, inter_path):
        if not p.exists():
            raise MissingArtifact(p, "prepare")
    enc_path = resolve_encoder_path(o["text_encoder"])
    paths = item_paths(ctx.work)
    st = store.Stage(
        paths["dir"], "tokenize-items", o, [items_path, inter_path, enc_path], ctx.seed
    )
    if skip_if_fresh(ctx, st.up_to_date(), str(paths["dir"])):
        return summary(ctx.work, fresh=True)

    t0 = time.perf_counter()
    items = store.read_parquet(items_path)
    n = check_items_table(items, items_path)
    inter = store.read_parquet(inter_path)
    check_interactions(inter, n, inter_path)

    from coea_cli.items.text import render_texts

    texts = render_texts(items, o["text_template"])
    console.log(f"item text, e.g. {texts[0]!r}")
    tensors, meta = embed_items(
        texts,
        inter,
        n,
        encoder=o["text_encoder"],
        device=ctx.device,
        batch_size=o["batch_size"],
        collab_dim=o["collab_dim"],
        collab_window=o["collab_window"],
        collab_weight=o["collab_weight"],
        ppmi_alpha=o["ppmi_alpha"],
        seed=ctx.seed,
    )
    meta.update({"encoder": encoder_name(o["text_encoder"]), "template": o["text_template"]})

    import pyarrow as pa

    with store.stage(paths["dir"], "tokenize-items", o, st.inputs, ctx.seed) as stg:
        store.write_parquet(
            stg.tmp / "item_text.parquet",
            pa.table(
                {
                    "item_id": pa.array(np.arange(n, dtype=np.int32)),
                    "text": pa.array(texts, pa.string()),
                }
            ),
        )
        store.write_tensors(stg.tmp / "item_emb.safetensors", tensors, meta)
        stg.extra = {
            "summary": {k: meta[k] for k in ("items", "cold", "content_dim", "collab_dim")},
            "compute_seconds": round(time.perf_counter() - t0, 3),
        }
    return summary(ctx.work)


def embed_items(
    texts: list[str],
    interactions,
    n_items: int,
    *,
    encoder: str | None,
    device: str,
    batch_size: int,
    collab_dim: int,
    collab_window: int,
    collab_weight: float,
    ppmi_alpha: float,
    seed: int,
) -> tuple[dict, dict]:
    """Content + collaborative + fused embeddings of all items, in item order."""
    from coea_cli.items.collab import collab_embedding
    from coea_cli.items.encoder import encode_texts, load_text_encoder

    model = load_text_encoder(encoder, device)
    content = encode_texts(model, texts, batch_size=batch_size)
    console.log(f"collaborative embedding from period-0 interactions (dim {collab_dim})")
    collab, cold = collab_embedding(
        interactions, n_items, dim=collab_dim, window=collab_window, alpha=ppmi_alpha, seed=seed
    )
    fused = np.concatenate([content, np.float32(collab_weight) * collab], axis=1)
    if not np.isfinite(fused).all():
        raise BadInput("item embeddings contain NaN/Inf")
    tensors = {
        "item_id": np.arange(n_items, dtype=np.int32),
        "content": content,
        "collab": collab,
        "fused": fused.astype(np.float32),
        "cold": cold.astype(np.uint8),
    }
    meta = {
        "items": n_items,
        "content_dim": int(content.shape[1]),
        "collab_dim": int(collab.shape[1]),
        "fused_dim": int(fused.shape[1]),
        "collab_weight": float(collab_weight),
        "collab_window": int(collab_window),
        "ppmi_alpha": float(ppmi_alpha),
        "cold": int(cold.sum()),
        "collab_period": 0,
        "fused": "concat(content, collab_weight * collab); both parts L2-normalised",
    }
    return tensors, meta


def summary(work: Path, fresh: bool = False) -> dict:
    paths = item_paths(work)
    _, meta = store.read_tensors(paths["emb"], "tokenize-items")
    manifest = store.read_json(paths["dir"] / store.MANIFEST)
    console.log(
        f"{meta['items']:,} items: content {meta['content_dim']}-d ({meta['encoder']}), "
        f"collab {meta['collab_dim']}-d x {meta['collab_weight']}, {meta['cold']:,} cold"
    )
    return {
        "status": "up to date" if fresh else "written",
        "items": meta["items"],
        "encoder": meta["encoder"],
        "content_dim": meta["content_dim"],
        "collab_dim": meta["collab_dim"],
        "fused_dim": meta["fused_dim"],
        "collab_weight": meta["collab_weight"],
        "cold": meta["cold"],
        "seconds": manifest.get("compute_seconds"),
        "output": str(paths["dir"]),
    }
