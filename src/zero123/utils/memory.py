"""GPU memory budgets: ``zero123 to3d --max-memory``'s memory model, and out-of-memory errors as one line.

Memory model of an image-to-3D step (bytes; measured by ``bench/memory_model.py`` and the VAE count below):

    peak ~= resident + guidance(B) + RENDER_WORKSPACE + BYTES_PER_SAMPLE * samples_in_part

* ``resident``: what is allocated when the step starts (the diffusion model, the field, its gradients and Adam
  state; on CUDA ``torch.cuda.memory_allocated``);
* ``guidance(B)`` = ``B * size^2 * GUIDANCE_BYTES_PER_PIXEL * itemsize / 4 + UNET_WORKSPACE``: the VAE encoder's
  autograd graph of ``B`` renders at the model's ``size`` (SDS back-propagates through it; 758 MiB for one
  256 px image in float32, so 12.1 kB a pixel, half in float16) and the guided UNet's no-grad activations;
* ``BYTES_PER_SAMPLE`` = 5500: the peak of live tensors per kept ray sample over a render's forward and backward
  with normals, diffuse shading and the 3D normal-smoothness points (the default hash-grid NeRF;
  ``bench/memory_model.py``: 5494 B, of which 1292 B are held by the graph between forward and backward);
* ``RENDER_WORKSPACE`` (1.5 GiB): the chunk-bounded transients of the hash grid's PyTorch path and of the
  sampling pass (the CUDA Triton kernels need less).

The trainer renders in parts sized by :meth:`MemoryPlan.limits` (``zero123.rendering.chunked``:
the same gradient), so the peak follows the budget, not the object's size in the frame. ``default_budget`` is
the GPU's free memory plus what this process already holds (capped by
``torch.cuda.set_per_process_memory_fraction``), of which ``USABLE_FRACTION`` is planned for (the caching
allocator's fragmentation takes the rest).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import Zero123Error

GIB = 1 << 30
BYTES_PER_SAMPLE = 5500
RENDER_WORKSPACE = 3 * GIB // 2
GUIDANCE_BYTES_PER_PIXEL = 12_100   # float32; VAE encoder graph per pixel of a render at the model's size
UNET_WORKSPACE = 1 * GIB
USABLE_FRACTION = 0.9
MIN_SAMPLES = 1 << 16               # smallest part worth running (a 512 px row holds up to 512 * 512 samples)


def default_budget(device) -> Optional[int]:
    """Bytes a run on ``device`` may use: the CUDA device's free memory plus this process's reserved memory,
    at most ``per_process_memory_fraction * total``; None on a CPU (no bound)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    if device.index is None:  # torch.cuda's per-device queries need an index
        device = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    budget = free + torch.cuda.memory_reserved(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    return int(min(budget, fraction * total))


def resolve_budget(max_memory_gib: Optional[float], device) -> Optional[int]:
    """``--max-memory`` in GiB (checked: > 0; ``inf``: no bound, whole renders), else :func:`default_budget`;
    bytes or None (no bound)."""
    if max_memory_gib is None:
        return default_budget(device)
    if float(max_memory_gib) == float("inf"):
        return None
    if not float(max_memory_gib) > 0:
        raise Zero123Error(f"--max-memory must be a positive number of GiB, got {max_memory_gib}")
    return int(float(max_memory_gib) * GIB)


@dataclass
class MemoryPlan:
    """Part sizes that keep a step within ``budget`` bytes (module docstring; None: no bound).

    ``model_size``: the diffusion model's image side; ``itemsize``: bytes of its dtype."""

    budget: Optional[int]
    model_size: int = 256
    itemsize: int = 2
    bytes_per_sample: float = BYTES_PER_SAMPLE

    def guidance_bytes(self, images: int) -> int:
        if images == 0:
            return 0
        return int(images * self.model_size ** 2 * GUIDANCE_BYTES_PER_PIXEL * self.itemsize / 4) + UNET_WORKSPACE

    def limits(self, resident: int, guidance_images: int = 0) -> Tuple[Optional[int], Optional[int]]:
        """``(whole, part)``: the most kept samples a render may hold to be made whole (its graph beside the
        guidance's), and a part of a render made in parts (the guidance then runs on a no-grad render first, so
        a part has the budget without it), with ``resident`` bytes already allocated and the guidance of
        ``guidance_images`` renders. ``(None, None)`` without a budget. A one-line error naming ``--max-memory``
        when the guidance alone does not fit or a part could not hold ``MIN_SAMPLES``."""
        if self.budget is None:
            return None, None
        usable = self.budget * USABLE_FRACTION
        guidance = self.guidance_bytes(guidance_images)
        part = int((usable - resident - RENDER_WORKSPACE) // self.bytes_per_sample)
        if part < MIN_SAMPLES or resident + guidance > usable:
            need = max(resident + RENDER_WORKSPACE + MIN_SAMPLES * self.bytes_per_sample, resident + guidance)
            raise Zero123Error(f"this run needs at least {need / USABLE_FRACTION / GIB:.1f} GiB of GPU memory, over "
                               f"--max-memory {self.budget / GIB:.1f} GiB (a smaller --preset, fewer views in a "
                               "batch, or a larger --max-memory on a bigger GPU)")
        whole = max(0, int((usable - resident - guidance - RENDER_WORKSPACE) // self.bytes_per_sample))
        return whole, part


def resident_bytes(device, frozen=(), trained=()) -> int:
    """Bytes held now: on CUDA ``torch.cuda.memory_allocated``; elsewhere the parameters of the ``frozen``
    modules plus four times those of the ``trained`` ones (parameters, gradients, Adam's two moments)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    size = lambda mods: sum(p.numel() * p.element_size() for m in mods for p in m.parameters())  # noqa: E731
    return size(frozen) + 4 * size(trained)


def is_out_of_memory(exc: BaseException) -> bool:
    """``exc`` is a CUDA (or other accelerator) out-of-memory error (torch is not imported for this)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ()))


def out_of_memory_message(exc: BaseException, command: Optional[str] = None) -> str:
    """The one line an out-of-memory error becomes (CLI and app): what ran out and what to change."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
    detail = first.split(". GPU")[0]
    hints = {"to3d": "lower --max-memory to what the GPU really has free, or use --preset fast",
             "text-to-3d": "use --preset fast, --cpu-offload, or to3d --max-memory on its input_rgba.png",
             "views": "sample fewer views at once, or use --dtype fp16", "app": "use the fast preset or fewer views"}
    hint = hints.get(command or "", "free GPU memory (other processes) or use smaller settings")
    return f"out of GPU memory ({detail}): {hint}"


__all__ = ["GIB", "MemoryPlan", "default_budget", "resolve_budget", "resident_bytes", "is_out_of_memory",
           "out_of_memory_message"]
