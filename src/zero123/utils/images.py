"""The package's one image grid: tile images (PIL, ``[H,W,C]`` uint8 arrays or ``[3,H,W]`` tensors) into one picture.

Used by ``zero123 views`` / the app (``grid.png``), the training samples (``samples/step_*.png``), the to3d preview
and the eval-3d figure. :func:`image_grid` returns an ``[H,W,3]`` uint8 array, :func:`save_image_grid` writes it
atomically (:mod:`zero123.utils.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["as_uint8_rgb", "image_grid", "save_image_grid"]


def as_uint8_rgb(image) -> np.ndarray:
    """One image as an ``[H,W,3]`` uint8 array.

    ``image``: a PIL image (any mode), an ``[H,W]`` / ``[H,W,1|3|4]`` uint8 array (alpha dropped, grey repeated), or a
    torch tensor ``[3,H,W]`` with values in [-1, 1] (the models' range; clamped, ``(x + 1) * 127.5`` rounded)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch tensor [3,H,W] in [-1,1]
        t = image.detach().float().cpu().clamp(-1, 1)
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"a tensor image must be [3,H,W] in [-1,1], got shape {tuple(t.shape)}")
        return ((t + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"an array image must be uint8 [H,W,C], got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an array image must be [H,W], [H,W,1], [H,W,3] or [H,W,4], got shape {arr.shape}")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]


def image_grid(images: Sequence, *, columns: Optional[int] = None, pad: int = 0,
               background: int = 255) -> np.ndarray:
    """Tile images into one ``[H,W,3]`` uint8 grid.

    ``images``: either rows (a list of lists of images, rows may differ in length) or a flat list of images, laid out
    ``columns`` to a row (default: ``min(len(images), 8)``). Each image is anything :func:`as_uint8_rgb` takes. Every
    cell is the size of the largest image (smaller ones sit in its top-left corner); ``pad`` pixels of
    ``background`` (0-255 grey level) separate the cells and frame the grid."""
    if len(images) == 0:
        raise ValueError("image_grid needs at least one image")
    if isinstance(images[0], (list, tuple)):
        if columns is not None:
            raise ValueError("image_grid: give rows or columns, not both")
        rows = [[as_uint8_rgb(im) for im in row] for row in images]
    else:
        flat = [as_uint8_rgb(im) for im in images]
        columns = columns or min(len(flat), 8)
        if columns < 1:
            raise ValueError(f"image_grid: columns must be >= 1, got {columns}")
        rows = [flat[i:i + columns] for i in range(0, len(flat), columns)]
    cells = [im for row in rows for im in row]
    if not cells:
        raise ValueError("image_grid needs at least one image")
    h = max(im.shape[0] for im in cells)
    w = max(im.shape[1] for im in cells)
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + im.shape[0], x:x + im.shape[1]] = im
    return out


def save_image_grid(images: Sequence, path, *, columns: Optional[int] = None, pad: int = 0,
                    background: int = 255) -> Path:
    """:func:`image_grid` written to ``path`` (format from its suffix) atomically; returns ``path``."""
    from PIL import Image

    from .atomic import atomic_save_image

    grid = image_grid(images, columns=columns, pad=pad, background=background)
    return atomic_save_image(Image.fromarray(grid), path)
