"""The one device / dtype resolver: user-facing names (``"cuda"``, ``"cuda:1"``, ``"cpu"``; ``"fp16"``, ``"bf16"``,
``"fp32"``, torch dtypes) -> torch objects, with one-line :class:`~zero123.errors.Zero123Error` messages.

Defaults, used everywhere: CUDA when available, else CPU; fp16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import torch

from ..errors import Zero123Error

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device=None) -> torch.device:
    """``device`` (None: ``cuda`` when available, else ``cpu``) as a ``torch.device``; a CUDA device on a machine
    without CUDA, or an unknown name, is a one-line error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise Zero123Error(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Zero123Error(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype=None, device=None) -> torch.dtype:
    """``dtype`` (None: fp16 on a CUDA ``device``, else fp32; a name of :data:`DTYPES` or a torch dtype)."""
    if dtype is None:
        return torch.float16 if torch.device(device or "cpu").type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in DTYPES:
        raise Zero123Error(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16")
    return DTYPES[key]


__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]
