"""Reading checkpoint files safely: safetensors, or ``torch.load(weights_only=True)`` — never plain unpickling.

A real Lightning ``.ckpt`` holds a ``state_dict`` plus bookkeeping (``global_step``, ``epoch``, callback states,
sometimes numpy scalars); the allow-list below admits only those plain types. A pickle that asks for anything
else (a function to call, an arbitrary class) is refused with a one-line ``CheckpointError``.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
#: ``torch.save``'s legacy (non-zip) format starts with this number, pickled (``torch.serialization.MAGIC_NUMBER``)
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _plain_globals() -> list:
    """Non-tensor types that appear in real Lightning checkpoints and are safe to reconstruct."""
    allowed = [pathlib.PosixPath, pathlib.WindowsPath, np.dtype, np.ndarray]
    try:  # numpy scalars are pickled through numpy.core.multiarray.scalar (numpy 1) / numpy._core (numpy 2)
        from numpy._core.multiarray import scalar as np_scalar  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import scalar as np_scalar  # type: ignore[no-redef]
    allowed.append(np_scalar)
    for name in ("_reconstruct",):
        try:
            from numpy._core import multiarray as ma  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover
            from numpy.core import multiarray as ma  # type: ignore[no-redef]
        allowed.append(getattr(ma, name))
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return allowed


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a .ckpt/.safetensors file (use a diffusers folder loader)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")


def _check_torch_file(path: Path) -> None:
    """A one-line error unless ``path`` starts like a ``torch.save`` file: a zip archive, or a pickle that
    begins with torch's magic number (the legacy format). Random bytes, text, HTML error pages and plain Python
    pickles are told apart here instead of failing somewhere inside the unpickler."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and _LEGACY_MAGIC in head):
        return
    if head[:1] == b"\x80":
        raise CheckpointError(f"{path} is a plain Python pickle, not a PyTorch checkpoint (torch.save)")
    what = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:32]) else "bytes"
    raise CheckpointError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive or a pickle, "
                          f"and this file is neither (it starts with {what} "
                          f"{head[:8].hex(' ') if what == 'bytes' else repr(head[:24].decode('ascii'))}); "
                          "is it the right file, completely downloaded?")


def read_checkpoint_file(path: str | os.PathLike, device="cpu") -> dict:
    """The top-level object of a ``.ckpt``/``.pt``/``.bin`` or ``.safetensors`` file, its tensors on ``device``
    (default the CPU; a CUDA device reads a safetensors file's tensors straight to the GPU, without a CPU copy of
    the whole model on the way).

    Safetensors files give ``{key: tensor}``; pickles give whatever dict they hold (usually with ``state_dict``).
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt): "
                                  f"{str(exc).splitlines()[0]}") from None
    _check_torch_file(path)
    try:
        with torch.serialization.safe_globals(_plain_globals()):
            obj = torch.load(str(path), map_location=device, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        detail = next((ln.strip().rstrip(".") for ln in msg.splitlines()
                       if "unsupported global" in ln.lower() or "unsupported operand" in ln.lower()), "")
        if detail or "weights_only" in msg.lower() or "Weights only load failed" in msg:
            raise CheckpointError(
                f"refusing to load {path}: its pickle asks for something other than plain tensors and numbers "
                f"({detail or 'unsupported pickle content'}); such a file can run code. If you trust it, "
                "re-save its state_dict with safetensors") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unpickling failed: {msg.splitlines()[0]})") \
            from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError,
            IndexError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def extract_state_dict(obj: dict, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """``obj['state_dict']`` for Lightning checkpoints, else ``obj`` itself when it maps names to tensors."""
    sd = obj.get("state_dict", obj) if isinstance(obj.get("state_dict", None), dict) else obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (keys: {', '.join(list(obj)[:6])})")
    others = [k for k in sd if k not in tensors]
    if others:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {', '.join(others[:5])}")
    return tensors


def read_state_dict(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, safely (see module docstring), on ``device`` (see ``read_checkpoint_file``)."""
    return extract_state_dict(read_checkpoint_file(path, device), path)
