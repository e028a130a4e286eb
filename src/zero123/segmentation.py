"""Built-in background removal for real photos: OpenCV GrabCut seeded from a border-contrast and centre prior.

Offline, no weights: ``builtin_foreground(image)`` returns a mask ``[H,W]`` float32 in [0,1] (1 = object) of
an object photographed in front of a cluttered or graded background, assuming what object photos for image-to-3D
look like: one object, roughly centred, not cut off by the frame.

Steps (all on a copy whose longer side is ``work_side`` pixels, 320 by default; the mask is resized back):

1. **Background colours**: k-means (``border_clusters`` = 8) of the pixels of the frame's border ring
   (``border`` = 4% of the shorter side), in CIE Lab.
2. **Prior**: per pixel, the Lab distance to the nearest background colour (robustly normalised, so a graded or
   textured background that looks like its border scores low), times a centred Gaussian (sigma = ``centre_sigma``
   of the frame side), smoothed. Otsu's threshold on it gives the first probable-object region.
3. **GrabCut** (``cv2.grabCut``, colour GMMs + graph cut, ``iterations`` = 5) from that seed: the border ring is
   sure background, the prior's strongest pixels (above twice the threshold, inside the centre) probable object,
   the rest probable object/background by the threshold.
4. **Clean-up**: connected parts smaller than 5% of the largest one dropped, holes filled, a one-pixel opening;
   the mask is upsampled with a bilinear filter and kept soft (values in [0,1]) at the edge.

If GrabCut's result is implausible (empty, or more than 90% of the frame) the prior's Otsu region is returned
instead. Measured in ``bench/bench_segmentation.py`` (IoU, boundary F-score, time, memory; ``bench/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import Zero123Error


@dataclass(frozen=True)
class BuiltinSegmentationConfig:
    """Settings of :func:`builtin_foreground` (see the module docstring for what each does)."""

    work_side: int = 320
    border: float = 0.04
    border_clusters: int = 8
    centre_sigma: float = 0.35
    iterations: int = 5
    min_part: float = 0.05
    texture_weight: float = 1.0
    smooth_border: float = 12.0


def _import_cv2():
    try:
        import cv2
    except ImportError:  # opencv-python-headless is a runtime dependency; this only happens in broken installs
        raise Zero123Error("built-in background removal needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def _border_ring(h: int, w: int, b: int) -> np.ndarray:
    ring = np.zeros((h, w), bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    return ring


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega, mu = np.cumsum(p), np.cumsum(p * edges[:-1])
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1.0 - omega), 1e-12)
    return float(edges[int(np.argmax(between))])


def foreground_prior(rgb: np.ndarray, config: BuiltinSegmentationConfig = BuiltinSegmentationConfig()) -> np.ndarray:
    """Object likelihood ``[h,w]`` in [0,1] of a small uint8 RGB image ``[h,w,3]`` (steps 1-2 of the module)."""
    cv2 = _import_cv2()
    h, w, _ = rgb.shape
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    # a texture channel: local standard deviation of lightness (5 x 5), so smooth objects stand out of gravel
    L = lab[..., 0]
    var = cv2.blur(L * L, (5, 5)) - cv2.blur(L, (5, 5)) ** 2
    lab = np.dstack([lab, config.texture_weight * np.sqrt(np.maximum(var, 0.0))]).astype(np.float32)
    b = max(1, int(round(config.border * min(h, w))))
    ring = _border_ring(h, w, b)
    samples = np.ascontiguousarray(lab[ring])
    k = int(min(config.border_clusters, len(samples)))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)
    _, _, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    flat = lab.reshape(-1, lab.shape[-1])
    dist = np.full(len(flat), np.inf, np.float32)
    for c in centres:
        np.minimum(dist, np.linalg.norm(flat - c, axis=1), out=dist)
    dist = dist.reshape(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # a smooth (quadratic in x, y) background fitted to the border, for gradients and vignettes
    u, v = xx / w - 0.5, yy / h - 0.5
    basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)
    coef, *_ = np.linalg.lstsq(basis[ring], lab[ring], rcond=None)
    residual = np.linalg.norm(lab - basis @ coef, axis=-1)
    contrast = np.ones((h, w), np.float32)
    for d in (dist, residual):
        scale = float(np.percentile(d[ring], 95)) + 1e-3  # how far the background's own texture reaches
        if d is residual and scale > config.smooth_border:
            continue  # a cluttered border: the smooth model explains nothing
        np.minimum(contrast, 1.0 - np.exp(-((d / scale) ** 2)), out=contrast)
    centre = np.exp(-(((yy - (h - 1) / 2) / (config.centre_sigma * h)) ** 2
                      + ((xx - (w - 1) / 2) / (config.centre_sigma * w)) ** 2) / 2)
    prior = cv2.GaussianBlur((contrast * centre).astype(np.float32), (0, 0), max(1.0, 0.01 * max(h, w)))
    prior[ring] = 0.0
    return np.clip(prior / max(float(prior.max()), 1e-6), 0.0, 1.0)


def _clean(mask: np.ndarray, min_part: float) -> np.ndarray:
    from scipy import ndimage

    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= min_part * sizes.max()) + 1
    return ndimage.binary_fill_holes(np.isin(labels, keep))


def _work_image(image: Image.Image, side: int) -> np.ndarray:
    """uint8 RGB ``[h,w,3]`` of ``image`` with its longer side at most ``side`` (box filter)."""
    rgb = image.convert("RGB")
    s = side / max(rgb.size)
    if s < 1:
        rgb = rgb.resize((max(8, round(rgb.width * s)), max(8, round(rgb.height * s))), Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(rgb))


def _to_full(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean work-size mask -> soft float32 mask at ``size = (W, H)``."""
    cv2 = _import_cv2()
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
    if soft.shape[::-1] != tuple(size):
        soft = cv2.resize(soft, tuple(size), interpolation=cv2.INTER_LINEAR)
    return np.clip(soft, 0.0, 1.0).astype(np.float32)


def _seed(prior: np.ndarray, min_part: float) -> tuple[np.ndarray, float]:
    t = min(max(_otsu(prior[prior > 0]) if (prior > 0).any() else 0.5, 0.05), 0.6)
    return _clean(prior > t, min_part), t


def foreground_prior_mask(image: Image.Image,
                          config: BuiltinSegmentationConfig = BuiltinSegmentationConfig()) -> np.ndarray:
    """Boolean mask ``[H,W]``: the prior's Otsu region alone (GrabCut's seed; an ablation in the benchmark)."""
    prior = foreground_prior(_work_image(image, config.work_side), config)
    return _to_full(_seed(prior, config.min_part)[0], image.size) > 0.5


def builtin_foreground(image: Image.Image,
                       config: BuiltinSegmentationConfig = BuiltinSegmentationConfig()) -> np.ndarray:
    """Mask ``[H,W]`` float32 in [0,1] of the object in an RGB photo (any PIL mode; alpha ignored)."""
    cv2 = _import_cv2()
    rgb = _work_image(image, config.work_side)
    h, w, _ = rgb.shape
    prior = foreground_prior(rgb, config)
    result, t = _seed(prior, config.min_part)
    gc = np.where(prior > t, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[_border_ring(h, w, max(1, int(round(config.border * min(h, w)))))] = cv2.GC_BGD
    if (gc == cv2.GC_PR_FGD).any():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        cv2.grabCut(rgb[..., ::-1].copy(), gc, None, bgd, fgd, config.iterations, cv2.GC_INIT_WITH_MASK)
        cut = _clean((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD), config.min_part)
        if 0 < cut.mean() <= 0.9:
            result = cut
    return _to_full(result, image.size)


__all__ = ["BuiltinSegmentationConfig", "builtin_foreground", "foreground_prior", "foreground_prior_mask"]
