"""Attention kernels: causal, padded, grouped-query; Triton on CUDA, PyTorch elsewhere."""

from .attention import attention

__all__ = ["attention"]
