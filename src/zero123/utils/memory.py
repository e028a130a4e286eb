"""GPU memory budgets: ``zero123 to3d --max-memory``'s memory model, and out-of-memory errors as one line.

Memory model of an image-to-3D step (bytes; measured by ``bench/memory_model.py`` and the VAE count below):

    peak ~= resident + guidance(B) + BACKWARD_FACTOR * BYTES_PER_SAMPLE * samples_in_part

* ``resident``: what is allocated when the step starts (the diffusion model, the field, its gradients and Adam
  state; on CUDA ``torch.cuda.memory_allocated``);
* ``guidance(B)`` = ``B * size^2 * GUIDANCE_BYTES_PER_PIXEL * itemsize / 4 + UNET_WORKSPACE``: the VAE encoder's
  autograd graph of ``B`` renders at the model's ``size`` (SDS back-propagates through it; 758 MiB for one
  256 px image in float32, so 12.1 kB a pixel, half in float16) and the guided UNet's no-grad activations;
* ``BYTES_PER_SAMPLE`` = 1300: what the autograd graph of a render keeps per kept ray sample with normals,
  diffuse shading and the 3D normal-smoothness points (the default hash-grid NeRF, PyTorch hash grid,
  ``checkpoint_mlp``; ``bench/memory_model.py``: 1294 B; 236 B for albedo only), times ``BACKWARD_FACTOR`` 1.5 for
  the backward's transients.

The trainer renders in parts of at most :meth:`MemoryPlan.max_samples` samples (``zero123.rendering.chunked``:
the same gradient), so the peak follows the budget, not the object's size in the frame. ``default_budget`` is
the GPU's free memory plus what this process already holds (capped by
``torch.cuda.set_per_process_memory_fraction``), of which ``USABLE_FRACTION`` is planned for (the caching
allocator's fragmentation takes the rest).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from ..errors import Zero123Error

GIB = 1 << 30
BYTES_PER_SAMPLE = 1300
BACKWARD_FACTOR = 1.5
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
    bytes_per_sample: float = BYTES_PER_SAMPLE * BACKWARD_FACTOR

    def guidance_bytes(self, images: int) -> int:
        if images == 0:
            return 0
        return int(images * self.model_size ** 2 * GUIDANCE_BYTES_PER_PIXEL * self.itemsize / 4) + UNET_WORKSPACE

    def max_samples(self, resident: int, guidance_images: int = 0) -> Optional[int]:
        """Most kept samples a render part may hold with ``resident`` bytes already allocated and the guidance
        of ``guidance_images`` renders to come; a one-line error naming ``--max-memory`` when not even
        ``MIN_SAMPLES`` fit."""
        if self.budget is None:
            return None
        fixed = resident + self.guidance_bytes(guidance_images)
        free = self.budget * USABLE_FRACTION - fixed
        n = int(free // self.bytes_per_sample)
        if n < MIN_SAMPLES:
            need = (fixed + MIN_SAMPLES * self.bytes_per_sample) / USABLE_FRACTION
            raise Zero123Error(f"this run needs at least {need / GIB:.1f} GiB of GPU memory, over --max-memory "
                               f"{self.budget / GIB:.1f} GiB (a smaller --preset, fewer views in a batch, or a "
                               "larger --max-memory on a bigger GPU)")
        return n


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


__all__ = ["GIB", "MemoryPlan", "default_budget", "resolve_budget", "is_out_of_memory", "out_of_memory_message"]
