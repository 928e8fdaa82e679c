"""Transformers integration: the attention implementation "coea_triton".

    import coea_kernels.hf  # registers on import
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="coea_triton")

Masks are built as for "sdpa" (a 4-D boolean mask, or None for plain causal attention). A 2-D
[B, Lk] padding mask (1/True = attend, or a float mask added to the scores) is first made the
4-D mask it stands for, with the causal part aligned to the last query when causal. A mask that
is exactly causal (or full) attention over left- or right-padded rows, one per batch row, is
turned into per-row lengths and runs through coea_kernels.attention (rows of padded queries may
differ there: they output 0). Everything else falls back, explicitly, to the PyTorch reference
with the full mask: other mask patterns (sliding window, packed sequences, custom 4-D or float
masks, a mask broadcast over the batch such as [1, 1, L, L]), query length != key length
(decoding with a KV cache), dropout in training, head dims outside 16..128.

The backend follows coea_kernels.attention's "auto" (Triton on CUDA, PyTorch elsewhere); a model
can force one with `model.config.coea_attention_backend = "triton" | "torch"`.
"""

import logging

import torch

from .attention import MAX_HEAD_DIM, MIN_HEAD_DIM, attention
from .reference import attention_masked, position_masks, valid_range

NAME = "coea_triton"
_log = logging.getLogger(__name__)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def padding_from_mask(mask: torch.Tensor, causal: bool) -> tuple[torch.Tensor, str] | None:
    """(lengths [B], "left" | "right") if a boolean [B, 1|H, L, L] mask is causal (or full)
    attention over padded rows, ignoring rows of padded queries; None otherwise."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[-1] != mask.shape[-2]:
        return None
    cached = getattr(mask, "_coea_padding", None)
    if cached is not None and cached[:2] == (mask._version, causal):
        return cached[2]
    batch, seq_len = mask.shape[0], mask.shape[-1]
    same_heads = torch.ones((), dtype=torch.bool, device=mask.device)
    if mask.shape[1] != 1:
        same_heads = (mask == mask[:, :1]).all()
    rows = mask[:, 0]
    keys = rows.any(dim=1)
    lengths = keys.sum(dim=-1)
    checks = []
    for padding in ("right", "left"):
        starts, ends = valid_range(lengths, batch, seq_len, padding, mask.device)
        valid, allowed = position_masks(starts, ends, seq_len, causal)
        same = (rows == allowed) | ~valid[:, :, None]
        checks.append(same.all() & (keys == valid).all() & same_heads)
    right_ok, left_ok = torch.stack(checks).tolist()
    result = None
    if right_ok or left_ok:
        result = (lengths, "right" if right_ok else "left")
    mask._coea_padding = (mask._version, causal, result)
    return result


def mask_from_2d(mask: torch.Tensor, q_len: int, causal: bool) -> torch.Tensor:
    """The [B, 1, q_len, Lk] mask a 2-D [B, Lk] padding mask stands for: boolean when the mask
    is boolean or integer (nonzero = attend), additive float otherwise. Causal: query i sees
    keys up to Lk - q_len + i (the last query sees every key, as with a KV cache)."""
    cached = getattr(mask, "_coea_4d", None)
    if cached is not None and cached[:3] == (mask._version, q_len, causal):
        return cached[3]
    k_len = mask.shape[-1]
    keep = None
    if causal:
        queries = torch.arange(q_len, device=mask.device) + (k_len - q_len)
        keep = torch.arange(k_len, device=mask.device)[None, :] <= queries[:, None]
    if mask.is_floating_point():
        full = mask[:, None, None, :].expand(-1, 1, q_len, -1)
        if keep is not None:
            full = full.masked_fill(~keep, float("-inf"))
    else:
        full = (mask != 0)[:, None, None, :].expand(-1, 1, q_len, -1)
        if keep is not None:
            full = full & keep
    mask._coea_4d = (mask._version, q_len, causal, full)
    return full


def _fallback(query, key, value, mask, scaling, dropout, causal, reason):
    _log.debug("coea_triton: reference attention (%s)", reason)
    return attention_masked(query, key, value, mask, scale=scaling, causal=causal, dropout=dropout)


def coea_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention function with the signature transformers uses; returns ([B, L, Hq, D], None)."""
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{NAME} does not support {name}; use attn_implementation='eager'")
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else bool(causal)
    config = getattr(module, "config", None)
    backend = getattr(config, "coea_attention_backend", "auto")
    dropout = dropout if module.training else 0.0
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is not None and attention_mask.dim() == 2:
        attention_mask = mask_from_2d(attention_mask, q_len, causal)

    out = None
    supported = (
        query.dtype in _DTYPES
        and key.dtype == query.dtype
        and value.dtype == query.dtype
        and MIN_HEAD_DIM <= query.shape[-1] <= MAX_HEAD_DIM
        and value.shape[-1] == query.shape[-1]
    )
    if not supported:
        out = _fallback(query, key, value, attention_mask, scaling, dropout, causal, "shape/dtype")
    elif dropout > 0.0:
        out = _fallback(query, key, value, attention_mask, scaling, dropout, causal, "dropout")
    elif attention_mask is None:
        if causal and 1 < q_len < k_len:
            # As SDPA's top-left causal alignment: keys past the query length are never seen.
            key, value = key[:, :, :q_len], value[:, :, :q_len]
            k_len = q_len
        if q_len == k_len:
            out = attention(query, key, value, causal=causal, scale=scaling, backend=backend)
        else:
            out = _fallback(query, key, value, None, scaling, 0.0, False, "q_len != k_len")
    elif q_len != k_len:
        out = _fallback(query, key, value, attention_mask, scaling, 0.0, False, "q_len != k_len")
    else:
        layout = None
        if attention_mask.shape[0] == query.shape[0]:  # a batch-broadcast mask falls back
            layout = padding_from_mask(attention_mask, causal)
        if layout is None:
            out = _fallback(query, key, value, attention_mask, scaling, 0.0, False, "mask pattern")
        else:
            lengths, padding = layout
            out = attention(
                query, key, value, causal=causal, lengths=lengths, padding=padding,
                scale=scaling, backend=backend,
            )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register "coea_triton" with transformers (attention function and mask builder)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, coea_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()
