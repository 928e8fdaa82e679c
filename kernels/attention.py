"""The public attention op: one function, a backend switch, an autograd Function."""

import torch

from .reference import attention_reference

BACKENDS = ("auto", "triton", "torch")
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D: q [B, Hq, L, D], k and v [B, Hkv, L, D]")
    batch, hq, seq_len, dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2:] != (seq_len, dim):
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, got {dim}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k, v must be on the same device")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class TritonAttention(torch.autograd.Function):
    """Autograd wrapper of the Triton forward and backward kernels."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, padding, causal, scale):
        from . import triton_attention

        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        out, lse = triton_attention.attention_forward(q, k, v, lengths, padding, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, lengths)
        ctx.padding = padding
        ctx.causal = causal
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, do):
        from . import triton_attention

        q, k, v, out, lse, lengths = ctx.saved_tensors
        dq, dk, dv = triton_attention.attention_backward(
            _last_dim_contiguous(do), q, k, v, out, lse, lengths, ctx.padding, ctx.causal,
            ctx.scale,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None


def _kernel_lengths(lengths: torch.Tensor | None, batch: int, device: torch.device):
    """Lengths as the kernels read them (int32 or int64, contiguous, on the device; they clamp
    to [0, L] themselves): no copy in the usual case, so no launch per call."""
    if lengths is None:
        return None
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.dtype not in (torch.int32, torch.int64):
        lengths = lengths.to(torch.int32)
    if lengths.device != device:
        lengths = lengths.to(device)
    return lengths if lengths.stride(0) == 1 else lengths.contiguous()


def has_triton() -> bool:
    """Whether the triton package is installed (the CPU install leaves it out)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _triton_available(device: torch.device) -> None:
    if not has_triton():
        raise RuntimeError(
            "backend='triton' needs the triton package, which the CPU install leaves out: "
            "pip install 'coea[cuda]', or use backend='torch'"
        )
    if device.type == "cuda":
        return
    from . import triton_attention

    if not triton_attention.INTERPRET:
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (got {device.type}); on CPU set "
            "TRITON_INTERPRET=1 before coea_kernels.triton_attention is first imported, "
            "or use backend='torch'"
        )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    lengths: torch.Tensor | None = None,
    padding: str = "right",
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention over padded, optionally causal, grouped-query sequences.

    q is [B, Hq, L, D]; k and v are [B, Hkv, L, D] with Hq a multiple of Hkv (query head h
    reads kv head h // (Hq // Hkv)); D in 16..128; fp16, bf16 or fp32.
    lengths: int tensor [B], valid tokens per row (clamped to [0, L]); None means no padding.
    padding: "right" (valid tokens first) or "left" (valid tokens last).
    causal: key j is attended by query i only when j <= i, as positions in the padded sequence.
    Padded query positions output exactly 0 (and get zero gradients); so do rows of length 0.
    scale defaults to D ** -0.5. backend: "auto" (Triton on CUDA when installed, PyTorch otherwise), "triton"
    or "torch". Returns [B, Hq, L, D] (strided like q on the Triton path).
    """
    _check(q, k, v)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        backend = "triton" if q.is_cuda and has_triton() else "torch"
    if backend == "torch":
        return attention_reference(
            q, k, v, causal=causal, lengths=lengths, padding=padding, scale=scale
        )
    _triton_available(q.device)
    batch = q.shape[0]
    if q.numel() == 0:
        return q * 0.0
    lengths = _kernel_lengths(lengths, batch, q.device)
    return TritonAttention.apply(q, k, v, lengths, padding, bool(causal), scale)
