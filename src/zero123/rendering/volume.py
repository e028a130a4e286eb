"""Differentiable volume rendering of a :class:`zero123.fields.NeRFField` (pure PyTorch, packed samples).

Per ray (threestudio's ``nerf-volume-renderer`` with nerfacc's occupancy-grid sampling):

1. **Sampling, no gradient.** Uniform steps of ``step_size = 1.732 * 2 * radius / num_samples_per_ray`` (world
   units) inside the bounding box of the occupied cells, one random offset per ray (stratified); samples in empty
   cells are dropped. The density of the survivors is evaluated without autograd and samples with
   ``alpha < alpha_threshold`` (0.01) or transmittance ``< early_stop_eps`` (1e-4, behind opaque surfaces) are
   pruned, exactly nerfacc's ``OccGridEstimator.sampling(sigma_fn=...)``.
2. **Rendering, with gradient** on the kept samples only: ``alpha_i = 1 - exp(-sigma_i dt)``,
   ``T_i = exp(-sum_{j<i} sigma_j dt)``, ``w_i = T_i alpha_i``; ``opacity = sum w``, ``depth = sum w t`` (distance
   along the unit ray direction, not divided by opacity), ``rgb = sum w c + (1 - opacity) * background``,
   ``comp_normal = (normalize(sum w n) + 1) / 2 * opacity`` (threestudio's visualisation form, in [0,1]).

Samples are "packed": a flat list sorted by ray, with ``ray_indices``; per-ray sums use ``index_add`` and the
exclusive transmittance sums use a float64 cumulative sum, so memory follows the number of surviving samples, not
rays x max samples. Shading (``shading``): ``"albedo"``; ``"diffuse"`` = ``clamp(albedo) * (ambient + diffuse *
max(0, n.l))`` with a point light; ``"textureless"`` = ``ambient + diffuse * max(0, n.l)``. With ``ambient_ratio``
given, ambient = ratio and diffuse = 1 - ratio, else 0.1 / 0.9 (threestudio's material).
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import Zero123Error
from .cameras import Cameras, ray_bundle

SHADINGS = ("albedo", "diffuse", "textureless")


@dataclass
class RenderSettings:
    """Sampling settings (defaults: the recipe's 512 samples per ray, nerfacc pruning thresholds)."""

    num_samples_per_ray: int = 512
    alpha_threshold: float = 0.01
    early_stop_eps: float = 1e-4
    stratified: bool = True
    max_candidates: int = 1 << 23       # ray-samples generated at once in the sampling pass
    segment: int = 32                   # steps marched between early-termination checks
    eval_chunk: int = 1 << 19           # points per no-grad density evaluation
    ambient_light: float = 0.1
    diffuse_light: float = 0.9

    def step_size(self, radius: float) -> float:
        return 1.732 * 2 * radius / self.num_samples_per_ray


@dataclass
class RenderOutput:
    """Images ``[B,H,W,C]`` and the packed per-sample tensors (``N`` kept samples).

    ``rgb`` [B,H,W,3] in [0,1] composited on the background; ``opacity`` [B,H,W,1]; ``depth`` [B,H,W,1];
    ``comp_normal`` [B,H,W,3] in [0,1] or None; ``weights`` [N]; ``ray_indices`` [N] (flat ``b*H*W + i*W + j``);
    ``t_dirs`` [N,3] unit ray directions; ``normal`` / ``normal_perturb`` [N,3] or None; ``points`` [N,3].
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    comp_normal: Optional[torch.Tensor]
    weights: torch.Tensor
    ray_indices: torch.Tensor
    t_dirs: torch.Tensor
    points: torch.Tensor
    normal: Optional[torch.Tensor] = None
    normal_perturb: Optional[torch.Tensor] = None
    stats: dict = dc_field(default_factory=dict)


def ray_aabb(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Slab test: (near [R], far [R]) distances along unit ``dirs``; ``far <= near`` where the ray misses."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def exclusive_sum_per_ray(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Exclusive prefix sums of ``values`` [N] within each ray's contiguous segment (``ray_indices`` sorted).

    Computed as one float64 cumulative sum minus each segment's starting offset (differentiable)."""
    if values.numel() == 0:
        return values
    v = values.double()
    excl = torch.cumsum(v, 0) - v
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return (excl - excl[starts[ray_indices]]).to(values.dtype)


def _ray_sum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    shape = (n_rays,) + tuple(values.shape[1:])
    return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add(0, ray_indices, values)


@torch.no_grad()
def sample_along_rays(field, origins: torch.Tensor, dirs: torch.Tensor, *, occupancy=None,
                      settings: RenderSettings | None = None, generator: torch.Generator | None = None,
                      stratified: bool | None = None):
    """Occupancy-grid marching + density pruning (no gradient).

    Rays are marched in segments of ``segment`` steps; after each segment the accumulated optical depth of every
    ray is updated and rays whose transmittance fell below ``early_stop_eps`` stop, so samples behind opaque
    surfaces are never evaluated. The kept set is the same as evaluating every sample and pruning afterwards
    (transmittance only decreases along a ray).

    Args:
        origins, dirs: ``[R,3]`` rays (unit directions). occupancy: an :class:`OccupancyGrid` or None (whole cube).
    Returns:
        ``(ray_indices [N] long, t_mid [N], dt [N])``, sorted by ray then distance.
    """
    s = settings or RenderSettings()
    stratified = s.stratified if stratified is None else stratified
    dev = origins.device
    step = s.step_size(field.radius)
    r = field.radius
    empty = (torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, device=dev), torch.zeros(0, device=dev))
    # one random offset per ray, drawn for every ray so the random stream does not depend on the occupancy
    offs = torch.rand(origins.shape[0], device=dev, generator=generator) if stratified \
        else torch.full((origins.shape[0],), 0.5, device=dev)
    if occupancy is not None:
        bounds = occupancy.occupied_bounds()
        if bounds is None:
            return empty
        lo, hi = (b.to(dev) for b in bounds)
    else:
        lo = torch.full((3,), -r, device=dev)
        hi = torch.full((3,), r, device=dev)
    near, far = ray_aabb(origins, dirs, lo, hi)
    n_steps = torch.ceil((far - near) / step).clamp_min(0).long()
    rays = torch.nonzero(n_steps > 0).squeeze(1)                     # active rays
    if rays.numel() == 0:
        return empty
    prune = s.alpha_threshold > 0 or s.early_stop_eps > 0
    S = int(n_steps[rays].max())
    seg = max(1, min(S, s.max_candidates // max(1, rays.numel()))) if not prune else \
        max(1, min(S, s.segment, s.max_candidates // max(1, rays.numel())))
    tau = torch.zeros(origins.shape[0], device=dev)                   # optical depth so far, per ray
    out_r, out_k, out_t = [], [], []
    for k0 in range(0, S, seg):
        if rays.numel() == 0:
            break
        k = torch.arange(k0, min(S, k0 + seg), device=dev, dtype=torch.float32)
        t_mid = near[rays, None] + (k[None] + offs[rays, None]) * step             # [Ra,K]
        valid = (t_mid < far[rays, None])
        pts = origins[rays, None, :] + dirs[rays, None, :] * t_mid[..., None]
        if occupancy is not None:
            valid &= occupancy.query(pts.reshape(-1, 3)).view(valid.shape)
        ri, ki = torch.nonzero(valid, as_tuple=True)
        if prune and ri.numel():
            sigma = torch.cat([field.density(pts[ri[i:i + s.eval_chunk], ki[i:i + s.eval_chunk]]).float()
                               for i in range(0, ri.numel(), s.eval_chunk)])
            sdt = torch.zeros_like(t_mid)
            sdt[ri, ki] = sigma * step
            excl = torch.cumsum(sdt, 1) - sdt + tau[rays, None]
            keep = valid & (1 - torch.exp(-sdt) >= s.alpha_threshold) & (torch.exp(-excl) >= s.early_stop_eps)
            tau[rays] = tau[rays] + sdt.sum(1)
            ri, ki = torch.nonzero(keep, as_tuple=True)
        out_r.append(rays[ri])
        out_k.append(ki + k0)
        out_t.append(t_mid[ri, ki])
        # rays that ended (past far, or opaque) leave the active set
        alive = (k0 + seg) < n_steps[rays]
        if prune:
            alive &= torch.exp(-tau[rays]) >= s.early_stop_eps
        rays = rays[alive]
    ray_idx, kk, t_mid = torch.cat(out_r), torch.cat(out_k), torch.cat(out_t)
    if ray_idx.numel() == 0:
        return empty
    order = torch.argsort(ray_idx * (S + 1) + kk)
    ray_idx, t_mid = ray_idx[order], t_mid[order]
    return ray_idx, t_mid, torch.full_like(t_mid, step)


def shade(albedo, normal, points, light_positions, shading: str, ambient_ratio: float | None,
          settings: RenderSettings) -> torch.Tensor:
    """Per-sample colour [N,3] for a shading mode (see module docstring)."""
    if shading == "albedo":
        return albedo
    if ambient_ratio is not None:
        ambient, diffuse = float(ambient_ratio), 1.0 - float(ambient_ratio)
    else:
        ambient, diffuse = settings.ambient_light, settings.diffuse_light
    if diffuse == 0.0 and shading == "diffuse":     # ambient only (the reference view): no light term to compute
        return albedo.clamp(0.0, 1.0) * ambient
    light_dir = F.normalize(light_positions - points, dim=-1)
    lam = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    textureless = lam * diffuse + ambient
    if shading == "textureless":
        return textureless.expand(-1, 3)
    return albedo.clamp(0.0, 1.0) * textureless


def render_rays(field, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor, *, occupancy=None,
                shading: str = "albedo", ambient_ratio: float | None = None, light_positions=None,
                with_normals: bool = False, normal_perturb_std: float = 0.0, settings: RenderSettings | None = None,
                generator: torch.Generator | None = None, stratified: bool | None = None) -> dict:
    """Volume-render ``R`` rays: origins/dirs ``[R,3]`` (unit dirs), background ``[R,3]``, light positions
    ``[R,3]`` (for diffuse/textureless shading). Returns per-ray ``rgb`` [R,3], ``opacity`` [R], ``depth`` [R],
    ``normal_map`` [R,3] (normalised weighted normal, or None) and the packed per-sample tensors.

    The two halves: :func:`sample_along_rays` (no gradient, then the perturbation noise) and
    :func:`composite_samples` (with gradient)."""
    if shading not in SHADINGS:
        raise Zero123Error(f"unknown shading {shading!r}: use one of {', '.join(SHADINGS)}")
    ray_idx, t_mid, dt = sample_along_rays(field, origins, dirs, occupancy=occupancy, settings=settings,
                                           generator=generator, stratified=stratified)
    noise = _perturb_noise(ray_idx.numel(), normal_perturb_std if with_normals else 0.0, origins.device, generator)
    return composite_samples(field, origins, dirs, background, ray_idx, t_mid, dt, shading=shading,
                             ambient_ratio=ambient_ratio, light_positions=light_positions,
                             with_normals=with_normals, perturb_noise=noise, settings=settings)


def _perturb_noise(n: int, std: float, device, generator) -> Optional[torch.Tensor]:
    """``N(0, std^2)`` offsets ``[n,3]`` of the 3D normal-smoothness points (None when ``std`` is 0)."""
    if std <= 0:
        return None
    return torch.randn((n, 3), device=device, generator=generator) * std


def sample_weights(density: torch.Tensor, dt: torch.Tensor, ray_idx: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Compositing weights ``w_i = T_i alpha_i`` [N] of packed samples (module docstring)."""
    sdt = density * dt
    alpha = 1 - torch.exp(-sdt)
    trans = torch.exp(-exclusive_sum_per_ray(sdt, ray_idx, n_rays))
    return trans * alpha


def composite_samples(field, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                      ray_idx: torch.Tensor, t_mid: torch.Tensor, dt: torch.Tensor, *, shading: str = "albedo",
                      ambient_ratio: float | None = None, light_positions=None, with_normals: bool = False,
                      perturb_noise: Optional[torch.Tensor] = None, settings: RenderSettings | None = None) -> dict:
    """The differentiable half of :func:`render_rays` on given packed samples (``ray_idx`` [N] into the ``R``
    rays, sorted; ``t_mid``/``dt`` [N]); ``perturb_noise`` [N,3] offsets of the 3D normal-smoothness points."""
    s = settings or RenderSettings()
    n_rays = origins.shape[0]
    need_normal = with_normals or shading != "albedo"
    t_dirs = dirs[ray_idx]
    points = origins[ray_idx] + t_dirs * t_mid[:, None]
    out = field(points, with_albedo=shading != "textureless", with_normal=need_normal)
    weights = sample_weights(out.density, dt, ray_idx, n_rays)
    if shading == "albedo":
        color = out.albedo
    else:
        if light_positions is None:
            raise Zero123Error(f"shading {shading!r} needs light positions")
        color = shade(out.albedo, out.normal, points, light_positions[ray_idx], shading, ambient_ratio, s)
    opacity = _ray_sum(weights, ray_idx, n_rays)
    depth = _ray_sum(weights * t_mid, ray_idx, n_rays)
    rgb = _ray_sum(weights[:, None] * color, ray_idx, n_rays) + background * (1 - opacity[:, None])
    normal_map = normal_perturb = None
    if with_normals:
        normal_map = F.normalize(_ray_sum(weights[:, None] * out.normal, ray_idx, n_rays), dim=-1)
        if perturb_noise is not None:
            normal_perturb = field.normal(points + perturb_noise)
    return {"rgb": rgb, "opacity": opacity, "depth": depth, "normal_map": normal_map, "weights": weights,
            "ray_indices": ray_idx, "t_dirs": t_dirs, "points": points,
            "normal": out.normal if need_normal else None, "normal_perturb": normal_perturb}


@dataclass
class ImageSamples:
    """The no-grad first half of :func:`render` for whole images, shared by renders of parts of them.

    ``ray_indices`` [N] long (flat ``b*H*W + i*W + j``, sorted by ray then distance), ``t_mid``/``dt`` [N] (world
    units along unit ray directions), ``perturb_noise`` [N,3] or None; ``batch``, ``height``, ``width``: the
    images sampled. Drawn in the order a whole :func:`render` draws (ray offsets, then the perturbation noise),
    so rendering every part of the images from one ``ImageSamples`` gives the whole render's values."""

    ray_indices: torch.Tensor
    t_mid: torch.Tensor
    dt: torch.Tensor
    perturb_noise: Optional[torch.Tensor]
    batch: int
    height: int
    width: int

    @property
    def num_samples(self) -> int:
        return int(self.ray_indices.numel())

    def select(self, views: slice, rows: slice):
        """Samples of ``views`` x ``rows`` (``step`` 1): ``(index [n] into the N samples, ray indices [n] renumbered
        ``b'*H'*W + i'*W + j`` within the part)``, in the same order."""
        hw = self.height * self.width
        b, rem = self.ray_indices // hw, self.ray_indices % hw
        i = rem // self.width
        keep = (b >= views.start) & (b < views.stop) & (i >= rows.start) & (i < rows.stop)
        idx = torch.nonzero(keep).squeeze(1)
        n_rows = rows.stop - rows.start
        local = (b[idx] - views.start) * (n_rows * self.width) + (rem[idx] - rows.start * self.width)
        return idx, local


def _full(part: slice | None, n: int) -> slice:
    part = slice(0, n) if part is None else part
    start, stop, step = part.indices(n)
    if step != 1 or stop <= start:
        raise Zero123Error(f"a render part must be a non-empty slice of step 1 within 0..{n}, got {part}")
    return slice(start, stop)


def _camera_rays(cameras: Cameras, height: int, width: int, background, dev):
    """Flat rays, backgrounds and light positions ``[B*H*W,3]`` of ``cameras`` (see :func:`render`)."""
    cams = cameras.to(dev)
    B = len(cams)
    origins, dirs = ray_bundle(cams.c2w, cams.fovy, height, width)
    pix = height * width
    if background is None:
        bg = torch.ones(B, 3, device=dev)
    else:
        bg = torch.as_tensor(background, dtype=torch.float32, device=dev).reshape(-1, 3).expand(B, 3)
    bg_rays = bg[:, None, :].expand(B, pix, 3).reshape(-1, 3)
    light = cams.light_positions[:, None, :].expand(B, pix, 3).reshape(-1, 3)
    return origins.reshape(-1, 3), dirs.reshape(-1, 3), bg_rays, light


def sample_images(field, cameras: Cameras, height: int, width: int | None = None, *, occupancy=None,
                  normal_perturb_std: float = 0.0, settings: RenderSettings | None = None,
                  generator: torch.Generator | None = None, stratified: bool | None = None) -> ImageSamples:
    """The samples (no gradient) of a :func:`render` of the same arguments, for rendering it in parts."""
    width = height if width is None else width
    dev = next(field.parameters()).device
    origins, dirs, _, _ = _camera_rays(cameras, height, width, None, dev)
    ray_idx, t_mid, dt = sample_along_rays(field, origins, dirs, occupancy=occupancy, settings=settings,
                                           generator=generator, stratified=stratified)
    noise = _perturb_noise(ray_idx.numel(), normal_perturb_std, dev, generator)
    return ImageSamples(ray_idx, t_mid, dt, noise, len(cameras), height, width)


def render(field, cameras: Cameras, height: int, width: int | None = None, *, occupancy=None,
           background=None, shading: str = "albedo", ambient_ratio: float | None = None,
           with_normals: bool = False, normal_perturb_std: float = 0.0, settings: RenderSettings | None = None,
           generator: torch.Generator | None = None, stratified: bool | None = None,
           rows: slice | None = None, views: slice | None = None,
           samples: ImageSamples | None = None) -> RenderOutput:
    """Render ``cameras`` (see :class:`Cameras`) at ``height x width`` pixels.

    Args:
        background: RGB ``[3]`` or per-image ``[B,3]`` in [0,1]; None = white.
        shading: "albedo", "diffuse" or "textureless" (the latter two need normals; computed automatically).
        with_normals: also return per-sample normals and ``comp_normal``.
        normal_perturb_std: > 0 also returns ``normal_perturb``, normals at the sample points plus
            N(0, std^2) noise (threestudio's 3D normal-smoothness input; std 0.01 there).
        generator: device generator for the stratified offsets and the perturbation noise.
        rows, views: render only these image rows of these cameras (slices of step 1): images
            ``[len(views), len(rows), W, C]``, per-sample tensors of those pixels only, ``ray_indices``
            renumbered within the part; every value equals the whole render's at those pixels when ``samples``
            is that render's :func:`sample_images` (the random draws are made once, for whole images).
        samples: the sampling of the whole images (:func:`sample_images` with the same arguments); None = sample
            now (then ``generator``, ``stratified``, ``normal_perturb_std`` are used here).
    Gradients flow to the field's parameters through rgb/opacity/depth/normals.
    """
    if shading not in SHADINGS:
        raise Zero123Error(f"unknown shading {shading!r}: use one of {', '.join(SHADINGS)}")
    width = height if width is None else width
    dev = next(field.parameters()).device
    B = len(cameras)
    origins, dirs, bg_rays, light = _camera_rays(cameras, height, width, background, dev)
    if rows is None and views is None and samples is None:
        r = render_rays(field, origins, dirs, bg_rays, occupancy=occupancy, shading=shading,
                        ambient_ratio=ambient_ratio, light_positions=light, with_normals=with_normals,
                        normal_perturb_std=normal_perturb_std, settings=settings, generator=generator,
                        stratified=stratified)
        n_rays = origins.shape[0]
    else:
        if samples is None:
            samples = sample_images(field, cameras, height, width, occupancy=occupancy,
                                    normal_perturb_std=normal_perturb_std if with_normals else 0.0,
                                    settings=settings, generator=generator, stratified=stratified)
        elif (samples.batch, samples.height, samples.width) != (B, height, width):
            raise Zero123Error(f"samples are of {samples.batch} images of {samples.height}x{samples.width}, "
                               f"not {B} of {height}x{width}")
        views, rows = _full(views, B), _full(rows, height)
        idx, local = samples.select(views, rows)
        pix = torch.arange(height * width, device=dev).view(height, width)[rows].reshape(-1)
        rays = (torch.arange(views.start, views.stop, device=dev)[:, None] * (height * width) + pix).reshape(-1)
        noise = None if samples.perturb_noise is None or not with_normals else samples.perturb_noise[idx]
        r = composite_samples(field, origins[rays], dirs[rays], bg_rays[rays], local, samples.t_mid[idx],
                              samples.dt[idx], shading=shading, ambient_ratio=ambient_ratio,
                              light_positions=light[rays], with_normals=with_normals, perturb_noise=noise,
                              settings=settings)
        B, height = views.stop - views.start, rows.stop - rows.start
        n_rays = rays.numel()
    comp_normal = None
    if r["normal_map"] is not None:
        comp_normal = ((r["normal_map"] + 1) / 2 * r["opacity"][:, None]).view(B, height, width, 3)
    return RenderOutput(
        rgb=r["rgb"].view(B, height, width, 3), opacity=r["opacity"].view(B, height, width, 1),
        depth=r["depth"].view(B, height, width, 1), comp_normal=comp_normal, weights=r["weights"],
        ray_indices=r["ray_indices"], t_dirs=r["t_dirs"], points=r["points"], normal=r["normal"],
        normal_perturb=r["normal_perturb"],
        stats={"samples": int(r["ray_indices"].numel()), "rays": n_rays},
    )


@torch.no_grad()
def render_chunked(field, cameras: Cameras, height: int, width: int | None = None, *, max_images: int = 4,
                   **kwargs) -> RenderOutput:
    """No-grad rendering of many cameras, ``max_images`` at a time (videos, previews). Images only."""
    outs = []
    for i in range(0, len(cameras), max_images):
        o = render(field, cameras[i:i + max_images], height, width, stratified=False, **kwargs)
        outs.append(o)
    cat = lambda name: None if getattr(outs[0], name) is None else torch.cat([getattr(o, name) for o in outs])
    e = torch.zeros(0)
    return RenderOutput(rgb=cat("rgb"), opacity=cat("opacity"), depth=cat("depth"), comp_normal=cat("comp_normal"),
                        weights=e, ray_indices=e.long(), t_dirs=e, points=e)

