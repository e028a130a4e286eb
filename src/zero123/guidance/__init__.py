"""Guidance for image-to-3D: the :class:`Guidance` interface and its registry (:mod:`.base`), score distillation
(SDS) from a Zero123-family model (:mod:`.sds`, ``zero123-sds``), the loss weights and image-space losses
(:mod:`.losses`) and step schedules (:mod:`.schedules`). A representation's own regularisers live with it
(:mod:`zero123.representations`).

``from zero123.guidance import SDSGuidance, SDSConfig, LossWeights, scheduled_value, build_guidance``.
"""

from .base import GUIDANCES, Guidance, GuidanceOutput, build_guidance, register_guidance
from .losses import LossWeights, mask_loss, normal_smooth_2d, opaque_loss, reference_rgb_loss, sparsity_loss
from .schedules import scale_schedule, scheduled_value
from .sds import SDSConfig, SDSGuidance, SDSOutput

__all__ = ["Guidance", "GuidanceOutput", "GUIDANCES", "build_guidance", "register_guidance",
           "SDSGuidance", "SDSConfig", "SDSOutput", "LossWeights", "scheduled_value", "scale_schedule",
           "reference_rgb_loss", "mask_loss", "normal_smooth_2d", "sparsity_loss", "opaque_loss"]
