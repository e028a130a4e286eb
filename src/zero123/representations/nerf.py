"""The NeRF representation: a hash-grid field (:class:`zero123.fields.NeRFField`), an occupancy grid
(:class:`zero123.fields.OccupancyGrid`) and volume rendering (:mod:`zero123.rendering.volume`), with the NeRF's own
regularisers of threestudio's ``zero123-system`` (weights: ``stable-zero123.yaml``).

Regularisers (:meth:`NeRFRepresentation.regularisers`), from one :class:`~zero123.rendering.volume.RenderOutput`:
``orient`` (per-sample normals facing away from the camera, :func:`orient_loss`), ``normal_smooth`` (the 2D
normal map, :func:`zero123.guidance.losses.normal_smooth_2d`), ``normal_smooth_3d`` (normals at samples vs. at
perturbed points, :func:`normal_smooth_3d`), ``sparsity`` (random views only) and ``opaque`` (image-space opacity
terms of :mod:`zero123.guidance.losses`). Config sections: ``field``, ``render``, ``occupancy``, ``optimizer``.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional

import torch
from torch import Tensor

from ..fields import NeRFField, OccupancyGrid
from ..fields.nerf import FieldConfig
from ..guidance.losses import normal_smooth_2d, opaque_loss, sparsity_loss
from ..rendering.volume import RenderOutput, RenderSettings, render, render_chunked
from .base import Representation, reference_terms, register_representation


def orient_loss(weights: Tensor, normal: Tensor, t_dirs: Tensor, opacity: Tensor) -> Tensor:
    """Penalise normals facing away from the camera: ``sum(w.detach() * relu(n . d)^2) / #rays with opacity > 0``
    (per-sample ``weights`` [N], ``normal`` / ``t_dirs`` [N,3]; ``opacity`` [B,H,W,1])."""
    if weights.numel() == 0:
        return normal.sum() * 0.0
    dots = (normal * t_dirs).sum(-1).clamp_min(0.0)
    return (weights.detach() * dots ** 2).sum() / (opacity > 0).sum().clamp_min(1)


def normal_smooth_3d(normal: Tensor, normal_perturb: Tensor) -> Tensor:
    """Mean absolute difference between normals at samples and at slightly perturbed points ([N,3] each)."""
    if normal.numel() == 0:
        return normal.sum() * 0.0
    return (normal - normal_perturb).abs().mean()


def regularisers(out: RenderOutput, *, with_sparsity: bool) -> Dict[str, Tensor]:
    """The NeRF regularisers of one render as ``{name: loss}``; normal terms only when the render carries them."""
    terms = {}
    if out.normal is not None:
        terms["orient"] = orient_loss(out.weights, out.normal, out.t_dirs, out.opacity)
    if out.comp_normal is not None:
        terms["normal_smooth"] = normal_smooth_2d(out.comp_normal)
    if out.normal_perturb is not None:
        terms["normal_smooth_3d"] = normal_smooth_3d(out.normal, out.normal_perturb)
    if with_sparsity:
        terms["sparsity"] = sparsity_loss(out.opacity)
    terms["opaque"] = opaque_loss(out.opacity)
    return terms


@register_representation
class NeRFRepresentation(Representation):
    """Hash-grid NeRF + occupancy grid, rendered by packed-sample volume rendering.

    Args:
        field: :class:`~zero123.fields.nerf.FieldConfig` (the scene is the cube ``[-radius, radius]^3``).
        render: :class:`~zero123.rendering.volume.RenderSettings`.
        occupancy: ``resolution``, ``update_every`` (steps), ``ema_decay``, ``threshold`` (the ``occupancy``
            section, :class:`zero123.pipelines.image_to_3d_config.OccupancyConfig`).
        optimizer: ``lr``, ``betas``, ``eps`` of one Adam over the field (the ``optimizer`` section).
    State (``state_dict``): ``field.*`` and ``occupancy.*``.
    """

    name: ClassVar[str] = "nerf"
    normal_terms = ("orient", "normal_smooth", "normal_smooth_3d")
    perturbed_normal_terms = ("normal_smooth_3d",)

    def __init__(self, field: FieldConfig, render: RenderSettings, occupancy, optimizer):
        super().__init__()
        self.settings, self.optimizer_config = render, optimizer
        self.field = NeRFField(field)
        self.occupancy = OccupancyGrid(field.radius, occupancy.resolution, occupancy.update_every,
                                       occupancy.ema_decay, occupancy.threshold)

    @classmethod
    def from_config(cls, config) -> "NeRFRepresentation":
        return cls(config.field, config.render, config.occupancy, config.optimizer)

    def render(self, cameras, resolution: int, *, background: Tensor, shading: str = "albedo",
               ambient_ratio: float = 1.0, with_normals: bool = False, normal_perturb_std: float = 0.0,
               generator: Optional[torch.Generator] = None) -> RenderOutput:
        return render(self.field, cameras, resolution, occupancy=self.occupancy, background=background,
                      shading=shading, ambient_ratio=ambient_ratio, with_normals=with_normals,
                      normal_perturb_std=normal_perturb_std, settings=self.settings, generator=generator)

    def render_chunked(self, cameras, resolution: int, **kwargs) -> RenderOutput:
        kwargs.setdefault("max_images", 8)
        return render_chunked(self.field, cameras, resolution, occupancy=self.occupancy, settings=self.settings,
                              **kwargs)

    def regularisers(self, out: RenderOutput, *, with_sparsity: bool) -> Dict[str, Tensor]:
        return regularisers(out, with_sparsity=with_sparsity)

    def render_backward(self, cameras, resolution: int, weights: Dict[str, float], *, background: Tensor,
                        with_sparsity: bool, image_terms=None, targets=None, max_samples: Optional[int] = None,
                        max_whole_samples: Optional[int] = None, **render_kwargs):
        """:meth:`Representation.render_backward` in parts of at most ``max_samples`` kept ray samples (bands of
        rows, groups of views: :func:`zero123.rendering.chunked.render_backward`, the same gradient); a render
        that fits is made whole, exactly as before."""
        from ..rendering.chunked import render_backward

        def whole_terms(out):
            terms = reference_terms(out, targets, background) if targets is not None else {}
            return {**terms, **regularisers(out, with_sparsity=with_sparsity)}

        gt_rgb, gt_mask = targets if targets is not None else (None, None)
        return render_backward(self.field, cameras, resolution, weights, whole_terms=whole_terms,
                               image_terms=image_terms, max_samples=max_samples,
                               max_whole_samples=max_whole_samples, gt_rgb=gt_rgb, gt_mask=gt_mask,
                               background=background, with_sparsity=with_sparsity, occupancy=self.occupancy,
                               settings=self.settings, **render_kwargs)

    def make_optimizer(self) -> torch.optim.Optimizer:
        o = self.optimizer_config
        return torch.optim.Adam(self.field.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    def before_step(self, step: int, schedule_step: int, generator: Optional[torch.Generator]) -> None:
        """Every ``occupancy.update_every`` steps: refresh the occupancy grid from the field's density."""
        if step % self.occupancy.update_every == 0:
            self.occupancy.update(self.field.density, self.settings.step_size(self.field.radius),
                                  generator=generator)

    def extract_mesh(self, config):
        from ..export.mesh import extract_mesh

        return extract_mesh(self.field, config)

    def albedo(self, points: Tensor) -> Tensor:
        return self.field.albedo(points.to(self.device))
