"""Mesh extraction from a density field: marching cubes (PyMCubes) and clean-up (trimesh).

The field is sampled on a regular grid. A coarse pass (``coarse_resolution``^3 over the whole cube) fixes the
iso-level (``threshold="auto"``: half the mean density of the object's interior, where the interior is the cells
above threestudio's automatic level, the mean of all densities above 1e-5) and finds the
bounding box of ``density > threshold``; the fine pass (``resolution``^3) covers only that box (plus two coarse
cells of margin), so the resolution is spent on the object. Enclosed empty pockets inside the object are filled
(``fill_cavities``) so only the outer surface is extracted. Vertices are in world units (z up); faces are
oriented outwards (positive signed volume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union

import numpy as np
import torch

from ..errors import Zero123Error


@dataclass
class MeshExtractionConfig:
    """``resolution``: fine grid vertices per axis; ``threshold``: density iso-level (1/world unit) or "auto"
    (see module docstring); ``min_component_fraction``: drop connected parts with fewer faces than this fraction
    of the largest."""

    resolution: int = 256
    coarse_resolution: int = 64
    threshold: Union[float, str] = "auto"
    min_component_fraction: float = 0.05
    fill_cavities: bool = True
    chunk: int = 1 << 18

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sample_grid(density_fn, lo, hi, resolution: int, device, chunk: int = 1 << 18) -> np.ndarray:
    """Density on a ``resolution^3`` grid spanning [lo, hi] (vertex-aligned, ``ij`` indexing): float32 array."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution) for i in range(3)]
    out = np.empty(resolution ** 3, dtype=np.float32)
    # iterate over x-slabs to avoid materialising all points at once
    gy, gz = torch.meshgrid(axes[1], axes[2], indexing="ij")
    yz = torch.stack([gy.reshape(-1), gz.reshape(-1)], -1)
    per_slab = yz.shape[0]
    slabs = max(1, chunk // per_slab)
    for i0 in range(0, resolution, slabs):
        xs = axes[0][i0:i0 + slabs]
        pts = torch.cat([xs.repeat_interleave(per_slab)[:, None], yz.repeat(xs.numel(), 1)], -1).to(device)
        d = density_fn(pts).float().reshape(-1)
        d = torch.nan_to_num(d, nan=0.0, posinf=1e6)
        out[i0 * per_slab:(i0 + xs.numel()) * per_slab] = d.cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def clean_mesh(mesh, min_component_fraction: float = 0.05):
    """Remove degenerate/duplicate faces and unreferenced vertices, merge vertices, drop small parts."""
    import trimesh

    mesh = mesh.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        return mesh
    if min_component_fraction > 0:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            sizes = np.array([len(p.faces) for p in parts])
            keep = [p for p, n in zip(parts, sizes) if n >= min_component_fraction * sizes.max()]
            mesh = trimesh.util.concatenate(keep)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def marching_cubes(volume: np.ndarray, threshold: float, lo, hi):
    """PyMCubes on ``volume`` (higher = inside) -> ``trimesh.Trimesh`` in world coordinates [lo, hi]."""
    import mcubes
    import trimesh

    verts, faces = mcubes.marching_cubes(volume.astype(np.float64), float(threshold))
    if len(faces) == 0:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    res = np.array(volume.shape, dtype=np.float64)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    verts = lo + verts / (res - 1) * (hi - lo)
    return trimesh.Trimesh(verts, faces.astype(np.int64), process=False)


def fill_cavities(volume: np.ndarray, threshold: float, margin: int = 3, empty_fraction: float = 0.1) -> np.ndarray:
    """Raise empty pockets inside the object above the iso-level, so marching cubes keeps the outer surface.

    Volume rendering never sees inside an opaque object, so its interior density is unconstrained and may dip
    below the iso-level, which would add inner surfaces. "Outside" is the clearly empty space (density below
    ``empty_fraction * threshold``) connected to the grid border, grown by ``margin`` voxels to keep the
    surface's transition layer; every other voxel below the iso-level is a cavity and is set to 2 x threshold."""
    from scipy.ndimage import binary_dilation, label

    empty = volume < empty_fraction * threshold
    lab, _ = label(empty)
    border = np.unique(np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel(),
                                       lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    outside = np.isin(lab, border[border > 0])
    if margin > 0:
        outside = binary_dilation(outside, iterations=margin)
    cavities = (volume <= threshold) & ~outside
    if cavities.any():
        volume = volume.copy()
        volume[cavities] = 2.0 * threshold
    return volume


def iso_level(density: np.ndarray, threshold: Union[float, str] = "auto") -> float:
    """The iso-level: ``threshold`` itself, or for "auto" half the mean density of the cells above threestudio's
    automatic level (the mean of all densities above 1e-5). Volume rendering leaves the interior of an object at a
    roughly constant density whose value depends on the training; half of it lands in the middle of the thin
    transition to empty space, where the rendered silhouettes put the surface."""
    if isinstance(threshold, str):
        if threshold != "auto":
            raise Zero123Error(f"iso-level must be a number or 'auto', got {threshold!r}")
        vals = density[density > 1e-5]
        if vals.size == 0:
            return 1e-5
        interior = vals[vals > vals.mean()]
        return float(0.5 * interior.mean()) if interior.size else float(vals.mean())
    return float(threshold)


def extract_mesh(field, config: MeshExtractionConfig | None = None):
    """Marching cubes on ``field.density`` -> cleaned ``trimesh.Trimesh`` (world units, outward faces).

    Raises ``Zero123Error`` when no density exceeds the threshold (an empty reconstruction)."""
    c = config or MeshExtractionConfig()
    dev = next(field.parameters()).device
    r = field.radius
    coarse = sample_grid(field.density, [-r] * 3, [r] * 3, c.coarse_resolution, dev, c.chunk)
    threshold = iso_level(coarse, c.threshold)
    inside = np.argwhere(coarse > threshold)
    if inside.size == 0:
        raise Zero123Error(f"the field has no density above the iso-level {threshold:.3g}: nothing to export "
                           f"(max density {float(coarse.max()):.3g})")
    cell = 2 * r / (c.coarse_resolution - 1)
    lo = np.maximum(-r, -r + (inside.min(0) - 2) * cell)
    hi = np.minimum(r, -r + (inside.max(0) + 2) * cell)
    fine = sample_grid(field.density, lo, hi, c.resolution, dev, c.chunk)
    if c.fill_cavities:
        fine = fill_cavities(fine, threshold)
    # pad with zeros so surfaces touching the box are closed
    fine = np.pad(fine, 1, constant_values=0.0)
    step = (hi - lo) / (c.resolution - 1)
    mesh = marching_cubes(fine, threshold, lo - step, hi + step)
    return clean_mesh(mesh, c.min_component_fraction)
