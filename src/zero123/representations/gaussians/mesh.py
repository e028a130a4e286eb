"""A mesh and surface colours from 3D Gaussians (DreamGaussian's ``extract_fields`` / ``extract_mesh`` route).

* **Density** at a point ``p``: ``sum_i o_i exp(-0.5 (p - mu_i)^T Sigma_i^-1 (p - mu_i))`` over the Gaussians with
  opacity ``o_i > mesh_opacity_cutoff`` (0.005). It is sampled on a regular grid over the Gaussians' 3-sigma
  bounding box, one block of ``mesh_block^3`` grid points at a time against only the Gaussians whose 3-sigma
  reach meets the block (bounded memory), then marching cubes at ``density_threshold`` (DreamGaussian: 1) and the
  clean-up of :mod:`zero123.export.mesh` (``marching_cubes``, ``clean_mesh``). The NeRF's ``fill_cavities`` is not
  applied: it assumes a transition to empty space a few voxels thick, while a Gaussian's tail below the iso-level
  spans many voxels and would be filled as a cavity.
* **Albedo** at a surface point: the colours of its ``albedo_neighbours`` nearest Gaussian centres, weighted by
  each one's opacity-weighted density at the point (the nearest centre's colour where all weights vanish).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import Zero123Error
from .model import GaussianModel

SIGMA_REACH = 3.0


def _active(model: GaussianModel, cutoff: float):
    keep = model.opacities > cutoff
    if not bool(keep.any()):
        raise Zero123Error(f"no Gaussian has an opacity above {cutoff:g}: nothing to export")
    cov = model.covariances()[keep].double()
    inv = torch.linalg.inv(cov + 1e-12 * torch.eye(3, dtype=cov.dtype, device=cov.device)).float()
    reach = SIGMA_REACH * model.scales[keep].max(-1).values
    return model.means[keep], inv, model.opacities[keep], reach, model.colors[keep]


def _gaussian_weights(points: torch.Tensor, means: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """``[P,G]`` ``exp(-0.5 d^T Sigma^-1 d)`` for points ``[P,3]`` and Gaussians (``means`` [G,3], ``inv_cov``
    [G,3,3])."""
    d = points[:, None, :] - means[None]                                       # [P,G,3]
    power = -0.5 * torch.einsum("pgi,gij,pgj->pg", d, inv_cov, d)
    return torch.exp(power.clamp_max(0.0))


@torch.no_grad()
def density_at(model: GaussianModel, points: torch.Tensor, cutoff: float = 0.005, chunk: int = 1 << 24):
    """Opacity-weighted Gaussian density ``[P]`` at world points ``[P,3]`` (every Gaussian, chunked)."""
    means, inv, op, _, _ = _active(model, cutoff)
    step = max(1, chunk // max(1, len(means)))
    return torch.cat([(_gaussian_weights(points[i:i + step], means, inv) * op).sum(-1)
                      for i in range(0, len(points), step)])


@torch.no_grad()
def density_grid(model: GaussianModel, resolution: int, *, cutoff: float = 0.005, block: int = 16,
                 pair_chunk: int = 1 << 24):
    """The density on a ``resolution^3`` vertex grid over the 3-sigma bounding box of the active Gaussians.

    Returns ``(volume float32 [R,R,R] (ij indexing, x first), lo [3], hi [3])`` (numpy, world units)."""
    if resolution < 2:
        raise Zero123Error(f"mesh resolution must be >= 2, got {resolution}")
    means, inv, op, reach, _ = _active(model, cutoff)
    lo = (means - reach[:, None]).amin(0)
    hi = (means + reach[:, None]).amax(0)
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution, device=means.device) for i in range(3)]
    vol = torch.zeros(resolution, resolution, resolution, device=means.device)
    for i0 in range(0, resolution, block):
        for j0 in range(0, resolution, block):
            for k0 in range(0, resolution, block):
                xs, ys, zs = axes[0][i0:i0 + block], axes[1][j0:j0 + block], axes[2][k0:k0 + block]
                blo = torch.stack([xs[0], ys[0], zs[0]])
                bhi = torch.stack([xs[-1], ys[-1], zs[-1]])
                near = ((means + reach[:, None] >= blo) & (means - reach[:, None] <= bhi)).all(-1)
                if not bool(near.any()):
                    continue
                g_means, g_inv, g_op = means[near], inv[near], op[near]
                pts = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
                step = max(1, pair_chunk // len(pts))
                val = torch.zeros(len(pts), device=means.device)
                for g in range(0, len(g_means), step):
                    w = _gaussian_weights(pts, g_means[g:g + step], g_inv[g:g + step])
                    val += (w * g_op[g:g + step]).sum(-1)
                vol[i0:i0 + len(xs), j0:j0 + len(ys), k0:k0 + len(zs)] = val.reshape(len(xs), len(ys), len(zs))
    return vol.cpu().numpy(), lo.cpu().numpy().astype(np.float64), hi.cpu().numpy().astype(np.float64)


@torch.no_grad()
def extract_gaussian_mesh(model: GaussianModel, resolution: int, threshold: float, *, cutoff: float = 0.005,
                          block: int = 16, min_component_fraction: float = 0.05):
    """Marching cubes on :func:`density_grid` at ``threshold`` -> cleaned ``trimesh.Trimesh`` (world units, z up,
    outward faces). Raises ``Zero123Error`` when the density never reaches the threshold."""
    from ...export.mesh import clean_mesh, marching_cubes

    vol, lo, hi = density_grid(model, resolution, cutoff=cutoff, block=block)
    if float(vol.max()) <= threshold:
        raise Zero123Error(f"the Gaussians' density never reaches the iso-level {threshold:g} (max "
                           f"{float(vol.max()):.3g}): nothing to export")
    step = (hi - lo) / (resolution - 1)
    mesh = marching_cubes(np.pad(vol, 1, constant_values=0.0), threshold, lo - step, hi + step)
    return clean_mesh(mesh, min_component_fraction)


@torch.no_grad()
def gaussian_albedo(model: GaussianModel, points: torch.Tensor, *, cutoff: float = 0.005, neighbours: int = 16,
                    pair_chunk: int = 1 << 25) -> torch.Tensor:
    """``[P,3]`` colours in [0,1] at world points ``[P,3]`` (module docstring)."""
    means, inv, op, _, colors = _active(model, cutoff)
    k = min(neighbours, len(means))
    step = max(1, pair_chunk // len(means))
    out = []
    for i in range(0, len(points), step):
        p = points[i:i + step].to(means)
        idx = torch.cdist(p, means).topk(k, largest=False).indices                  # [P,k], nearest first
        d = p[:, None, :] - means[idx]
        w = torch.exp((-0.5 * torch.einsum("pki,pkij,pkj->pk", d, inv[idx], d)).clamp_max(0.0)) * op[idx]
        w[:, 0] += 1e-8  # where every weight vanishes: the nearest centre's colour
        out.append((w[..., None] * colors[idx]).sum(1) / w.sum(1, keepdim=True))
    return torch.cat(out) if out else points.new_zeros((0, 3))
