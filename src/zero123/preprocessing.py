"""Input-image preparation: foreground mask, recentring, compositing on white, tensors.

Zero123 models expect the object centred, its larger side ``ratio`` (0.8, as zero123's demo) of the frame, on a
white background, ``size`` x ``size`` (256 for released models), values in [-1, 1].

Foreground:
* RGBA input with a non-trivial alpha channel: the alpha is the mask.
* RGB input (or opaque RGBA): **plain-background segmentation**. The background colour is the median of a border
  frame (2% of the side). A pixel is foreground when any channel differs from it by more than ``tolerance``
  (0..1, default 0.1); holes inside the object are filled and specks smaller than 5% of the largest part dropped.
  Photos without a plain, uniform border are refused with a clear error: remove the background first or pass
  a matting model (``zero123.matting``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import Zero123Error

REFERENCE_SIZE_RATIO = 0.8


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file (EXIF orientation applied); one-line errors for missing or non-image files."""
    path = Path(path)
    if not path.exists():
        raise Zero123Error(f"image not found: {path}")
    if path.is_dir():
        raise Zero123Error(f"{path} is a folder, not an image")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Zero123Error(f"{path} is not a readable image ({type(exc).__name__})") from None


def _as_pil(image) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        arr = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(arr)
    raise Zero123Error(f"expected an image path, PIL image or array, got {type(image).__name__}")


def has_alpha(image: Image.Image) -> bool:
    """True when the image has an alpha channel that is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA") and not (image.mode == "P" and "transparency" in image.info):
        return False
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return bool(alpha.min() < 250)


def segment_foreground(image: Image.Image, tolerance: float = 0.1) -> np.ndarray:
    """Mask ``[H,W]`` float in {0,1} of the object on a plain background (see module docstring)."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h, w, _ = rgb.shape
    b = max(1, int(round(0.02 * min(h, w))))
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3),
                             rgb[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    border_dist = np.abs(border - bg).max(axis=1)
    if np.mean(border_dist > tolerance) > 0.25:
        raise Zero123Error("the image has no plain background to segment (its border is not one colour): "
                           "give an RGBA image with the background removed, or a matting model")
    mask = np.abs(rgb - bg).max(axis=2) > tolerance
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))  # drop 1-2 px specks
    labels, n = ndimage.label(mask)
    if n == 0:
        raise Zero123Error("no object found: the image is one plain colour")
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
    mask = ndimage.binary_fill_holes(np.isin(labels, keep))
    return mask.astype(np.float32)


def foreground_mask(image: Image.Image, matting=None, tolerance: float = 0.1) -> np.ndarray:
    """Mask ``[H,W]`` float in [0,1]: the alpha channel if present, else ``matting(image)``, else segmentation."""
    if has_alpha(image):
        return np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
    if matting is not None:
        return np.clip(np.asarray(matting(image.convert("RGB")), dtype=np.float32), 0.0, 1.0)
    return segment_foreground(image, tolerance)


def recenter(image: Image.Image, mask: np.ndarray, size: int = 256, ratio: float = REFERENCE_SIZE_RATIO) -> Image.Image:
    """RGBA ``size`` x ``size``: the object's mask bounding box scaled so its larger side is ``ratio * size``,
    centred. Colour outside the mask is irrelevant (alpha is 0 there)."""
    if not 0.05 <= ratio <= 1.0:
        raise Zero123Error(f"size ratio {ratio} out of range [0.05, 1]")
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0:
        raise Zero123Error("no object found in the image (empty foreground mask)")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([np.asarray(image.convert("RGB")), (np.clip(mask, 0, 1) * 255).round().astype(np.uint8)])
    crop = Image.fromarray(rgba[y0:y1, x0:x1], "RGBA")
    scale = ratio * size / max(y1 - y0, x1 - x0)
    new_w, new_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    crop = crop.resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    out.paste(crop, ((size - new_w) // 2, (size - new_h) // 2))
    return out


def composite_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite an RGBA image over white; returns RGB."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[1,3,H,W]`` float32 in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def tensor_to_images(images: torch.Tensor) -> list[Image.Image]:
    """``[N,3,H,W]`` in [0, 1] -> list of RGB PIL images."""
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


@dataclass
class PreparedImage:
    """The model input: ``rgba`` recentred (size x size), ``rgb`` composited on white, ``tensor`` [1,3,S,S] in [-1,1]."""

    rgba: Image.Image
    rgb: Image.Image
    tensor: torch.Tensor


def prepare_input_image(image, size: int = 256, ratio: float = REFERENCE_SIZE_RATIO, matting=None,
                        recentre: bool = True) -> PreparedImage:
    """Path / PIL / array -> ``PreparedImage`` (mask, recentre to ``ratio``, white background, [-1,1] tensor).

    ``recentre=False`` keeps the framing and only resizes (for images already prepared like the training data).
    """
    pil = _as_pil(image)
    if pil.width < 8 or pil.height < 8:
        raise Zero123Error(f"image is too small ({pil.width}x{pil.height} pixels)")
    if recentre:
        rgba = recenter(pil, foreground_mask(pil, matting), size, ratio)
    else:
        rgba = pil.convert("RGBA").resize((size, size), Image.Resampling.LANCZOS)
    rgb = composite_on_white(rgba)
    return PreparedImage(rgba=rgba, rgb=rgb, tensor=image_to_tensor(rgb))
