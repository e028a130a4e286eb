"""Guidance for image-to-3D: score distillation (SDS) from a Zero123-family model, reference-view losses,
regularisers and step schedules.

``from zero123.guidance import SDSGuidance, SDSConfig, LossWeights, scheduled_value``.
"""

from .losses import (LossWeights, mask_loss, normal_smooth_2d, normal_smooth_3d, opaque_loss, orient_loss,
                     reference_rgb_loss, regularisers, sparsity_loss)
from .schedules import scale_schedule, scheduled_value
from .sds import SDSConfig, SDSGuidance, SDSOutput

__all__ = ["SDSGuidance", "SDSConfig", "SDSOutput", "LossWeights", "scheduled_value", "scale_schedule",
           "reference_rgb_loss", "mask_loss", "orient_loss", "normal_smooth_2d", "normal_smooth_3d",
           "sparsity_loss", "opaque_loss", "regularisers"]
