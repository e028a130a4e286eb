"""3D Gaussians as an image-to-3D representation (``representation: gaussians``; config section ``gaussians:``),
DreamGaussian's route with nothing compiled: parameters and initialisation (:mod:`.model`), EWA projection
(:mod:`.projection`), the tile/dense rasteriser (:mod:`.rasterize`), densification (:mod:`.densify`) and the mesh
(:mod:`.mesh`).

Renders: per Gaussian the colour (``shading``: ``albedo``; ``diffuse`` / ``textureless`` with the point light of
the cameras, as :func:`zero123.rendering.volume.shade`, the normal being the Gaussian's shortest axis turned toward
the camera), its distance to the camera (``depth``) and, with ``with_normals``, its normal mapped to ``(n + 1) / 2``
are composited in one rasteriser call as extra colour channels (background 0 for the extra channels). So
``depth`` and ``comp_normal`` are opacity-weighted, as the NeRF's; ``comp_normal`` is for previews.

Regularisers: none (DreamGaussian's image-to-3D stage 1 uses only SDS and the reference RGB / mask losses).
Hooks: ``after_backward`` sets the position learning rate of the recipe step and adds the renders' screen-space
gradients to the densification statistics; ``after_step`` densifies/prunes and resets opacities on DreamGaussian's
schedule (:mod:`.densify`), editing the optimiser in place. The texture refinement stage of DreamGaussian
(stage 2: the UV texture optimised through a differentiable mesh rasteriser) is not implemented: the texture is
baked from :meth:`albedo`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Dict, Optional

import torch
from torch import Tensor

from ...rendering.cameras import Cameras
from ...rendering.volume import RenderSettings, shade
from ..base import RenderResult, Representation, register_representation
from .config import GaussianConfig
from .densify import accumulate_gradient_stats, crossed, densify_and_prune, reset_opacity
from .mesh import extract_gaussian_mesh, gaussian_albedo
from .model import GaussianModel
from .projection import project_gaussians
from .rasterize import rasterize_gaussians

_SHADINGS = ("albedo", "diffuse", "textureless")


def position_lr(config: GaussianConfig, iteration: int) -> float:
    """DreamGaussian's ``get_expon_lr_func`` for the centres (``lr_delay_steps`` 0, so the delay multiplier has
    no effect): log-linear from ``position_lr_init`` to ``position_lr_final`` over ``position_lr_max_steps``,
    times ``spatial_lr_scale``."""
    c = config
    t = min(max(iteration / max(1, c.position_lr_max_steps), 0.0), 1.0)
    lr = math.exp(math.log(c.position_lr_init) * (1 - t) + math.log(c.position_lr_final) * t)
    return lr * c.spatial_lr_scale


@register_representation
class GaussianRepresentation(Representation):
    """``N`` 3D Gaussians (SH degree 0) rendered by splatting. State: ``gaussians.*`` (parameters and
    densification statistics, any count) and ``last_iteration`` (the schedule position of the last step)."""

    name: ClassVar[str] = "gaussians"

    def __init__(self, config: Optional[GaussianConfig] = None):
        super().__init__()
        self.config = config or GaussianConfig()
        self.gaussians = GaussianModel(self.config)
        self.register_buffer("last_iteration", torch.zeros((), dtype=torch.long))
        self._renders: list = []            # (means2d, radii, H, W) of renders with gradients since the last step
        self._generator: Optional[torch.Generator] = None

    @classmethod
    def from_config(cls, config) -> "GaussianRepresentation":
        rep = cls(config.gaussians)
        rep.gaussians.init_in_sphere()
        return rep

    # ----- rendering ----------------------------------------------------------------------------------------
    def render(self, cameras: Cameras, resolution: int, *, background: Tensor, shading: str = "albedo",
               ambient_ratio: float = 1.0, with_normals: bool = False, normal_perturb_std: float = 0.0,
               generator: Optional[torch.Generator] = None) -> RenderResult:
        from ...errors import Zero123Error

        if shading not in _SHADINGS:
            raise Zero123Error(f"unknown shading {shading!r}: use one of {', '.join(_SHADINGS)}")
        g, dev, res = self.gaussians, self.device, int(resolution)
        cams = cameras.to(dev)
        B = len(cams)
        # the cameras' own (CPU) matrices: the world-to-camera maths runs there, with no device sync
        proj = project_gaussians(g.means, g.covariances(), cameras.c2w, cameras.fovy, res, res,
                                 near=self.config.near, low_pass=self.config.low_pass)
        if torch.is_grad_enabled() and proj.means2d.requires_grad:
            proj.means2d.retain_grad()
            self._renders.append((proj.means2d, proj.radii, res, res))
        n = len(g)
        centres = cams.c2w[:, None, :3, 3].to(dev)                                    # [B,1,3]
        to_cam = torch.nn.functional.normalize(centres - g.means[None], dim=-1)       # [B,N,3]
        normal = g.shortest_axes()[None].expand(B, n, 3)
        normal = torch.where((normal * to_cam).sum(-1, keepdim=True) < 0, -normal, normal)
        albedo = g.colors[None].expand(B, n, 3)
        if shading == "albedo":
            rgb = albedo
        else:
            light = cams.light_positions[:, None, :].to(dev).expand(B, n, 3)
            rgb = shade(albedo.reshape(-1, 3), normal.reshape(-1, 3), g.means[None].expand(B, n, 3).reshape(-1, 3),
                        light.reshape(-1, 3), shading, ambient_ratio, RenderSettings()).reshape(B, n, 3)
        dist = (centres - g.means[None]).norm(dim=-1, keepdim=True)                   # [B,N,1]
        channels = [rgb, dist] + ([(normal + 1) * 0.5] if with_normals else [])
        colors = torch.cat(channels, -1)
        extra = colors.shape[-1] - 3
        bg = torch.cat([torch.as_tensor(background).to(dev, colors.dtype).reshape(-1, 3).expand(B, 3),
                        colors.new_zeros(B, extra)], -1)
        image, alpha = rasterize_gaussians(proj.means2d, proj.conics, proj.depths, g.opacities[None].expand(B, n),
                                           colors, bg, res, res, proj.radii, backend=self.config.backend)
        return RenderResult(rgb=image[..., :3].clamp(0.0, 1.0), opacity=alpha, depth=image[..., 3:4],
                            comp_normal=image[..., 4:7] if with_normals else None,
                            stats={"gaussians": n})

    @torch.no_grad()
    def render_chunked(self, cameras: Cameras, resolution: int, *, max_images: int = 4, background=None,
                       **kwargs) -> RenderResult:
        """:meth:`render` of ``max_images`` cameras at a time without gradients (``background``: [3], [B,3] or
        None = white)."""
        bg = torch.ones(1, 3) if background is None else torch.as_tensor(background, dtype=torch.float32)
        bg = bg.reshape(-1, 3)
        outs = []
        for i in range(0, len(cameras), max_images):
            sub = cameras[i:i + max_images]
            sub_bg = bg[i:i + len(sub)] if len(bg) == len(cameras) else bg.expand(len(sub), 3)
            outs.append(self.render(sub, resolution, background=sub_bg, **kwargs))
        normals = None if outs[0].comp_normal is None else torch.cat([o.comp_normal for o in outs])
        return RenderResult(rgb=torch.cat([o.rgb for o in outs]), opacity=torch.cat([o.opacity for o in outs]),
                            depth=torch.cat([o.depth for o in outs]), comp_normal=normals)

    def regularisers(self, out: RenderResult, *, with_sparsity: bool) -> Dict[str, Tensor]:
        return {}

    # ----- optimisation -------------------------------------------------------------------------------------
    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam (eps ``adam_eps``) with one group per parameter and DreamGaussian's learning rates."""
        c, g = self.config, self.gaussians
        groups = [("means", position_lr(c, 0)), ("sh0", c.feature_lr), ("opacity_logits", c.opacity_lr),
                  ("log_scales", c.scaling_lr), ("quats", c.rotation_lr)]
        return torch.optim.Adam([{"params": [getattr(g, k)], "lr": lr, "name": k} for k, lr in groups],
                                lr=0.0, eps=c.adam_eps)

    def before_step(self, step: int, schedule_step: int, generator: Optional[torch.Generator]) -> None:
        self._generator = generator
        self._renders = []

    def _window(self, iteration: int) -> bool:
        return self.config.densify_start <= iteration <= self.config.densify_end

    def after_backward(self, step: int, schedule_step: int, optimizer: torch.optim.Optimizer) -> None:
        """The position learning rate of DreamGaussian iteration ``schedule_step + 1``; inside the densification
        window, the screen-space gradients of the step's first ``stats_renders`` renders (the random views) into
        the densification statistics."""
        iteration = int(schedule_step) + 1
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = position_lr(self.config, iteration)
        if self._window(iteration):
            k = self.config.stats_renders
            accumulate_gradient_stats(self.gaussians, self._renders[:k] if k > 0 else self._renders)
        self._renders = []

    def after_step(self, step: int, schedule_step: int, optimizer: torch.optim.Optimizer) -> None:
        """Densify/prune when the iteration crosses a multiple of ``densify_interval`` inside the window, reset
        opacities at multiples of ``opacity_reset_interval`` (DreamGaussian's ``main.py`` order)."""
        c = self.config
        iteration, previous = int(schedule_step) + 1, int(self.last_iteration)
        if self._window(iteration):
            if crossed(c.densify_interval, previous, iteration):
                densify_and_prune(self.gaussians, optimizer, c, self._generator)
            if crossed(c.opacity_reset_interval, previous, iteration):
                reset_opacity(self.gaussians, optimizer)
        self.last_iteration.fill_(iteration)

    # ----- export -------------------------------------------------------------------------------------------
    def extract_mesh(self, config):
        """Marching cubes on the Gaussians' density (:mod:`.mesh`) at ``config.resolution``^3 over their 3-sigma
        box; iso-level ``config.threshold`` when a number, ``gaussians.density_threshold`` for "auto"."""
        c = self.config
        level = c.density_threshold if isinstance(config.threshold, str) else float(config.threshold)
        return extract_gaussian_mesh(self.gaussians, config.resolution, level, cutoff=c.mesh_opacity_cutoff,
                                     block=c.mesh_block, min_component_fraction=config.min_component_fraction)

    def albedo(self, points: Tensor) -> Tensor:
        c = self.config
        return gaussian_albedo(self.gaussians, points.to(self.device), cutoff=c.mesh_opacity_cutoff,
                               neighbours=c.albedo_neighbours)
