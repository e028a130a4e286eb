"""Int8 weight storage: half the bytes of fp16, for models that must fit a size limit (the bundled model's ~30 MB).

Format (inside an ordinary safetensors state dict): a float weight ``W`` of 2 or more dimensions and at least
``min_numel`` elements is stored as ``KEY`` int8 ``q`` plus ``KEY + SCALE_SUFFIX`` float32 ``s`` of shape
``[W.shape[0]]``, with ``W ~= q * s`` per output channel (symmetric: ``s = max|W[c]| / 127``, ``q = round(W / s)``;
the rounding error is at most ``s / 2`` per weight). Everything else (biases, norms, small tensors) is kept as is.
:func:`dequantize_state_dict` turns such a dict back into float tensors; the folder loader applies it to every
weight file, so int8 and float folders load the same way. Diffusers' own ``from_pretrained`` cannot read int8
folders; ``zero123`` can (``zero123 convert FOLDER OUT`` writes a float copy).
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError

SCALE_SUFFIX = ".q_scale"
#: smaller tensors are not worth quantizing (their scale would cost more than it saves)
MIN_NUMEL = 1024


def _channel_view(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.view(-1, *([1] * (ndim - 1)))


def quantize_state_dict(state: dict, min_numel: int = MIN_NUMEL, float_dtype: torch.dtype | None = None) -> dict:
    """``{key: tensor}`` -> the int8 format above. Weights that are not quantized are cast to ``float_dtype``
    when it is given (e.g. ``torch.float16``); non-float tensors are left alone."""
    out = {}
    for key, w in state.items():
        if key.endswith(SCALE_SUFFIX):
            raise CheckpointError(f"{key}: the state dict is already int8-quantized")
        if w.is_floating_point() and w.ndim >= 2 and w.numel() >= min_numel:
            w32 = w.detach().float()
            scale = w32.abs().flatten(1).amax(1).clamp(min=1e-12) / 127.0
            out[key] = torch.round(w32 / _channel_view(scale, w.ndim)).clamp(-127, 127).to(torch.int8).contiguous()
            out[key + SCALE_SUFFIX] = scale.contiguous()
        elif w.is_floating_point() and float_dtype is not None:
            out[key] = w.detach().to(float_dtype).contiguous()
        else:
            out[key] = w.detach().contiguous()
    return out


def dequantize_state_dict(state: dict, dtype: torch.dtype = torch.float32) -> dict:
    """The inverse of :func:`quantize_state_dict` (``q * s`` in ``dtype``); a dict without int8 weights is
    returned unchanged. Raises ``CheckpointError`` for an int8 weight without its scale or a scale without its
    weight, or shapes that do not match."""
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in state.items() if k.endswith(SCALE_SUFFIX)}
    if not scales and not any(v.dtype == torch.int8 for v in state.values()):
        return state
    out = {}
    for key, v in state.items():
        if key.endswith(SCALE_SUFFIX):
            if key[: -len(SCALE_SUFFIX)] not in state:
                raise CheckpointError(f"int8 weights: scale {key} has no weight")
            continue
        if key in scales:
            s = scales[key]
            if v.dtype != torch.int8 or s.ndim != 1 or s.shape[0] != v.shape[0]:
                raise CheckpointError(f"int8 weights: {key} is {v.dtype} {tuple(v.shape)} with a scale of shape "
                                      f"{tuple(s.shape)}; expected int8 with one scale per output channel")
            out[key] = (v.float() * _channel_view(s.float(), v.ndim)).to(dtype)
        elif v.dtype == torch.int8:
            raise CheckpointError(f"int8 weights: {key} has no scale ({key}{SCALE_SUFFIX})")
        else:
            out[key] = v
    return out
