"""Loss weights and the image-space losses of threestudio's ``zero123-system`` (weights: ``stable-zero123.yaml``),
shared by every representation.

Per training step two renders are made: random views (guidance + the representation's regularisers, with
sparsity) and the reference view (RGB + mask + its regularisers); their weighted sums are added. Images are
``[B,H,W,C]``. The reference-view losses (:func:`reference_rgb_loss`, :func:`mask_loss`) and the image-space
regularisers any representation may use (:func:`normal_smooth_2d`, :func:`sparsity_loss`, :func:`opaque_loss`)
live here; a representation's own terms (the NeRF's per-sample ``orient``, ``normal_smooth_3d``) live with it
(:mod:`zero123.representations.nerf`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .schedules import ScheduleSpec, scale_schedule, scheduled_value


@dataclass
class LossWeights:
    """Loss weights (``lambda_*``), numbers or schedules (see :mod:`zero123.guidance.schedules`)."""

    sds: ScheduleSpec = 0.1
    rgb: ScheduleSpec = (100, 500.0, 1000.0, 400)
    mask: ScheduleSpec = 50.0
    normal_smooth: ScheduleSpec = (100, 7.0, 5.0, 150, 10.0, 200)
    normal_smooth_3d: ScheduleSpec = (100, 7.0, 5.0, 150, 10.0, 200)
    orient: ScheduleSpec = 1.0
    sparsity: ScheduleSpec = 0.5
    opaque: ScheduleSpec = 0.5

    def at(self, step: float) -> dict:
        """All weights at a training step, ``{name: float}``."""
        return {k: scheduled_value(v, step) for k, v in asdict(self).items()}

    def scaled(self, factor: float) -> "LossWeights":
        """The same weights with step keypoints multiplied by ``factor``."""
        return LossWeights(**{k: scale_schedule(v, factor) for k, v in asdict(self).items()})

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(self).items()}


def reference_rgb_loss(rgb: torch.Tensor, gt_rgb: torch.Tensor, gt_mask: torch.Tensor,
                       background: torch.Tensor) -> torch.Tensor:
    """MSE between the render and the reference RGB with its background replaced by the render's background.

    rgb, gt_rgb ``[B,H,W,3]`` in [0,1]; gt_mask ``[B,H,W,1]`` bool/float; background ``[B,3]`` or ``[3]``."""
    m = gt_mask.float()
    bg = background.reshape(-1, 1, 1, 3).to(rgb)
    return F.mse_loss(rgb, gt_rgb * m + bg * (1 - m))


def mask_loss(opacity: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """MSE between rendered opacity ``[B,H,W,1]`` and the reference mask."""
    return F.mse_loss(opacity, gt_mask.float())


def normal_smooth_2d(comp_normal: torch.Tensor) -> torch.Tensor:
    """Squared finite differences of the rendered normal map ``[B,H,W,3]`` along both image axes."""
    return ((comp_normal[:, 1:] - comp_normal[:, :-1]).square().mean()
            + (comp_normal[:, :, 1:] - comp_normal[:, :, :-1]).square().mean())


def sparsity_loss(opacity: torch.Tensor) -> torch.Tensor:
    """``mean(sqrt(opacity^2 + 0.01))`` (random views only)."""
    return (opacity ** 2 + 0.01).sqrt().mean()


def opaque_loss(opacity: torch.Tensor) -> torch.Tensor:
    """Binary entropy of the clamped opacity: pushes every pixel to fully empty or fully opaque."""
    x = opacity.clamp(1e-3, 1 - 1e-3)
    return -(x * torch.log(x) + (1 - x) * torch.log(1 - x)).mean()
