"""The `tokenize-items` command: item text, content, collaborative and fused embeddings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.errors import BadInput
from coea_cli.options import TokenizeOptions
from coea_cli.workspace import Workspace
from coea_cli.workspace.core import read_tensors


def run_tokenize_items(ctx: Ctx[TokenizeOptions]) -> dict:
    from coea_cli.items.encoder import encoder_name, resolve_encoder_path

    o = ctx.opts
    ws = ctx.ws
    items_path = ws.data.require("items")
    inputs = {
        "data": ws.data.require("interactions"),
        "items": items_path,
        "text_encoder": resolve_encoder_path(o.text_encoder),
    }
    st = ctx.stage(ws.items.path, inputs)
    if ctx.fresh(st):
        return summary(ws, fresh=True)

    t0 = time.perf_counter()
    items = ws.items_table()
    n = len(items)
    check_items_table(items, items_path)
    ws.history()  # checks every interaction's ids against data/
    inter = ws.interactions(["user_id", "item_id", "timestamp", "period"])

    from coea_cli.items.text import render_texts

    texts = render_texts(items, o.text_template)
    console.log(f"item text, e.g. {texts[0]!r}")
    test = int(ws.dataset()["test_period"])
    fold_before = {"before-test": test, "all": test + 1, "none": None}[str(o.fold_in)]
    tensors, meta = embed_items(
        texts, inter, n, o, device=ctx.device, seed=ctx.seed, fold_before=fold_before
    )
    meta.update({"encoder": encoder_name(o.text_encoder), "template": o.text_template})

    import pyarrow as pa

    with st.write() as tmp:
        store.write_parquet(
            ws.items.file("text", tmp),
            pa.table(
                {
                    "item_id": pa.array(np.arange(n, dtype=np.int32)),
                    "text": pa.array(texts, pa.string()),
                }
            ),
        )
        store.write_tensors(ws.items.file("emb", tmp), tensors, meta)
        st.extra = {
            "summary": {k: meta[k] for k in ("items", "cold", "content_dim", "collab_dim")},
            "compute_seconds": round(time.perf_counter() - t0, 3),
        }
    return summary(ws)


def check_items_table(items, path: Path) -> None:
    """Item ids must be 0..N-1 in row order."""
    if "item_id" not in items.column_names:
        raise BadInput(f"{path}: no item_id column")
    ids = items["item_id"].to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(ids != np.arange(len(ids)))
    if len(bad):
        r = int(bad[0])
        raise BadInput(f"{path}: row {r}: item_id is {ids[r]}, expected {r} (dense ids in order)")
    if len(ids) == 0:
        raise BadInput(f"{path}: no items")


def embed_items(
    texts: list[str], interactions, n_items: int, o: TokenizeOptions, *, device: str, seed: int,
    fold_before: int | None = None,
) -> tuple[dict, dict]:  # fmt: skip
    """Content + collaborative + fused embeddings of all items, in item order."""
    from coea_cli.items.collab import collab_embedding
    from coea_cli.items.encoder import encode_texts, load_text_encoder

    model = load_text_encoder(o.text_encoder, device)
    content = encode_texts(model, texts, batch_size=o.batch_size)
    console.log(f"collaborative embedding from period-0 interactions (dim {o.collab_dim})")
    collab, cold, folded = collab_embedding(
        interactions,
        n_items,
        dim=o.collab_dim,
        window=o.collab_window,
        alpha=o.ppmi_alpha,
        seed=seed,
        fold_before=fold_before,
    )
    if folded:
        console.log(f"{folded:,} items folded in from the periods before {fold_before}")
    collab_weight = o.collab_weight
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
        "collab_window": int(o.collab_window),
        "ppmi_alpha": float(o.ppmi_alpha),
        "cold": int(cold.sum()),
        "collab_period": 0,
        "folded_in": folded,
        "fold_before": fold_before,
        "fused": "concat(content, collab_weight * collab); both parts L2-normalised",
    }
    return tensors, meta


def summary(ws: Workspace, fresh: bool = False) -> dict:
    _, meta = read_tensors(ws.items.require("emb"), "tokenize-items")
    manifest = store.read_json(ws.items.path / store.MANIFEST)
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
        "output": str(ws.items.path),
    }
