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


def resolve_device_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("fp16" if str(device).startswith("cuda") else "fp32")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from ..errors import Zero123Error

        raise Zero123Error(f"--device {device} requested but CUDA is not available on this machine")
    return device, dtype


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
