"""CLIP image embedding exactly as Zero123's ``FrozenCLIPImageEmbedder`` computes it.

Not transformers' ``CLIPImageProcessor``: the reference resizes the [-1, 1] image to 224x224 with bicubic
interpolation, ``align_corners=True`` and no antialiasing (kornia), maps to [0, 1] and normalises with CLIP's
mean/std. This path is differentiable (SDS back-propagates through nothing here, but training may).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """images ``[B,3,H,W]`` in [-1, 1] -> CLIP input ``[B,3,size,size]`` (normalised)."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_image_embedding(image_encoder, images: torch.Tensor) -> torch.Tensor:
    """Projected CLIP image embedding ``[B,1,D]`` of images ``[B,3,H,W]`` in [-1, 1].

    ``image_encoder`` is a transformers ``CLIPVisionModelWithProjection``.
    """
    size = image_encoder.config.image_size
    pixels = clip_preprocess(images, size).to(image_encoder.dtype)
    return image_encoder(pixel_values=pixels).image_embeds[:, None, :]
