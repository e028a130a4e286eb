"""Adaptive density control of 3D Gaussians on DreamGaussian's schedule (``main.py`` + ``gs_renderer.py``).

* **Statistics** (every training step inside ``[densify_start, densify_end]``): for each random-view render
  (``stats_renders``; DreamGaussian's ``viewspace_points`` are those of the guided view), each visible Gaussian (radius > 0) adds the norm of the loss gradient with respect to its projected
  centre to ``grad_accum`` and 1 to ``grad_count``. The gradient is taken in NDC units (pixels x ``W/2``,
  ``H/2``), the units of diff-gaussian-rasterization's ``viewspace_points``, so DreamGaussian's thresholds apply.
* **Densify and prune** (every ``densify_interval`` steps in that window): with ``g = grad_accum / grad_count``,
  Gaussians with ``g >= densify_grad_threshold`` are *cloned* (copied) when their largest scale is
  ``<= percent_dense * extent`` and *split* otherwise (two children drawn from the parent's Gaussian, scales
  divided by 1.6, the parent removed); then Gaussians with opacity ``< min_opacity`` or largest scale
  ``> 0.1 * extent`` are removed, and the statistics restart from zero. (DreamGaussian also passes
  ``max_screen_size=1``, but its screen-size test reads ``max_radii2D`` just after densification set it to zeros,
  so it never prunes anything; it is left out here.)
* **Opacity reset** every ``opacity_reset_interval`` steps: opacities above 0.01 are set to 0.01.

The optimiser (Adam) is edited in place: each resized parameter is a new ``nn.Parameter`` in the old one's place in
its param group (and on the model), its ``exp_avg``/``exp_avg_sq`` rows follow the kept Gaussians, and new
Gaussians start with zero moments (``GaussianModel.set_tensors``).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from .config import GaussianConfig
from .model import PARAM_NAMES, STAT_NAMES, GaussianModel, inverse_sigmoid, quaternion_to_matrix


@torch.no_grad()
def accumulate_gradient_stats(model: GaussianModel, renders: Iterable[tuple]) -> None:
    """Add each render's screen-space gradient norms to the model's statistics. ``renders``: tuples
    ``(means2d [B,N,2] with .grad, radii [B,N], height, width)`` of renders back-propagated since the last call;
    a render whose ``means2d`` got no gradient is skipped."""
    for means2d, radii, height, width in renders:
        if means2d.grad is None or means2d.shape[1] != len(model):
            continue
        scale = torch.tensor([width / 2.0, height / 2.0], device=means2d.device)
        norms = (means2d.grad * scale).norm(dim=-1)                      # [B,N]
        visible = radii > 0
        model.grad_accum += torch.where(visible, norms, torch.zeros_like(norms)).sum(0)
        model.grad_count += visible.sum(0).to(model.grad_count.dtype)


@torch.no_grad()
def rebuild(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], keep: torch.Tensor,
            extra: Optional[dict] = None) -> None:
    """Keep the Gaussians ``keep`` (bool mask [N] or index tensor), then append ``extra`` (``{param name:
    [M,...]}`` for every parameter, M new Gaussians). Optimiser moments follow (kept rows) or start at zero (new
    rows); statistics of kept Gaussians are kept, new ones start at zero."""
    tensors, moments = {}, {}
    m = 0 if not extra else extra["means"].shape[0]
    for name in PARAM_NAMES + STAT_NAMES:
        old = getattr(model, name).data
        kept = old[keep]
        add = extra[name].to(old) if (extra and name in extra) else old.new_zeros((m, *old.shape[1:]))
        tensors[name] = torch.cat([kept, add], 0)
    if optimizer is not None:
        for name in PARAM_NAMES:
            p = getattr(model, name)
            state = optimizer.state.get(p) or {}
            moments[name] = {key: torch.cat([v[keep], v.new_zeros((m, *v.shape[1:]))], 0)
                             for key, v in state.items()
                             if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == p.shape[0]}
    model.set_tensors(tensors, optimizer, moments)


def split_children(model: GaussianModel, mask: torch.Tensor, generator: Optional[torch.Generator] = None,
                   n: int = 2) -> dict:
    """``n`` children of each masked Gaussian: centres ``mean + R s * eps`` (eps ~ N(0, I) drawn from
    ``generator`` on its device; the global CPU generator when None), scales ``s / (0.8 n)``, the other parameters
    copied. Returns ``{param name: [n * M, ...]}``."""
    dev = model.means.device
    scales = model.scales[mask].repeat(n, 1)
    gen_dev = generator.device if generator is not None else "cpu"
    eps = torch.randn(scales.shape, generator=generator, device=gen_dev).to(dev)
    rot = quaternion_to_matrix(model.quats[mask]).repeat(n, 1, 1)
    out = {"means": (rot @ (scales * eps)[..., None])[..., 0] + model.means[mask].repeat(n, 1),
           "log_scales": torch.log(scales / (0.8 * n))}
    for name in ("quats", "opacity_logits", "sh0"):
        t = getattr(model, name)[mask]
        out[name] = t.repeat(n, *([1] * (t.ndim - 1)))
    return out


@torch.no_grad()
def densify_and_prune(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], config: GaussianConfig,
                      generator: Optional[torch.Generator] = None) -> dict:
    """One densification: clone, split, prune (module docstring). Returns the counts
    ``{"cloned", "split", "pruned", "total"}``."""
    c = config
    grads = torch.nan_to_num(model.grad_accum / model.grad_count, nan=0.0, posinf=0.0)
    big = model.scales.max(-1).values > c.percent_dense * c.extent
    hot = grads >= c.densify_grad_threshold
    clone, split = hot & ~big, hot & big
    n_old = len(model)
    if c.max_gaussians and n_old + int(clone.sum()) + int(split.sum()) > c.max_gaussians:
        clone = split = torch.zeros_like(hot)
    extra = split_children(model, split, generator)
    cloned = {name: getattr(model, name)[clone] for name in PARAM_NAMES}
    extra = {k: torch.cat([cloned[k], extra[k]], 0) for k in PARAM_NAMES}
    rebuild(model, optimizer, ~split, extra)
    prune = (model.opacities < c.min_opacity) | (model.scales.max(-1).values > 0.1 * c.extent)
    if bool(prune.all()):  # never remove every Gaussian: keep the most opaque one
        prune[model.opacities.argmax()] = False
    rebuild(model, optimizer, ~prune)
    model.grad_accum.zero_()
    model.grad_count.zero_()
    return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum()), "total": len(model)}


@torch.no_grad()
def reset_opacity(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], ceiling: float = 0.01) -> None:
    """Opacities above ``ceiling`` set to it; the opacity parameter's Adam moments restart from zero."""
    new = inverse_sigmoid(torch.minimum(model.opacities, torch.full_like(model.opacities, ceiling)))
    model.opacity_logits.data.copy_(new)
    state = optimizer.state.get(model.opacity_logits) if optimizer is not None else None
    for key in ("exp_avg", "exp_avg_sq"):
        if state and key in state:
            state[key].zero_()


def crossed(interval: int, previous: int, current: int) -> bool:
    """Whether a multiple of ``interval`` lies in ``(previous, current]`` (recipe steps: a compressed run may
    jump over several)."""
    return interval > 0 and current // interval > previous // interval
