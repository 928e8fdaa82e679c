"""Triton kernels: FlashAttention-2 style forward and backward over per-row valid ranges.

Row b of the batch has n_b = clamp(lengths[b], 0, L) valid positions [start_b, start_b + n_b):
start_b = 0 for right padding, L - n_b for left padding. Each kernel reads the lengths itself (no
per-call torch work). Query and key tiles are aligned to the row start, so a left-padded row has
the same tiles as a right-padded one; tiles outside the valid range (and above the causal
diagonal) are never visited. Programs past a row's last tile zero-fill its padded positions.
Loops run first over blocks that need no mask, then over the few that do (diagonal and tail).
The grid is (B * heads, tiles); causal query tiles are launched heaviest first.
Scores use base 2: qk_scale = scale * log2(e), and the stored logsumexp is in that unit (fp32).
A query head h reads kv head h // GROUP; dK/dV sum over the GROUP query heads of their kv head.
The backward is two launches: dQ (which also computes delta = rowsum(dO * O)), then dK/dV.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# COEA_ATTN_PIN=1: no autotuning, the first config that fits (quick compiles for tests).
PIN = os.environ.get("COEA_ATTN_PIN") == "1"
LOG2E = 1.4426950408889634
NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": fully masked rows stay finite

# (BLOCK_M, BLOCK_N, num_warps, num_stages), tuned for Hopper (H100/H200). fp16/bf16 get a table
# per head dim (d32, d64, other); fp32 (tf32x3 products, twice the bytes per tile) one set that
# fits in shared memory. The short-L shapes (L 200..1024) favour 64-row tiles at D=32: more CTAs.
_FWD = {
    "d32": [(64, 64, 4, 3), (128, 64, 4, 3), (64, 32, 4, 3), (128, 32, 4, 4)],
    "d64": [(128, 64, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 32, 4, 4)],
    "16bit": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    "fp32": [(64, 64, 4, 2), (64, 32, 4, 2)],
}
# dK/dV: BLOCK_N keys held, BLOCK_M queries streamed.
_DKDV = {
    "d32": [(32, 64, 4, 3), (64, 64, 4, 3), (32, 128, 4, 3), (16, 64, 4, 4)],
    "d64": [(32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 8, 3), (32, 64, 4, 4)],
    "16bit": [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 4)],
    "fp32": [(32, 64, 4, 2), (16, 64, 4, 2)],
}
# dQ: BLOCK_M queries held, BLOCK_N keys streamed.
_DQ = {
    "d32": [(64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 4), (128, 64, 8, 3)],
    "d64": [(128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4)],
    "16bit": [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    "fp32": [(64, 32, 4, 2), (32, 32, 4, 2)],
}
# The interpreter runs one config (no autotuning); unequal blocks exercise the loop bounds.
_INTERPRET = {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}


def _row(config: triton.Config) -> tuple[int, int, int, int]:
    kw = config.kwargs
    return kw["BLOCK_M"], kw["BLOCK_N"], config.num_warps, config.num_stages


def table_rows(table: dict, dtype: torch.dtype, block_d: int) -> list:
    """The configs of `table` for an input dtype and (padded) head dim."""
    if dtype == torch.float32:
        return table["fp32"]
    return table.get(f"d{block_d}", table["16bit"])


def _configs(table: dict, kind: str) -> list[triton.Config]:
    every = [row for rows in table.values() for row in rows]
    rows = [_INTERPRET[kind]] if INTERPRET else list(dict.fromkeys(every))
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in rows
    ]


def _pruner(table: dict):
    def prune(configs, named_args, **kwargs):
        """Keep the configs of the input dtype and head dim whose blocks fit the (bucketed)
        sequence length; if none fits, the smallest tile. Pinned (COEA_ATTN_PIN=1): the first."""
        rows = table_rows(table, named_args["Q"].dtype, kwargs["BLOCK_D"])
        ours = sorted((c for c in configs if _row(c) in rows), key=lambda c: rows.index(_row(c)))
        seq = max(named_args["L_KEY"], 16)
        kept = [c for c in ours if c.kwargs["BLOCK_M"] <= seq and c.kwargs["BLOCK_N"] <= seq]
        if not kept:
            kept = [min(ours, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
        return kept[:1] if PIN else kept

    return {"early_config_prune": prune}


_KEY = ["L_KEY", "BLOCK_D", "CAUSAL", "GROUP"]


@triton.jit
def _load_rows(ptrs, row_mask, d_mask, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a [rows, BLOCK_D] tile; masked rows and padded head dims read as 0."""
    if MASK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_mask[None, :], other=0.0)
    return x


@triton.jit
def _load_cols(ptrs, col_mask, d_mask, MASK_COLS: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a transposed [BLOCK_D, cols] tile; masked entries read as 0."""
    if MASK_COLS:
        if EVEN_D:
            x = tl.load(ptrs, mask=col_mask[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=col_mask[None, :] & d_mask[:, None], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_mask[:, None], other=0.0)
    return x


@triton.jit
def _fwd_step(
    acc, l_i, m_i, q, k_base, v_base, skl, svl, n_start, offs_m, offs_d, d_mask, end, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    offs_n = n_start + tl.arange(0, BLOCK_N)
    key_ok = offs_n < end
    kt = _load_cols(
        k_base + offs_n[None, :] * skl + offs_d[:, None], key_ok, d_mask, MASKED, EVEN_D
    )
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    if MASKED:
        keep = key_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, NEG)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(v_base + offs_n[:, None] * svl + offs_d[None, :], key_ok, d_mask, MASKED, EVEN_D)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _row_range(LENS, b, L, HAS_LENGTHS: tl.constexpr, LEFT: tl.constexpr):
    """(start, n): row b's valid positions are [start, start + n), from its length."""
    if HAS_LENGTHS:
        n = tl.load(LENS + b).to(tl.int32)
        n = tl.minimum(tl.maximum(n, 0), L)
    else:
        n = L
    if LEFT:
        start = L - n
    else:
        start = 0
    return start, n


@triton.jit
def _zero_rows(
    base, stride, t, nb, start, L, offs_d, d_mask,
    LEFT: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Zero-fill padded rows: tile t - nb of [0, start) when left padded, tile t of [0, L)
    (past the last valid tile nb - 1, which zeroes its own tail) when right padded."""
    if LEFT:
        offs = (t - nb) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < start
    else:
        offs = t * BLOCK + tl.arange(0, BLOCK)
        ok = offs < L
    zero = tl.zeros([BLOCK, BLOCK_D], dtype=base.dtype.element_ty)
    tl.store(base + offs[:, None] * stride + offs_d[None, :], zero,
             mask=ok[:, None] & d_mask[None, :])  # fmt: skip


@triton.jit
def _query_loop_bounds(m0, n, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks for query block [m0, m0 + BLOCK_M) of a row of n valid positions (relative to
    the row start, m0 < n): (n_full unmasked, n_blocks in all)."""
    if CAUSAL:
        hi = tl.minimum(n, m0 + BLOCK_M)
        full_hi = tl.minimum(n, m0 + 1)
    else:
        hi = n
        full_hi = n
    n_blocks = tl.cdiv(hi, BLOCK_N)
    n_full = tl.minimum(full_hi // BLOCK_N, n_blocks)
    return n_full, n_blocks


@triton.autotune(configs=_configs(_FWD, "fwd"), key=_KEY, prune_configs_by=_pruner(_FWD))
@triton.jit
def _fwd_kernel(
    Q, K, V, OUT, LSE, LENS,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
    H, L, L_KEY, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, GROUP: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, LEFT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    t = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // GROUP
    start, n = _row_range(LENS, b, L, HAS_LENGTHS, LEFT)
    nb = tl.cdiv(n, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    o_base = OUT + b * sob + h * soh
    if t < nb:
        m0 = (nb - 1 - t) * BLOCK_M  # the last query block (the heaviest when causal) first
        offs_m = m0 + tl.arange(0, BLOCK_M)
        rows = start + offs_m
        q_ok = offs_m < n
        q = _load_rows(Q + b * sqb + h * sqh + rows[:, None] * sql + offs_d[None, :], q_ok,
                       d_mask, True, EVEN_D)  # fmt: skip
        k_base = K + b * skb + hk * skh + start * skl
        v_base = V + b * svb + hk * svh + start * svl

        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        n_full, n_blocks = _query_loop_bounds(m0, n, CAUSAL, BLOCK_M, BLOCK_N)
        for i in range(0, n_full):
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, skl, svl, i * BLOCK_N,
                                      offs_m, offs_d, d_mask, n, qk_scale,
                                      CAUSAL, False, EVEN_D, BLOCK_N, PRECISION)  # fmt: skip
        for i in range(n_full, n_blocks):
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, skl, svl, i * BLOCK_N,
                                      offs_m, offs_d, d_mask, n, qk_scale,
                                      CAUSAL, True, EVEN_D, BLOCK_N, PRECISION)  # fmt: skip

        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = tl.where(q_ok[:, None], acc / l_safe[:, None], 0.0)
        tl.store(o_base + rows[:, None] * sol + offs_d[None, :], out.to(OUT.dtype.element_ty),
                 mask=(rows < L)[:, None] & d_mask[None, :])  # fmt: skip
        lse = m_i + tl.math.log2(l_safe)
        tl.store(LSE + pid_bh.to(tl.int64) * L + rows, lse, mask=q_ok)
    else:
        _zero_rows(o_base, sol, t, nb, start, L, offs_d, d_mask, LEFT, BLOCK_M, BLOCK_D)


@triton.jit
def _dkdv_step(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql, sdl, m_start, offs_n, offs_d, d_mask,
    end, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # Positions are relative to the row start; offs_n are key positions (may be past the end).
    offs_m = m_start + tl.arange(0, BLOCK_M)
    q_ok = offs_m < end
    qt = _load_cols(q_base + offs_m[None, :] * sql + offs_d[:, None], q_ok, d_mask, MASKED, EVEN_D)
    do = _load_rows(do_base + offs_m[:, None] * sdl + offs_d[None, :], q_ok, d_mask, MASKED, EVEN_D)
    if MASKED:
        lse = tl.load(lse_base + offs_m, mask=q_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=q_ok, other=0.0)
    else:
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale
    pt = tl.math.exp2(st - lse[None, :])
    if MASKED:
        keep = q_ok[None, :] & (offs_n[:, None] < end)
        if CAUSAL:
            keep = keep & (offs_m[None, :] >= offs_n[:, None])
        pt = tl.where(keep, pt, 0.0)
    dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
    return dk, dv


@triton.autotune(configs=_configs(_DKDV, "dkdv"), key=_KEY, prune_configs_by=_pruner(_DKDV))
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, LENS,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sdb, sdh, sdl,
    sdkb, sdkh, sdkl, sdvb, sdvh, sdvl,
    H, HKV, L, L_KEY, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, GROUP: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, LEFT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    t = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = pid_bh % HKV
    start, n = _row_range(LENS, b, L, HAS_LENGTHS, LEFT)
    nb = tl.cdiv(n, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    dk_base = DK + b * sdkb + hk * sdkh
    dv_base = DV + b * sdvb + hk * sdvh
    if t < nb:
        n0 = t * BLOCK_N  # causal: the first key blocks see the most queries, and run first
        offs_n = n0 + tl.arange(0, BLOCK_N)
        rows = start + offs_n
        k_ok = offs_n < n
        k = _load_rows(K + b * skb + hk * skh + rows[:, None] * skl + offs_d[None, :], k_ok,
                       d_mask, True, EVEN_D)  # fmt: skip
        v = _load_rows(V + b * svb + hk * svh + rows[:, None] * svl + offs_d[None, :], k_ok,
                       d_mask, True, EVEN_D)  # fmt: skip
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

        # Query blocks start at q_lo and stop at the row end (positions relative to its start):
        # n_head masked blocks on the diagonal, unmasked ones up to n_mid, then a masked tail.
        if CAUSAL:
            q_lo = n0
            n_head = tl.cdiv(BLOCK_N - 1, BLOCK_M)
        else:
            q_lo = 0
            n_head = 0
        n_blocks = tl.cdiv(n - q_lo, BLOCK_M)
        keys_full = n0 + BLOCK_N <= n
        n_head = tl.where(keys_full, tl.minimum(n_head, n_blocks), n_blocks)
        n_mid = tl.maximum(n_head, tl.minimum((n - q_lo) // BLOCK_M, n_blocks))

        for g in range(GROUP):
            h = hk * GROUP + g
            bh = b * H + h
            q_base = Q + b * sqb + h * sqh + start * sql
            do_base = DO + b * sdb + h * sdh + start * sdl
            lse_base = LSE + bh * L + start
            delta_base = DELTA + bh * L + start
            for i in range(0, n_head):
                dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql,
                                    sdl, q_lo + i * BLOCK_M, offs_n, offs_d, d_mask, n, qk_scale,
                                    CAUSAL, True, EVEN_D, BLOCK_M, PRECISION)  # fmt: skip
            for i in range(n_head, n_mid):
                dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql,
                                    sdl, q_lo + i * BLOCK_M, offs_n, offs_d, d_mask, n, qk_scale,
                                    CAUSAL, False, EVEN_D, BLOCK_M, PRECISION)  # fmt: skip
            for i in range(n_mid, n_blocks):
                dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql,
                                    sdl, q_lo + i * BLOCK_M, offs_n, offs_d, d_mask, n, qk_scale,
                                    CAUSAL, True, EVEN_D, BLOCK_M, PRECISION)  # fmt: skip

        mask = (rows < L)[:, None] & d_mask[None, :]
        tl.store(dk_base + rows[:, None] * sdkl + offs_d[None, :],
                 (dk * scale).to(DK.dtype.element_ty), mask=mask)  # fmt: skip
        tl.store(dv_base + rows[:, None] * sdvl + offs_d[None, :], dv.to(DV.dtype.element_ty),
                 mask=mask)  # fmt: skip
    else:
        _zero_rows(dk_base, sdkl, t, nb, start, L, offs_d, d_mask, LEFT, BLOCK_N, BLOCK_D)
        _zero_rows(dv_base, sdvl, t, nb, start, L, offs_d, d_mask, LEFT, BLOCK_N, BLOCK_D)


@triton.jit
def _dq_step(
    dq, q, do, lse, delta, k_base, v_base, skl, svl, n_start, offs_m, offs_d, d_mask, end,
    qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    offs_n = n_start + tl.arange(0, BLOCK_N)
    key_ok = offs_n < end
    kt = _load_cols(
        k_base + offs_n[None, :] * skl + offs_d[:, None], key_ok, d_mask, MASKED, EVEN_D
    )
    vt = _load_cols(
        v_base + offs_n[None, :] * svl + offs_d[:, None], key_ok, d_mask, MASKED, EVEN_D
    )
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        keep = key_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)
    return dq


@triton.autotune(configs=_configs(_DQ, "dq"), key=_KEY, prune_configs_by=_pruner(_DQ))
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, OUT, DO, LSE, DELTA, DQ, LENS,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol, sdb, sdh, sdl,
    sdqb, sdqh, sdql,
    H, L, L_KEY, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, GROUP: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, LEFT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ for a query block; also writes delta = rowsum(dO * O) (fp32) for the dK/dV kernel."""
    pid_bh = tl.program_id(0)
    t = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // GROUP
    start, n = _row_range(LENS, b, L, HAS_LENGTHS, LEFT)
    nb = tl.cdiv(n, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    dq_base = DQ + b * sdqb + h * sdqh
    if t < nb:
        m0 = (nb - 1 - t) * BLOCK_M  # the last query block (the heaviest when causal) first
        offs_m = m0 + tl.arange(0, BLOCK_M)
        rows = start + offs_m
        q_ok = offs_m < n
        q = _load_rows(Q + b * sqb + h * sqh + rows[:, None] * sql + offs_d[None, :], q_ok,
                       d_mask, True, EVEN_D)  # fmt: skip
        do = _load_rows(DO + b * sdb + h * sdh + rows[:, None] * sdl + offs_d[None, :], q_ok,
                        d_mask, True, EVEN_D)  # fmt: skip
        o = _load_rows(OUT + b * sob + h * soh + rows[:, None] * sol + offs_d[None, :], q_ok,
                       d_mask, True, EVEN_D)  # fmt: skip
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        row = pid_bh.to(tl.int64) * L + rows
        tl.store(DELTA + row, delta, mask=q_ok)
        lse = tl.load(LSE + row, mask=q_ok, other=0.0)
        k_base = K + b * skb + hk * skh + start * skl
        v_base = V + b * svb + hk * svh + start * svl

        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        n_full, n_blocks = _query_loop_bounds(m0, n, CAUSAL, BLOCK_M, BLOCK_N)
        for i in range(0, n_full):
            dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, skl, svl, i * BLOCK_N, offs_m,
                          offs_d, d_mask, n, qk_scale, CAUSAL, False, EVEN_D, BLOCK_N,
                          PRECISION)  # fmt: skip
        for i in range(n_full, n_blocks):
            dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, skl, svl, i * BLOCK_N, offs_m,
                          offs_d, d_mask, n, qk_scale, CAUSAL, True, EVEN_D, BLOCK_N,
                          PRECISION)  # fmt: skip

        dq = tl.where(q_ok[:, None], dq * scale, 0.0)
        tl.store(dq_base + rows[:, None] * sdql + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=(rows < L)[:, None] & d_mask[None, :])  # fmt: skip
    else:
        _zero_rows(dq_base, sdql, t, nb, start, L, offs_d, d_mask, LEFT, BLOCK_M, BLOCK_D)


def _precision(dtype: torch.dtype) -> str:
    # fp32: three TF32 tensor-core products per dot (about fp32 accuracy); fp16/bf16: one.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _l_key(seq_len: int) -> int:
    # Autotuning keys on the sequence length bucketed to a power of two (fewer re-tunes).
    return triton.next_power_of_2(max(seq_len, 16))


def _common(q: torch.Tensor, k: torch.Tensor, lengths, padding: str) -> dict:
    dim = q.shape[-1]
    block_d = max(16, triton.next_power_of_2(dim))
    return {
        "HEAD_DIM": dim,
        "BLOCK_D": block_d,
        "EVEN_D": dim == block_d,
        "GROUP": q.shape[1] // k.shape[1],
        "HAS_LENGTHS": lengths is not None,
        "LEFT": lengths is not None and padding == "left",
        "PRECISION": _precision(q.dtype),
    }


def _tiles(seq_len: int, block: int, left: bool) -> int:
    # A left-padded row's tiles start at its first valid position: one more tile zero-fills
    # the padded positions before it.
    return triton.cdiv(seq_len, block) + int(left)


# The config each autotuned kernel chose, per autotuning key: later calls launch the kernel with
# it directly, without the autotuner's per-call bookkeeping (tens of microseconds of Python).
_BEST: dict = {}


def _launch(kernel, grid, args: tuple, kwargs: dict, seq_len: int, q, lengths) -> None:
    key = (kernel.fn.__name__, _l_key(seq_len), q.dtype, None if lengths is None else lengths.dtype)
    key += tuple(kwargs[name] for name in ("BLOCK_D", "CAUSAL", "GROUP"))
    config = _BEST.get(key)
    if config is None:
        kernel[grid](*args, **kwargs)
        _BEST[key] = kernel.best_config
    else:
        kernel.fn[grid](*args, **kwargs, **config.all_kwargs())


def attention_forward(q, k, v, lengths, padding: str, causal: bool, scale: float):
    """Returns (out like q, logsumexp [B, Hq, L] fp32 in base 2, set on valid rows only).
    lengths: int32/int64 [B] on q's device (contiguous), or None (no padding)."""
    batch, heads, seq_len, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq_len), device=q.device, dtype=torch.float32)
    common = _common(q, k, lengths, padding)

    def grid(meta):
        return (batch * heads, _tiles(seq_len, meta["BLOCK_M"], common["LEFT"]))

    args = (
        q, k, v, out, lse, lengths,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        heads, seq_len, _l_key(seq_len), scale * LOG2E,
    )  # fmt: skip
    _launch(_fwd_kernel, grid, args, {"CAUSAL": causal, **common}, seq_len, q, lengths)
    return out, lse


def attention_backward(do, q, k, v, out, lse, lengths, padding: str, causal: bool, scale: float):
    """Returns (dq, dk, dv) shaped and strided like q, k, v: two launches, dQ then dK/dV."""
    batch, heads, seq_len, _ = q.shape
    kv_heads = k.shape[1]
    common = _common(q, k, lengths, padding)
    delta = torch.empty_like(lse)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    qk_scale = scale * LOG2E

    def grid_q(meta):
        return (batch * heads, _tiles(seq_len, meta["BLOCK_M"], common["LEFT"]))

    args = (
        q, k, v, out, do, lse, delta, dq, lengths,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *do.stride()[:3],
        *dq.stride()[:3],
        heads, seq_len, _l_key(seq_len), qk_scale, scale,
    )  # fmt: skip
    _launch(_bwd_dq_kernel, grid_q, args, {"CAUSAL": causal, **common}, seq_len, q, lengths)

    def grid_kv(meta):
        return (batch * kv_heads, _tiles(seq_len, meta["BLOCK_N"], common["LEFT"]))

    args = (
        q, k, v, do, lse, delta, dk, dv, lengths,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dk.stride()[:3], *dv.stride()[:3],
        heads, kv_heads, seq_len, _l_key(seq_len), qk_scale, scale,
    )  # fmt: skip
    _launch(_bwd_dkdv_kernel, grid_kv, args, {"CAUSAL": causal, **common}, seq_len, q, lengths)
    return dq, dk, dv


__all__ = ["INTERPRET", "attention_backward", "attention_forward"]
