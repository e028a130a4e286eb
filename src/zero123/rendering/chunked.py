"""Renders and their losses in parts (bands of image rows of groups of views), one backward per part.

Every loss of a render (:mod:`zero123.guidance.losses`, the NeRF regularisers of
:mod:`zero123.representations.nerf`) is a mean: over pixels (rgb, mask, opaque, sparsity),
over ray samples (3D normal smoothness), over the rays with opacity > 0 (orient) or over neighbouring-pixel pairs
(2D normal smoothness). A mean over the whole render is the sum over parts of each part's *sum* divided by the
whole render's count, so back-propagating each part's share in turn accumulates the whole render's gradient in
``.grad`` while only one part's autograd graph is alive: the peak memory follows the samples of the largest part,
not of the image (nor the object's size in it).

Exactness (``tests/test_chunked.py`` compares the gradients in float64):

* the random draws (stratified ray offsets, normal-perturbation noise) are made once for the whole images
  (:func:`zero123.rendering.volume.sample_images`); each part renders its rays from those samples, so every
  per-pixel and per-sample value equals the whole render's;
* a band that starts below row 0 also renders the row above it (``render_rows``): the vertical difference across
  the band border is counted in the lower band only, and that row's own per-pixel terms in the band above only;
* the counts that normalise (pixels, samples, neighbour pairs) come from the sampling; the number of rays with
  opacity > 0 (orient) from :func:`opaque_ray_count`, a no-grad density pass over the kept samples that computes
  the opacity with the compositing code of the render itself, or, when the render has image terms (SDS), from
  the opacity of the no-grad render of the whole images those terms need anyway (rendered without the normal
  outputs, which the rgb does not use).

Parts are chosen by sample count (:func:`parts_by_samples`): whole rows are added to a band until it would hold
more than ``max_samples`` samples, so the budget holds whatever the object's silhouette.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..errors import Zero123Error
from .volume import ImageSamples, RenderOutput, _camera_rays, _ray_sum, sample_weights


@dataclass(frozen=True)
class Part:
    """``views`` x ``rows`` of a batch of images. ``render_rows`` = ``rows`` plus the row above when ``rows``
    does not start at row 0 (2D differences across the band border); per-pixel and per-sample terms belong to
    ``rows`` only."""

    views: slice
    rows: slice

    @property
    def render_rows(self) -> slice:
        return slice(max(0, self.rows.start - 1), self.rows.stop)

    @property
    def overlap(self) -> int:
        """Rows rendered above ``rows`` (0 or 1)."""
        return self.rows.start - self.render_rows.start


@dataclass(frozen=True)
class WholeCounts:
    """Counts of the whole render that normalise the losses: ``pixels`` (B*H*W), ``samples`` (kept ray samples),
    ``opaque_rays`` (rays with opacity > 0; None when not computed), the image ``batch``/``height``/``width``."""

    batch: int
    height: int
    width: int
    samples: int
    opaque_rays: Optional[int] = None

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width


def parts_by_samples(samples: ImageSamples, max_samples: Optional[int],
                     max_whole: Optional[int] = None) -> List[Part]:
    """Split the images of ``samples`` into parts holding at most ``max_samples`` kept samples each (None: one
    part); one part when they hold at most ``max_whole`` (default ``max_samples``). A part is one view's band of whole rows, or several whole views when they fit together; a single row
    above the budget is a part of its own (rows are not split)."""
    B, H, W = samples.batch, samples.height, samples.width
    max_whole = max_samples if max_whole is None else max_whole
    if max_samples is None or samples.num_samples <= max_whole:
        return [Part(slice(0, B), slice(0, H))]
    if max_samples < 1:
        raise Zero123Error(f"max_samples must be >= 1, got {max_samples}")
    per_row = torch.bincount(samples.ray_indices // W, minlength=B * H).view(B, H).cpu()
    per_view = per_row.sum(1).tolist()
    per_row = per_row.tolist()
    parts: List[Part] = []
    b = 0
    while b < B:
        if per_view[b] <= max_samples:         # whole views together
            e, total = b, 0
            while e < B and total + per_view[e] <= max_samples:
                total += per_view[e]
                e += 1
            parts.append(Part(slice(b, e), slice(0, H)))
            b = e
            continue
        r = 0                                   # bands of one view; a band also renders the row above it
        while r < H:
            e, total = r, per_row[b][r - 1] if r > 0 else 0
            while e < H and (e == r or total + per_row[b][e] <= max_samples):
                total += per_row[b][e]
                e += 1
            parts.append(Part(slice(b, b + 1), slice(r, e)))
            r = e
        b += 1
    return parts


@torch.no_grad()
def opaque_ray_count(field, cameras, samples: ImageSamples, *, chunk: int = 1 << 19) -> int:
    """Number of rays with opacity > 0 in the render of ``samples`` (no gradient): the density of the kept samples
    (``chunk`` at a time) composited with :func:`~zero123.rendering.volume.sample_weights`, as the render does."""
    if samples.num_samples == 0:
        return 0
    dev = samples.ray_indices.device
    origins, dirs, _, _ = _camera_rays(cameras, samples.height, samples.width, None, dev)
    pts = origins[samples.ray_indices] + dirs[samples.ray_indices] * samples.t_mid[:, None]
    density = torch.cat([field.density(pts[i:i + chunk]).float() for i in range(0, len(pts), chunk)])
    n_rays = origins.shape[0]
    opacity = _ray_sum(sample_weights(density, samples.dt, samples.ray_indices, n_rays), samples.ray_indices,
                       n_rays)
    return int((opacity > 0).sum())


def _own(out: RenderOutput, part: Part, name: str):
    """``out``'s image ``name`` [b,h,w,C] or packed tensor [n,...] without the overlap row."""
    x = getattr(out, name)
    if x is None or part.overlap == 0:
        return x
    if x.ndim == 4 and name in ("rgb", "opacity", "depth", "comp_normal"):
        return x[:, part.overlap:]
    h, w = out.rgb.shape[1], out.rgb.shape[2]
    keep = (out.ray_indices % (h * w)) >= part.overlap * w
    return x[keep]


def part_terms(out: RenderOutput, part: Part, whole: WholeCounts, *, gt_rgb: Optional[torch.Tensor] = None,
               gt_mask: Optional[torch.Tensor] = None, background: Optional[torch.Tensor] = None,
               with_sparsity: bool = False) -> Dict[str, torch.Tensor]:
    """The part's shares of the terms of :func:`zero123.representations.nerf.regularisers` (and, with ``gt_rgb`` /
    ``gt_mask`` of the whole images ``[B,H,W,C]``, of ``reference_rgb_loss`` / ``mask_loss``): summed over all
    parts they are the whole render's terms. ``out``: :func:`render` of ``part.views`` x ``part.render_rows``."""
    P = float(whole.pixels)
    opacity = _own(out, part, "opacity")
    terms: Dict[str, torch.Tensor] = {}
    if gt_rgb is not None:
        m = gt_mask[part.views, part.rows].float()
        bg = background.reshape(-1, 1, 1, 3).to(out.rgb)
        bg = bg[part.views] if bg.shape[0] > 1 else bg
        target = gt_rgb[part.views, part.rows] * m + bg * (1 - m)
        terms["rgb"] = (_own(out, part, "rgb") - target).square().sum() / (P * 3)
    if gt_mask is not None:
        terms["mask"] = (opacity - gt_mask[part.views, part.rows].float()).square().sum() / P
    normal = _own(out, part, "normal")
    if normal is not None:
        weights, t_dirs = _own(out, part, "weights"), _own(out, part, "t_dirs")
        dots = (normal * t_dirs).sum(-1).clamp_min(0.0)
        if whole.opaque_rays is None:
            raise Zero123Error("the orient term of a render in parts needs WholeCounts.opaque_rays")
        terms["orient"] = (weights.detach() * dots ** 2).sum() / max(1, whole.opaque_rays)
    if out.comp_normal is not None:
        cn = out.comp_normal                                # rendered rows: the overlap row's pair is this part's
        vertical = (cn[:, 1:] - cn[:, :-1]).square().sum() / (whole.batch * (whole.height - 1) * whole.width * 3)
        own = cn[:, part.overlap:]
        horizontal = (own[:, :, 1:] - own[:, :, :-1]).square().sum() / (
            whole.batch * whole.height * (whole.width - 1) * 3)
        terms["normal_smooth"] = vertical + horizontal
    perturb = _own(out, part, "normal_perturb")
    if perturb is not None:
        terms["normal_smooth_3d"] = (normal - perturb).abs().sum() / max(1, whole.samples * 3)
    if with_sparsity:
        terms["sparsity"] = (opacity ** 2 + 0.01).sqrt().sum() / P
    x = opacity.clamp(1e-3, 1 - 1e-3)
    terms["opaque"] = -(x * torch.log(x) + (1 - x) * torch.log(1 - x)).sum() / P
    return terms


def backward_in_parts(parts: Iterable[Part], render_part: Callable[[Part], RenderOutput],
                      terms_of: Callable[[RenderOutput, Part], Dict[str, torch.Tensor]],
                      weights: Dict[str, float],
                      extra: Optional[Callable[[RenderOutput, Part], torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """For each part: render it, take its loss shares, back-propagate ``sum(weights[k] * term_k)`` (a weight
    missing from ``weights`` is 0) plus ``extra(out, part)`` (already weighted) and free its graph. Returns the
    detached terms summed over the parts."""
    totals: Dict[str, torch.Tensor] = {}
    for part in parts:
        out = render_part(part)
        terms = terms_of(out, part)
        loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
        if extra is not None:
            loss = loss + extra(out, part)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.backward()
        for k, v in terms.items():
            totals[k] = totals[k] + v.detach() if k in totals else v.detach()
        del out, terms, loss
    return totals


__all__ = ["Part", "WholeCounts", "parts_by_samples", "opaque_ray_count", "part_terms", "backward_in_parts"]


def render_backward(field, cameras, height: int, weights: Dict[str, float], *,
                    whole_terms: Callable[[RenderOutput], Dict[str, torch.Tensor]],
                    image_terms: Optional[Callable[[torch.Tensor], Dict[str, torch.Tensor]]] = None,
                    max_samples: Optional[int] = None, max_whole_samples: Optional[int] = None, gt_rgb=None, gt_mask=None, background=None,
                    with_sparsity: bool = False, occupancy=None, settings=None, generator=None,
                    with_normals: bool = False, normal_perturb_std: float = 0.0, **render_kwargs):
    """Render ``cameras`` at ``height`` px, take its loss terms and back-propagate their weighted sum, in parts of
    at most ``max_samples`` kept samples (None: whole; whole anyway when it holds at most ``max_whole_samples``,
    default ``max_samples``).

    When the whole render fits in one part it is rendered whole and ``whole_terms(out)`` gives its terms (the
    unchunked computation exactly); else every part's :func:`part_terms` are back-propagated in turn (same
    gradient, see the module docstring). ``image_terms(rgb [B,H,W,3])``: terms of the whole image that do not
    split by pixel (SDS guidance); in parts they are taken on a no-grad render of the whole images, their
    gradient w.r.t. the image ``g`` back-propagated, and each part adds ``sum(rgb_part * g_part)`` (the chain
    rule: the same gradient, for one more no-grad render). Their draws (the generator's) come after the render's,
    as in a whole render. ``render_kwargs``: shading, ambient_ratio, stratified. Returns ``(terms, stats)``: the
    detached whole-render terms and ``{"samples", "rays", "parts"}``."""
    from .volume import render, sample_images

    samples = sample_images(field, cameras, height, occupancy=occupancy, settings=settings, generator=generator,
                            normal_perturb_std=normal_perturb_std if with_normals else 0.0,
                            stratified=render_kwargs.get("stratified"))
    parts = parts_by_samples(samples, max_samples, max_whole_samples)
    common = dict(occupancy=occupancy, background=background, settings=settings, with_normals=with_normals,
                  normal_perturb_std=normal_perturb_std, samples=samples, **render_kwargs)
    stats = {"samples": samples.num_samples, "rays": samples.batch * height * height, "parts": len(parts)}
    if len(parts) == 1:
        out = render(field, cameras, height, **common)
        terms = dict(image_terms(out.rgb)) if image_terms is not None else {}
        terms.update(whole_terms(out))
        loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.backward()
        return {k: v.detach() for k, v in terms.items()}, stats
    totals: Dict[str, torch.Tensor] = {}
    extra = None
    opaque = None
    if image_terms is not None:
        # the whole images without gradient; no normals beyond what the shading needs (the rgb is the same), and
        # their opacity gives the count of rays with opacity > 0 that the orient term needs (no density pass)
        with torch.no_grad():
            outs = [render(field, cameras, height, rows=p.rows, views=p.views, **{**common, "with_normals": False})
                    for p in parts]
            rgb = torch.cat([torch.cat([o.rgb for o, p in zip(outs, parts) if (p.views.start, p.views.stop) == v],
                                       dim=1) for v in dict.fromkeys((p.views.start, p.views.stop) for p in parts)])
            if with_normals:
                opaque = int(sum((o.opacity > 0).sum() for o in outs))
            del outs
        image = rgb.detach().requires_grad_(True)
        totals = dict(image_terms(image))
        loss = sum(weights.get(k, 0.0) * v for k, v in totals.items())
        grad = torch.autograd.grad(loss, image, allow_unused=True)[0] if loss.requires_grad else None
        totals = {k: v.detach() for k, v in totals.items()}
        if grad is not None:
            def extra(out, p):
                return (_own(out, p, "rgb") * grad[p.views, p.rows]).sum()
    if with_normals and opaque is None:
        opaque = opaque_ray_count(field, cameras, samples)
    whole = WholeCounts(samples.batch, height, height, samples.num_samples, opaque)
    terms = backward_in_parts(
        parts, lambda p: render(field, cameras, height, rows=p.render_rows, views=p.views, **common),
        lambda out, p: part_terms(out, p, whole, gt_rgb=gt_rgb, gt_mask=gt_mask, background=background,
                                  with_sparsity=with_sparsity), weights, extra)
    return {**totals, **terms}, stats


__all__ += ["render_backward"]
