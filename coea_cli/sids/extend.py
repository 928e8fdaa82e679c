"""SIDs for items added since the last full build: encoded with the trained quantiser, existing
SIDs untouched, collisions resolved at the dedup level.

A new item gets the codes the trained RQ-VAE (or residual k-means) gives its vector; when those
codes equal an existing item's (or an earlier new item's), its dedup code is the next free one
in that bucket. The SID version stays the full build's: no model trained on it sees a changed
SID.

Example: existing codes (levels, dup) [[1, 2, 0], [1, 2, 1], [3, 0, 0]]; new items encoded to
[1, 2] and [0, 0] -> [1, 2, 2] (collision: the bucket's next dup) and [0, 0, 0].
"""

from __future__ import annotations

import numpy as np


def encode(x: np.ndarray, tensors: dict, meta: dict) -> np.ndarray:
    """Codes [M, L] of vectors x [M, d] under the quantiser saved in rqvae.safetensors."""
    layout = meta["meta"]
    levels = int(layout["levels"])
    x = np.ascontiguousarray(x, dtype=np.float32)
    if meta["method"] == "rq-kmeans":
        residual = x.copy()
        codes = []
        for level in range(levels):
            book = tensors[f"codebooks.{level}"].astype(np.float32)
            d = (residual**2).sum(1, keepdims=True) - 2 * residual @ book.T + (book**2).sum(1)
            idx = d.argmin(1)
            residual -= book[idx]
            codes.append(idx)
        return np.stack(codes, 1).astype(np.int64)
    import torch

    from coea_cli.sids.rqvae import RQConfig, _torch_model

    cfg = dict(meta["config"])
    cfg["sizes"], cfg["hidden"] = tuple(cfg["sizes"]), tuple(cfg["hidden"])
    model = _torch_model(int(meta["in_dim"]), RQConfig(**cfg))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()})
    model.eval()
    with torch.no_grad():
        _, codes, *_ = model.quantize(model.encoder(torch.from_numpy(x)))
    return codes.numpy().astype(np.int64)


def extend(existing: np.ndarray, new_levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N + M, L + 1], collided [M]): the existing rows unchanged, then the new items
    with their dedup code; `collided` marks new items whose level codes were taken."""
    levels = existing.shape[1] - 1
    count: dict[tuple, int] = {}
    for row in existing[:, :levels].tolist():
        count[tuple(row)] = count.get(tuple(row), 0) + 1
    out = np.zeros((len(new_levels), levels + 1), dtype=np.int64)
    collided = np.zeros(len(new_levels), dtype=bool)
    for r, row in enumerate(new_levels.tolist()):
        key = tuple(row)
        taken = count.get(key, 0)
        collided[r] = taken > 0
        out[r, :levels] = row
        out[r, levels] = taken
        count[key] = taken + 1
    return np.concatenate([existing.astype(np.int64), out]), collided
