"""Collaborative item embedding: co-occurrence -> PPMI -> truncated SVD.

Only period-0 (initial training) interactions are used, so nothing leaks from the
incremental or test periods. Two items co-occur when the same user interacted with both
(whole history) or, with a window w > 0, within w positions of each other in the user's
chronological sequence.

PPMI with context-distribution smoothing (Levy et al. 2015):

    PMI(i, j) = log( C_ij * sum_k c_k^a / (c_i * c_j^a) ),   c_i = sum_j C_ij
    PPMI = max(PMI, 0)

The embedding is U * sqrt(S) of the rank-d truncated SVD, L2-normalised per item. Items
without any positive PMI in period 0 (above all, items not seen in period 0) get a zero
vector and are flagged cold.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def period_sequences(interactions: pa.Table, period: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) arrays of one period, ordered by user then time (stable)."""
    mask = pc.equal(interactions["period"], period)
    t = interactions.filter(mask)
    user = t["user_id"].to_numpy().astype(np.int64)
    item = t["item_id"].to_numpy().astype(np.int64)
    ts = t["timestamp"].to_numpy()
    order = np.lexsort((ts, user))
    return user[order], item[order]


def cooccurrence(user: np.ndarray, item: np.ndarray, n_items: int, window: int = 0):
    """Symmetric item x item co-occurrence counts (scipy CSR, float64, zero diagonal).

    `user`, `item` must be sorted by user then time. window=0: every pair of distinct items
    in a user's history counts once; window=w: pairs at most w positions apart, counted
    per occurrence.
    """
    import scipy.sparse as sp

    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    if window <= 0:
        _, u = np.unique(user, return_inverse=True)
        x = sp.csr_matrix(
            (np.ones(len(item)), (u, item)), shape=(int(u.max(initial=-1)) + 1, n_items)
        )
        x.data[:] = 1.0  # repeated (user, item) pairs count once
        c = (x.T @ x).tocsr()
    else:
        rows, cols = [], []
        for d in range(1, window + 1):
            same = user[d:] == user[:-d]
            a, b = item[:-d][same], item[d:][same]
            keep = a != b
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c_ = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        c = sp.csr_matrix((np.ones(len(r)), (r, c_)), shape=(n_items, n_items))
    c.setdiag(0)
    c.eliminate_zeros()
    return c


def ppmi(c, alpha: float = 0.75):
    """Positive PMI of a co-occurrence matrix with context smoothing exponent `alpha`."""
    import scipy.sparse as sp

    c = sp.csr_matrix(c, dtype=np.float64)
    row = np.asarray(c.sum(axis=1)).ravel()
    ctx = row**alpha
    total_ctx = ctx.sum()
    if c.nnz == 0 or total_ctx == 0:
        return c
    coo = c.tocoo()
    pmi = np.log(coo.data * total_ctx / (row[coo.row] * ctx[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=c.shape)


def svd_embed(p, dim: int, seed: int = 0) -> np.ndarray:
    """Rank-`dim` embedding U * sqrt(S) of a sparse matrix (deterministic signs and seed).

    When the matrix has fewer non-empty rows than `dim`, the extra columns are zero.
    """
    from sklearn.utils.extmath import randomized_svd

    n = p.shape[0]
    out = np.zeros((n, dim), dtype=np.float32)
    rank = min(dim, int((p.getnnz(axis=1) > 0).sum()) - 1, n - 1)
    if rank < 1 or p.nnz == 0:
        return out
    u, s, _ = randomized_svd(p, n_components=rank, n_iter=7, random_state=seed, flip_sign=True)
    out[:, :rank] = (u * np.sqrt(s)).astype(np.float32)
    return out


def collab_embedding(
    interactions: pa.Table,
    n_items: int,
    dim: int = 64,
    window: int = 0,
    alpha: float = 0.75,
    seed: int = 0,
    period: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Collaborative embedding of every item from one period's interactions.

    Returns (emb float32 [n_items, dim], L2-normalised rows or zero; cold bool [n_items]).
    """
    from coea_cli.items.encoder import l2_normalise

    user, item = period_sequences(interactions, period)
    p = ppmi(cooccurrence(user, item, n_items, window), alpha)
    warm = p.getnnz(axis=1) > 0
    emb = svd_embed(p, dim, seed)
    emb[~warm] = 0.0  # exact zeros, not round-off, for items without co-occurrence
    emb = l2_normalise(emb)
    cold = ~(np.abs(emb).sum(axis=1) > 0)
    return emb, cold
