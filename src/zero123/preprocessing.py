"""Input-image preparation: foreground mask, recentring, compositing on white, tensors.

Zero123 models expect the object centred, its larger side ``ratio`` (0.8, as zero123's demo) of the frame, on a
white background, ``size`` x ``size`` (256 for released models), values in [-1, 1].

Foreground:
* RGBA input with a non-trivial alpha channel: the alpha is the mask.
* RGB input (or opaque RGBA): **plain-background segmentation**. The background colour is the median of a border
  frame (2% of the side). A pixel is foreground when any channel differs from it by more than ``tolerance``
  (0..1, default 0.1); holes inside the object are filled and specks smaller than 5% of the largest part dropped.
  With ``method="plain"`` photos without a plain, uniform border are refused with a clear error.
* RGB photos whose border is not plain (``method="auto"``, the default): the **built-in** background removal
  (``zero123.segmentation.builtin_foreground``: GrabCut seeded from a border-contrast and centre prior), offline.
* ``matting_model=``: an ONNX salient-object model (``zero123.matting.OnnxMattingModel``) or any callable
  ``PIL -> mask [H,W] in [0,1]``; ``mask=``: the user's own mask (path, PIL or array, the photo's size; white or
  opaque = object). Both take precedence over segmentation; an RGBA input's alpha takes precedence in ``auto``.

Photos larger than ``SEGMENTATION_MAX_SIDE`` (1024 px) are downscaled (Lanczos) before segmentation, with one
line on stderr, so memory and time stay bounded; the model input (256 px) loses nothing from it.

Reading (:func:`load_image`): PNG, JPEG, WebP, BMP, TIFF, GIF (first frame), ... in any mode (palette, grayscale,
16-bit, CMYK, with or without alpha) come out as 8-bit ``RGB`` or ``RGBA``, EXIF orientation applied. Images over
``MAX_PIXELS`` are refused from their header, before decoding; images whose longer side exceeds
``MAX_WORKING_SIDE`` are reduced while decoding (JPEG's DCT scaling via ``Image.draft``, then a box/Lanczos
reduction) and the reduction is said in one logged line: an 8000 x 8000 photo costs tens of MB, not GBs.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import Zero123Error

REFERENCE_SIZE_RATIO = 0.8
#: Longer side above which a photo is downscaled before segmentation.
SEGMENTATION_MAX_SIDE = 1024
#: ``method=`` values: auto (alpha, else mask / matting model when given, else plain rule when the border is
#: plain, else built-in), plain (the plain-background rule only), builtin, matting (needs ``matting_model``).
SEGMENTATION_METHODS = ("auto", "plain", "builtin", "matting")
#: largest image accepted, in pixels (checked from the file's header, before decoding)
MAX_PIXELS = 100_000_000
#: longer side an image is reduced to while it is read (the model sees 256 px; masks need no more)
MAX_WORKING_SIDE = 2048

logger = logging.getLogger(__name__)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Any PIL mode -> ``RGBA`` (when it has an alpha channel or palette transparency) or ``RGB``, 8 bits."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit / 32-bit grayscale
        arr = np.asarray(im, dtype=np.float64)
        scale = 1.0 if im.mode == "F" and arr.max(initial=0) <= 1.0 else 65535.0
        im = Image.fromarray((np.clip(arr / scale, 0, 1) * 255).round().astype(np.uint8), "L")
    has_alpha_channel = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (im.mode == "P" and "transparency" in im.info)
    target = "RGBA" if has_alpha_channel else "RGB"
    return im if im.mode == target else im.convert(target)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit ``RGB``/``RGBA`` (see the module docstring: formats, EXIF orientation,
    ``MAX_PIXELS`` checked before decoding, reduction to ``MAX_WORKING_SIDE``); one-line ``Zero123Error`` s for a
    missing, unreadable, truncated or too large file."""
    path = Path(path)
    if not path.exists():
        raise Zero123Error(f"image not found: {path}")
    if path.is_dir():
        raise Zero123Error(f"{path} is a folder, not an image")
    limit = f"zero123 reads images of up to {MAX_PIXELS / 1e6:.0f} megapixels: downscale it first"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise Zero123Error(f"{path} is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); {limit}")
                box = (MAX_WORKING_SIDE, MAX_WORKING_SIDE)
                if max(w, h) > MAX_WORKING_SIDE:
                    im.draft(None, box)  # JPEG: DCT-scaled decoding at 1/2..1/8, still >= box; others: no-op
                im.load()
                if max(im.size) > MAX_WORKING_SIDE and im.mode in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"):
                    im.thumbnail(box, Image.Resampling.LANCZOS, reducing_gap=2.0)
                out = _to_8bit(ImageOps.exif_transpose(im))
            if max(out.size) > MAX_WORKING_SIDE:  # 16-bit and other modes: reduced after the conversion
                out.thumbnail(box, Image.Resampling.LANCZOS)
            if max(w, h) > MAX_WORKING_SIDE:
                logger.warning("%s is %dx%d pixels: read at %dx%d", path, w, h, *out.size)
            return out
    except Image.DecompressionBombError:
        raise Zero123Error(f"{path} has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; {limit}") \
            from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Zero123Error(f"{path} is not a readable image ({first})") from None


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


def _plain_border(rgb: np.ndarray, tolerance: float):
    """(background colour [3], whether the border is plain): the median of a 2% border frame, and whether at
    most a quarter of the border differs from it by more than ``tolerance``."""
    h, w, _ = rgb.shape
    b = max(1, int(round(0.02 * min(h, w))))
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3),
                             rgb[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    return bg, bool(np.mean(np.abs(border - bg).max(axis=1) > tolerance) <= 0.25)


def has_plain_background(image: Image.Image, tolerance: float = 0.1) -> bool:
    """Whether the plain-background rule applies to ``image`` (its border is one colour within ``tolerance``)."""
    return _plain_border(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, tolerance)[1]


def segment_foreground(image: Image.Image, tolerance: float = 0.1) -> np.ndarray:
    """Mask ``[H,W]`` float in {0,1} of the object on a plain background (see module docstring)."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    bg, plain = _plain_border(rgb, tolerance)
    if not plain:
        raise Zero123Error("the image has no plain background to segment (its border is not one colour): "
                           "give an RGBA image with the background removed, a --mask, or a matting model, "
                           "or use the built-in background removal")
    mask = np.abs(rgb - bg).max(axis=2) > tolerance
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))  # drop 1-2 px specks
    labels, n = ndimage.label(mask)
    if n == 0:
        raise Zero123Error("no object found: the image is one plain colour")
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
    mask = ndimage.binary_fill_holes(np.isin(labels, keep))
    return mask.astype(np.float32)


def load_mask(mask, size: tuple[int, int] | None = None) -> np.ndarray:
    """A user's mask -> ``[H,W]`` float32 in [0,1] (1 = object).

    ``mask``: path, PIL image or array (bool, uint8 0..255 or float 0..1; ``[H,W]`` or ``[H,W,C]``). An image with
    a non-opaque alpha channel gives its alpha (a cutout), else its luminance (white = object). ``size``:
    ``(W, H)`` it must have (the photo's); a mismatch, an empty or an all-object mask is a one-line error.
    """
    if isinstance(mask, np.ndarray) and mask.ndim == 2:
        m = mask.astype(np.float32)
        m = m / 255.0 if mask.dtype == np.uint8 else m
    else:
        pil = _as_pil(mask)
        m = (np.asarray(pil.convert("RGBA"))[..., 3] if has_alpha(pil) else np.asarray(pil.convert("L")))
        m = m.astype(np.float32) / 255.0
    if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
        raise Zero123Error(f"the mask is {m.shape[1]}x{m.shape[0]} pixels but the photo is {size[0]}x{size[1]}: "
                           "give a mask of the photo's size")
    m = np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0)
    if not (m > 0.5).any():
        raise Zero123Error("the mask is empty (no pixel above half intensity): white marks the object")
    if (m > 0.5).all():
        raise Zero123Error("the mask covers the whole photo: white marks the object, black the background")
    return m


def _check_method(method: str) -> str:
    if method not in SEGMENTATION_METHODS:
        raise Zero123Error(f"unknown segmentation method {method!r}: use {', '.join(SEGMENTATION_METHODS)}")
    return method


def resolve_matting(matting_model, kind: str | None = None):
    """``matting_model`` as a callable ``PIL -> mask``: a ``.onnx`` path is loaded (``OnnxMattingModel``), a
    callable is returned as is, ``None`` stays ``None``."""
    if matting_model is None or callable(matting_model):
        return matting_model
    from .matting import OnnxMattingModel

    return OnnxMattingModel(matting_model, kind=kind)


def foreground_mask(image: Image.Image, matting=None, tolerance: float = 0.1, *, method: str = "auto",
                    mask=None, matting_model=None) -> np.ndarray:
    """Mask ``[H,W]`` float in [0,1] of ``image``, by ``method`` (``SEGMENTATION_METHODS``, module docstring).

    ``mask``: the user's mask (``load_mask``); ``matting_model`` (or the older name ``matting``): an ONNX path or
    a callable ``PIL -> mask``. ``method="auto"``: alpha channel, else ``mask``, else the matting model, else the
    plain-background rule if the border is plain, else the built-in.
    """
    _check_method(method)
    matting = resolve_matting(matting_model if matting_model is not None else matting)
    if mask is not None:
        return load_mask(mask, image.size)
    if method == "auto" and has_alpha(image):
        return np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
    if method == "matting" and matting is None:
        raise Zero123Error("segmentation method 'matting' needs a matting model (--matting-model FILE.onnx)")
    if matting is not None and method in ("auto", "matting"):
        return np.clip(np.asarray(matting(image.convert("RGB")), dtype=np.float32), 0.0, 1.0)
    if method == "plain" or (method == "auto" and has_plain_background(image, tolerance)):
        return segment_foreground(image, tolerance)
    from .segmentation import builtin_foreground

    m = builtin_foreground(image)
    if not (m > 0.5).any():
        raise Zero123Error("no object found by the built-in background removal: give a --mask or a matting model")
    return m


def downscale_for_segmentation(image: Image.Image, max_side: int = SEGMENTATION_MAX_SIDE,
                               verbose: bool = True) -> Image.Image:
    """``image`` with its longer side at most ``max_side`` (Lanczos; modes kept); says so in one line on stderr."""
    w, h = image.size
    if max(w, h) <= max_side:
        return image
    s = max_side / max(w, h)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, 16-bit, CMYK, ...: to 8-bit colour first
        image = image.convert("RGBA" if has_alpha(image) else "RGB")
    factor = max(1, int(1 / s))  # a cheap integer box reduce first keeps the Lanczos pass small
    small = image.reduce(factor) if factor > 1 else image
    out = small.resize(new, Image.Resampling.LANCZOS)
    if verbose:
        print(f"downscaled {w}x{h} -> {new[0]}x{new[1]} for segmentation", file=sys.stderr)
    return out


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
    """The model input: ``rgba`` recentred (size x size), ``rgb`` composited on white, ``tensor`` [1,3,S,S] in [-1,1];
    ``mask``: the foreground mask ``[h,w]`` in [0,1] of the (downscaled) photo, ``None`` without recentring."""

    rgba: Image.Image
    rgb: Image.Image
    tensor: torch.Tensor
    mask: np.ndarray | None = None

    def mask_image(self) -> Image.Image | None:
        """The foreground mask as an 8-bit grayscale image (white = object), or ``None``."""
        return None if self.mask is None else Image.fromarray((np.clip(self.mask, 0, 1) * 255).round().astype(np.uint8))


def prepare_input_image(image, size: int = 256, ratio: float = REFERENCE_SIZE_RATIO, matting=None,
                        recentre: bool = True, *, matting_model=None, mask=None, method: str = "auto") -> PreparedImage:
    """Path / PIL / array -> ``PreparedImage`` (mask, recentre to ``ratio``, white background, [-1,1] tensor).

    ``method`` / ``mask`` / ``matting_model`` (older name ``matting``): how the foreground is found, see
    ``foreground_mask``. ``recentre=False`` keeps the framing and only resizes (for images already prepared like
    the training data). Photos larger than ``SEGMENTATION_MAX_SIDE`` are downscaled first (one line on stderr).
    """
    _check_method(method)
    pil = _as_pil(image)
    if pil.width < 8 or pil.height < 8:
        raise Zero123Error(f"image is too small ({pil.width}x{pil.height} pixels)")
    if not recentre:
        rgba = pil.convert("RGBA").resize((size, size), Image.Resampling.LANCZOS)
        rgb = composite_on_white(rgba)
        return PreparedImage(rgba=rgba, rgb=rgb, tensor=image_to_tensor(rgb))
    user_mask = None if mask is None else load_mask(mask, pil.size)
    work = downscale_for_segmentation(pil)
    if user_mask is not None and work.size != pil.size:
        user_mask = np.asarray(Image.fromarray(user_mask).resize(work.size, Image.Resampling.BILINEAR))
    fg = foreground_mask(work, matting, method=method, mask=user_mask, matting_model=matting_model)
    rgba = recenter(work, fg, size, ratio)
    rgb = composite_on_white(rgba)
    return PreparedImage(rgba=rgba, rgb=rgb, tensor=image_to_tensor(rgb), mask=fg)
