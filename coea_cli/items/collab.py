"""Collaborative item embedding: co-occurrence -> PPMI -> truncated SVD.

The factors come from period-0 (initial training) interactions only, so nothing leaks from
the incremental or test periods into them. Two items co-occur when the same user interacted with both
(whole history) or, with a window w > 0, within w positions of each other in the user's
chronological sequence.

PPMI with context-distribution smoothing (Levy et al. 2015):

    PMI(i, j) = log( C_ij * sum_k c_k^a / (c_i * c_j^a) ),   c_i = sum_j C_ij
    PPMI = max(PMI, 0)

The embedding is U * sqrt(S) of the rank-d truncated SVD, L2-normalised per item. Items
without any positive PMI in period 0 (above all, items not seen in period 0) are folded in
from later periods when allowed: their PPMI rows against the period-0 items, from the
co-occurrences of the later periods (with period 0's context counts), are projected with the
same factors, p V S^(-1/2), which gives a period-0 item its own vector back (to the
precision of the randomised SVD). Items with no co-occurrence at all get a zero vector and
are flagged cold. Period-0 items never change, so neither do the SIDs built from them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def period_sequences(
    interactions: pa.Table, period: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) arrays of one period (None: every row), ordered by user then time."""
    t = (
        interactions
        if period is None
        else interactions.filter(pc.equal(interactions["period"], period))
    )
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


def svd_factors(p, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U [n, r], S [r], Vt [r, n]) of the rank-r truncated SVD, r = min(dim, non-empty rows - 1,
    n - 1); empty factors when the matrix is too small. Deterministic signs and seed."""
    from sklearn.utils.extmath import randomized_svd

    n = p.shape[0]
    rank = min(dim, int((p.getnnz(axis=1) > 0).sum()) - 1, n - 1)
    if rank < 1 or p.nnz == 0:
        return np.zeros((n, 0)), np.zeros(0), np.zeros((0, n))
    return randomized_svd(p, n_components=rank, n_iter=7, random_state=seed, flip_sign=True)


def svd_embed(p, dim: int, seed: int = 0) -> np.ndarray:
    """Rank-`dim` embedding U * sqrt(S) of a sparse matrix (deterministic signs and seed).

    When the matrix has fewer non-empty rows than `dim`, the extra columns are zero.
    """
    u, s, _ = svd_factors(p, dim, seed)
    out = np.zeros((p.shape[0], dim), dtype=np.float32)
    out[:, : len(s)] = (u * np.sqrt(s)).astype(np.float32)
    return out


def fold_in_rows(c_new, c0, vt: np.ndarray, s: np.ndarray, alpha: float, dim: int) -> np.ndarray:
    """Embeddings [m, dim] of rows whose co-occurrences with the period-0 items are `c_new`
    [m, n]: their PPMI against period 0's context counts (from `c0`), times V S^(-1/2)."""
    import scipy.sparse as sp

    c_new = sp.csr_matrix(c_new, dtype=np.float64)
    out = np.zeros((c_new.shape[0], dim), dtype=np.float32)
    ctx = np.asarray(sp.csr_matrix(c0).sum(axis=1)).ravel() ** alpha
    row = np.asarray(c_new.sum(axis=1)).ravel()
    if not len(s) or ctx.sum() == 0 or c_new.nnz == 0:
        return out
    coo = c_new.tocoo()
    known = ctx[coo.col] > 0
    r, c, v = coo.row[known], coo.col[known], coo.data[known]
    pmi = np.log(v * ctx.sum() / (row[r] * ctx[c]))
    keep = pmi > 0
    p = sp.csr_matrix((pmi[keep], (r[keep], c[keep])), shape=c_new.shape)
    out[:, : len(s)] = (p @ vt.T / np.sqrt(s)).astype(np.float32)
    return out


def collab_embedding(
    interactions: pa.Table,
    n_items: int,
    dim: int = 64,
    window: int = 0,
    alpha: float = 0.75,
    seed: int = 0,
    fold_before: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Collaborative embedding of every item from period 0, with the items period 0 does not
    place folded in from the periods before `fold_before` (None: none).

    Returns (emb float32 [n_items, dim], L2-normalised rows or zero; cold bool [n_items];
    the number of items folded in).
    """
    from coea_cli.items.encoder import l2_normalise

    user, item = period_sequences(interactions, 0)
    c0 = cooccurrence(user, item, n_items, window)
    p = ppmi(c0, alpha)
    warm = p.getnnz(axis=1) > 0
    u, s, vt = svd_factors(p, dim, seed)
    emb = np.zeros((n_items, dim), dtype=np.float32)
    emb[:, : len(s)] = (u * np.sqrt(s)).astype(np.float32)
    emb[~warm] = 0.0  # exact zeros, not round-off, for items without co-occurrence
    folded = 0
    if fold_before is not None and fold_before > 1 and (~warm).any():
        periods = interactions["period"].to_numpy()
        later = interactions.filter(pa.array(periods < fold_before))
        u_all, i_all = period_sequences(later, None)
        rows = np.flatnonzero(~warm)
        c_new = cooccurrence(u_all, i_all, n_items, window)[rows][:, np.flatnonzero(warm)]
        full = np.zeros((len(rows), n_items))
        full[:, np.flatnonzero(warm)] = c_new.toarray()
        vec = fold_in_rows(full, c0, vt, s, alpha, dim)
        got = np.abs(vec).sum(axis=1) > 0
        emb[rows[got]] = vec[got]
        folded = int(got.sum())
    emb = l2_normalise(emb)
    cold = ~(np.abs(emb).sum(axis=1) > 0)
    return emb, cold, folded
