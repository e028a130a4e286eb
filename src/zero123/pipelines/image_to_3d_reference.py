"""The reference view of image-to-3D: the input photo prepared as the reference-view targets and the model's
input view (threestudio's ``stable-zero123`` input preparation; see :func:`prepare_reference`).

Its camera is not here: it is the ``reference`` section of
:class:`zero123.pipelines.image_to_3d_config.ImageTo3DConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Zero123Error


@dataclass
class ReferenceImage:
    """The prepared input: ``rgb`` ``[1,S,S,3]`` in [0,1] (colours of the recentred RGBA, not composited),
    ``mask`` ``[1,S,S,1]`` bool (alpha > 0.5), ``condition`` ``[1,3,s,s]`` in [-1,1] on white at model size."""

    rgb: torch.Tensor
    mask: torch.Tensor
    condition: torch.Tensor
    rgba_image: object  # PIL image
    mask_image: object = None  # PIL "L" image: the foreground mask of the (downscaled) photo


def condition_image(rgba: np.ndarray, size: int) -> torch.Tensor:
    """threestudio's input view (``stable_zero123_guidance.py`` ``prepare_embeddings``): RGBA uint8 ``[H,W,4]``
    -> ``cv2.resize(..., (size, size), INTER_AREA)`` -> ``/255`` in float32 -> composited on white in float,
    ``rgb * a + (1 - a)`` -> ``[1,3,size,size]`` in [-1,1]. (Compositing in uint8 first, as PIL does, changes the
    threestudio fixture's concat latent by 2.8e-3 relative: ``bench/input_view_prep.py``.)"""
    import cv2

    x = cv2.resize(np.ascontiguousarray(rgba), (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    rgb = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    return (rgb * 2 - 1).permute(2, 0, 1)[None].contiguous()


def prepare_reference(image, size: int, model_size: int, recentre: bool = True, *, matting_model=None, mask=None,
                      segmentation: str = "auto") -> ReferenceImage:
    """Build the reference-view targets (``size`` px) and the model's input view (``model_size`` px, by
    :func:`condition_image`). ``image``: path, PIL image or array; ``segmentation``, ``mask``, ``matting_model``:
    how the foreground is found (``prepare_input_image``; with ``recentre=True``).

    ``recentre=True``: segment/recentre with :mod:`zero123.preprocessing` first (object at 0.8 of the frame, the
    framing threestudio's own ``preprocess_image.py`` produces), so raw photos work; an RGBA file already framed
    that way at ``size`` px comes out unchanged, so the input view is then threestudio's exactly.
    ``recentre=False``: threestudio's input, an RGBA image used as framed, resized with INTER_AREA."""
    import cv2
    from PIL import Image

    from ..preprocessing import _as_pil, has_alpha, prepare_input_image

    if recentre:
        prep = prepare_input_image(image, size=size, matting_model=matting_model, mask=mask, method=segmentation)
        rgba_image = prep.rgba.convert("RGBA")
        full = np.asarray(rgba_image)
        mask_image = prep.mask_image()
    else:
        pil = _as_pil(image)
        if not has_alpha(pil):
            raise Zero123Error("an input that is not recentred must be an RGBA image with its background removed")
        full = np.asarray(pil.convert("RGBA"))
        rgba_image = Image.fromarray(cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA), "RGBA")
        mask_image = Image.fromarray(full[..., 3], "L")
    rgba = np.asarray(rgba_image, dtype=np.float32) / 255.0
    rgb = torch.from_numpy(rgba[..., :3].copy())[None]
    mask = torch.from_numpy(rgba[..., 3:] > 0.5)[None]
    return ReferenceImage(rgb=rgb, mask=mask, condition=condition_image(full, model_size), rgba_image=rgba_image,
                          mask_image=mask_image)


def resize_reference(ref: ReferenceImage, res: int, device):
    """The reference targets at ``res`` px on ``device``: ``rgb`` [1,res,res,3] (area-resized) and ``mask``
    [1,res,res,1] bool (area-resized, > 0.5)."""
    rgb = ref.rgb.permute(0, 3, 1, 2)
    mask = ref.mask.permute(0, 3, 1, 2).float()
    if rgb.shape[-1] != res:
        rgb = F.interpolate(rgb, (res, res), mode="area")
        mask = F.interpolate(mask, (res, res), mode="area")
    return rgb.permute(0, 2, 3, 1).to(device), (mask.permute(0, 2, 3, 1) > 0.5).to(device)


__all__ = ["ReferenceImage", "condition_image", "prepare_reference", "resize_reference"]
