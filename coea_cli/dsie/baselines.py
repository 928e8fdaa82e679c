"""Popularity baseline and the leave-one-out ranking helpers shared with DSIE."""

from __future__ import annotations

import numpy as np
import torch

from coea_cli.dsie.data import EvalSet
from coea_cli.metrics import leave_one_out_hr_ndcg

KS = (10, 20)


def masked_ranks(
    scores: torch.Tensor, histories: list[np.ndarray], targets: np.ndarray
) -> np.ndarray:
    """0-based rank of each target in its row of `scores` [B, N] after removing the row's
    history items (the user's other seen items); ties count against the target."""
    s = scores.float().clone()
    rows = torch.arange(s.shape[0], device=s.device)
    tgt = torch.as_tensor(targets, dtype=torch.long, device=s.device)
    own = s[rows, tgt]
    lens = [len(h) for h in histories]
    if sum(lens):
        r = torch.as_tensor(np.repeat(np.arange(len(histories)), lens), device=s.device)
        c = torch.as_tensor(np.concatenate(histories).astype(np.int64), device=s.device)
        s[r, c] = float("-inf")
    s[rows, tgt] = own
    ranks = (s > own[:, None]).sum(1) + (s == own[:, None]).sum(1) - 1
    return ranks.cpu().numpy()


def ranking_metrics(ranks: np.ndarray, ks=KS) -> dict:
    """HR@k and NDCG@k for each k in `ks` from leave-one-out target ranks, plus "ndcg" (no
    cut-off: mean of 1 / log2(rank + 2)) and "mrr" (mean of 1 / (rank + 1)), which use every
    user's rank and so vary less between epochs than the top-k metrics."""
    out: dict = {"users": len(ranks)}
    for k in ks:
        hr, ndcg = leave_one_out_hr_ndcg(ranks, k) if len(ranks) else (float("nan"),) * 2
        out[f"hr@{k}"], out[f"ndcg@{k}"] = round(hr, 6), round(ndcg, 6)
    r = np.asarray(ranks, dtype=np.float64)
    out["ndcg"] = round(float(np.mean(1.0 / np.log2(r + 2.0))), 6) if len(r) else float("nan")
    out["mrr"] = round(float(np.mean(1.0 / (r + 1.0))), 6) if len(r) else float("nan")
    return out


def item_counts(sequences: list[np.ndarray], n_items: int) -> np.ndarray:
    """Interactions per item in the given sequences."""
    flat = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
    return np.bincount(flat.astype(np.int64), minlength=n_items)


def popularity_metrics(counts: np.ndarray, ev: EvalSet, batch_size: int = 1024) -> dict:
    """Rank every item by its training popularity (same for all users), seen items removed."""
    pop = torch.as_tensor(counts, dtype=torch.float32)
    ranks = []
    for start in range(0, len(ev), batch_size):
        sl = slice(start, start + batch_size)
        scores = pop[None, :].expand(len(ev.users[sl]), -1)
        ranks.append(masked_ranks(scores, ev.history[sl], ev.target[sl]))
    return ranking_metrics(np.concatenate(ranks) if ranks else np.zeros(0, np.int64))
