"""PyTorch reference for padded, causal, grouped-query attention (also the CPU path).

Semantics shared with the Triton kernels:
- row b of the batch has valid positions [start_b, end_b): right padding gives [0, n_b),
  left padding gives [L - n_b, L), with n_b = lengths[b] clamped to [0, L];
- a valid query attends the valid keys (and, when causal, only keys at positions <= its own
  position in the padded sequence);
- padded query positions output exactly 0 and get zero gradients.
"""

import torch
import torch.nn.functional as F

PADDINGS = ("left", "right")


def valid_range(
    lengths: torch.Tensor | None, batch: int, seq_len: int, padding: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start (inclusive) and end (exclusive) of the valid positions of each row, int32 [B]."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
    if lengths is None:
        n = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    else:
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
        n = lengths.to(device=device, dtype=torch.int32).clamp(0, seq_len)
    if padding == "right":
        return torch.zeros_like(n), n
    return seq_len - n, torch.full_like(n, seq_len)


def position_masks(
    starts: torch.Tensor, ends: torch.Tensor, seq_len: int, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid [B, L], allowed [B, L, L]): valid positions and the query-key pairs that attend."""
    pos = torch.arange(seq_len, device=starts.device)
    valid = (pos[None, :] >= starts[:, None]) & (pos[None, :] < ends[:, None])
    allowed = valid[:, :, None] & valid[:, None, :]
    if causal:
        allowed = allowed & (pos[None, None, :] <= pos[None, :, None])
    return valid, allowed


def _sdpa(q, k, v, mask, scale, causal=False, dropout=0.0):
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        # A kv repeat keeps the fast masked SDPA kernels available on CUDA.
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale
    )


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    lengths: torch.Tensor | None = None,
    padding: str = "right",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention through F.scaled_dot_product_attention with the semantics above."""
    batch, _, seq_len, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    if lengths is None:
        return _sdpa(q, k, v, None, scale, causal=causal and seq_len > 1)
    starts, ends = valid_range(lengths, batch, seq_len, padding, q.device)
    valid, allowed = position_masks(starts, ends, seq_len, causal)
    # Padded query rows attend everything (no empty softmax), then their output is zeroed.
    allowed = allowed | ~valid[:, :, None]
    out = _sdpa(q, k, v, allowed[:, None], scale)
    return out * valid[:, None, :, None].to(out.dtype)


def attention_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    causal: bool = False,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention with an explicit mask broadcastable to [B, Hq, Lq, Lk].

    A boolean mask marks attended pairs (True); a float mask is added to the scores. Query rows
    whose boolean mask is all False output 0 (instead of NaN). `causal` (top-left aligned, as in
    SDPA) applies only when `mask` is None. Used for masks that are not a causal+padding pattern.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if mask is None or mask.dtype != torch.bool:
        return _sdpa(q, k, v, mask, scale, causal=causal, dropout=dropout)
    empty = ~mask.any(dim=-1, keepdim=True)
    out = _sdpa(q, k, v, mask | empty, scale, dropout=dropout)
    return out.masked_fill(empty, 0.0)
