"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", "-c", metavar="PATH", default=None,
                   help="model: an LDM .ckpt/.safetensors (stable_zero123.ckpt, zero123-xl.ckpt, ...) or a "
                        "diffusers-format folder. Default: the small model bundled with zero123")
    g.add_argument("--variant", choices=["zero123", "stable_zero123"], default=None,
                   help="camera conditioning of the checkpoint (default: from the folder's config or the file "
                        "name: names with 'stable' or '123c' mean stable_zero123)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="weights/compute precision (default: fp16 on CUDA, fp32 on CPU)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """DDIM sampling options shared by ``views`` and ``eval``."""
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (default 3.0)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic; zero123's demo uses 1)")
    p.add_argument("--noise-scale", type=float, default=None, metavar="TAU",
                   help="start noise ~ N(0, TAU^2), TAU in [0, 1]: below 1, views nearer the model's most likely "
                        "one, with less texture detail (default: the model folder's sampling.json, else 1; the "
                        "bundled model's is 0.5)")


def resolve_device_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("fp16" if str(device).startswith("cuda") else "fp32")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from ..errors import Zero123Error

        raise Zero123Error(f"--device {device} requested but CUDA is not available on this machine")
    return device, dtype


def load_pipeline(checkpoint, variant, dtype, device):
    """``Zero123Pipeline`` from a diffusers folder, an LDM file, or ``None`` (the bundled model)."""
    from ..pipelines.zero123_pipeline import Zero123Pipeline

    if checkpoint is None or Path(checkpoint).is_dir():
        return Zero123Pipeline.from_pretrained(checkpoint, variant=variant, dtype=dtype, device=device)
    return Zero123Pipeline.from_single_file(checkpoint, variant=variant, dtype=dtype, device=device)


def atomic_save_image(image, path: Path) -> None:
    """Save a PIL image via a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_grid(images, columns: int | None = None):
    """Tile equally sized PIL images into one grid image (``columns`` default: all in one row up to 8)."""
    from PIL import Image

    columns = columns or min(len(images), 8)
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    return grid
