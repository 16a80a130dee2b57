"""Precision names → autocast: one mapping for training, prediction and the benchmarks."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "autocast_dtype", "cuda_math"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` = plain fp32).

    ``fp32`` → None, ``bf16`` → bfloat16, ``fp16`` → float16; ``auto`` → bfloat16 on a CUDA device that
    supports it, else fp32 (bf16 autocast on CPU is slower on most machines). Callers validate the name.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cuda_math(device: torch.device, tf32: bool = True):
    """For training on a CUDA device: fp32 matrix products and convolutions on TF32 tensor cores (when
    ``tf32``) and cuDNN autotuning, as open_clip's and timm's training scripts set them; the previous
    settings are restored on exit. A no-op on other devices."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = old
