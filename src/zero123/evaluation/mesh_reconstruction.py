"""Proof that the 3D half of image-to-3D is right, without diffusion: multi-view reconstruction of a known mesh.

The ground-truth mesh is normalised (centre of its bounding box at the origin, farthest vertex at
``object_radius``), rendered from ``num_views`` cameras spread evenly over the sphere by the project's mesh
rasteriser (:func:`zero123.rendering.mesh_rasterizer.render_mesh`, flat albedo with ``ambient=1`` so colours do not
depend on the view, composited on white), and the same field / volume renderer / occupancy grid / marching cubes
as :mod:`zero123.pipelines.image_to_3d` reconstruct it with a photometric loss (RGB MSE + opacity-vs-coverage MSE)
on random rays of those views instead of SDS.

Metrics, with both meshes normalised by the ground truth's transform to the unit sphere:

* **Chamfer distance**: ``0.5 * (mean_{p on A} d(p, B) + mean_{q on B} d(q, A))``, ``n`` points sampled
  uniformly on each surface, ``d`` the Euclidean (not squared) distance to the other mesh's surface.
* **Volume IoU**: inside/outside of both meshes on a ``res^3`` grid over ``[-1.05, 1.05]^3`` (ray parity along z),
  ``|A and B| / |A or B|``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import Zero123Error
from ..export.mesh import MeshExtractionConfig, extract_mesh
from ..fields import FieldConfig, NeRFField, OccupancyGrid
from ..guidance.losses import opaque_loss
from ..rendering.cameras import orbit_cameras, ray_bundle
from ..rendering.coverage import covered_points
from ..rendering.volume import RenderSettings, render_rays


# ----- metrics -----------------------------------------------------------------------------------------------
def normalize_mesh(mesh, radius: float = 1.0):
    """Copy of ``mesh`` moved so its bounding-box centre is at the origin and scaled so its farthest vertex is at
    ``radius``. Returns ``(mesh, center [3], scale)`` with ``normalized = (v - center) * scale``."""
    m = mesh.copy()
    v = np.asarray(m.vertices, dtype=np.float64)
    if len(v) == 0:
        raise Zero123Error("cannot normalise an empty mesh")
    center = (v.min(0) + v.max(0)) / 2
    extent = np.linalg.norm(v - center, axis=1).max()
    if not np.isfinite(extent) or extent <= 0:
        raise Zero123Error("cannot normalise a degenerate mesh")
    scale = radius / extent
    m.vertices = (v - center) * scale
    return m, center, scale


def apply_transform(mesh, center, scale):
    m = mesh.copy()
    m.vertices = (np.asarray(m.vertices, dtype=np.float64) - center) * scale
    return m


def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest points ``[N,3]`` on triangles (a, b, c) ``[N,3]`` each to points ``p`` ``[N,3]`` (Ericson's
    region test, vectorised)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    eps = 1e-30
    # interior (default)
    denom = va + vb + vc
    v = vb / np.where(np.abs(denom) > eps, denom, eps)
    w = vc / np.where(np.abs(denom) > eps, denom, eps)
    res = a + ab * v[:, None] + ac * w[:, None]
    # edge regions (later assignments take precedence in the order of the region tests, so apply in reverse)
    cond_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    t = (d4 - d3) / np.where(np.abs((d4 - d3) + (d5 - d6)) > eps, (d4 - d3) + (d5 - d6), eps)
    res = np.where(cond_bc[:, None], b + (c - b) * t[:, None], res)
    cond_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t = d2 / np.where(np.abs(d2 - d6) > eps, d2 - d6, eps)
    res = np.where(cond_ac[:, None], a + ac * t[:, None], res)
    cond_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t = d1 / np.where(np.abs(d1 - d3) > eps, d1 - d3, eps)
    res = np.where(cond_ab[:, None], a + ab * t[:, None], res)
    # vertex regions
    res = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, res)
    res = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, res)
    res = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, res)
    return res


def point_mesh_distance(points: np.ndarray, mesh, candidates: int = 16) -> np.ndarray:
    """Distance ``[N]`` from each point to the surface of ``mesh``: exact point-triangle distances to the
    ``candidates`` triangles with the nearest centroids (a KD-tree), which is exact for meshes whose triangles are
    small compared with their spacing to the points (any reasonably tessellated surface)."""
    from scipy.spatial import cKDTree

    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    k = min(candidates, len(tri))
    _, cand = cKDTree(tri.mean(1)).query(points, k=k)
    cand = cand.reshape(len(points), k)
    best = np.full(len(points), np.inf)
    for j in range(k):
        t = tri[cand[:, j]]
        q = closest_point_on_triangles(points, t[:, 0], t[:, 1], t[:, 2])
        best = np.minimum(best, np.linalg.norm(points - q, axis=1))
    return best


def chamfer_distance(a, b, n: int = 20000, seed: int = 0) -> float:
    """Symmetric mean point-to-surface distance between two meshes (see module docstring): ``n`` points sampled
    uniformly on each surface, each measured to the other mesh's surface (not to its samples, so the estimate has
    no sampling floor)."""
    import trimesh

    if len(a.faces) == 0 or len(b.faces) == 0:
        return float("inf")
    pa = np.asarray(trimesh.sample.sample_surface(a, n, seed=seed)[0])
    pb = np.asarray(trimesh.sample.sample_surface(b, n, seed=seed + 1)[0])
    return float(0.5 * (point_mesh_distance(pa, b).mean() + point_mesh_distance(pb, a).mean()))


def voxelize(mesh, resolution: int = 64, lo: float = -1.05, hi: float = 1.05) -> np.ndarray:
    """Bool ``[res,res,res]`` (``ij`` order: x, y, z) of grid points inside a closed mesh, by ray parity along +z.

    Each (x, y) column is intersected with every triangle covering it in the xy-projection; a point is inside
    when an odd number of crossings lies above it. Columns are offset by a tiny irrational amount so rays do not
    hit edges or vertices exactly."""
    axis = np.linspace(lo, hi, resolution)
    step = axis[1] - axis[0]
    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]          # [F,3,3]
    jitter = np.array([1e-4 * math.sqrt(2), 1e-4 * math.sqrt(3)]) * step
    # triangle coordinates in column units
    xy = (tri[:, :, :2] - lo - jitter) / step                                           # [F,3,2]
    counts = np.zeros((resolution, resolution, resolution + 1), dtype=np.int64)
    cov = covered_points(torch.from_numpy(xy), resolution, resolution, eps=0.0, min_area=1e-15)
    if len(cov.tri):
        fid, cx, cy = cov.tri.numpy(), cov.x.numpy(), cov.y.numpy()
        z = (cov.bary.numpy() * tri[fid, :, 2]).sum(1)
        # crossing at height z: every grid point strictly below it gets one more crossing above
        k = np.searchsorted(axis, z, side="left")                                         # points with z_k < z
        np.add.at(counts, (cx, cy, np.zeros_like(k)), 1)
        np.add.at(counts, (cx, cy, k), -1)
    above = np.cumsum(counts, axis=2)[:, :, :resolution]
    return (above % 2) == 1


def volume_iou(a, b, resolution: int = 64) -> float:
    """Volume IoU of two closed meshes on a ``resolution^3`` grid over [-1.05, 1.05]^3."""
    va, vb = voxelize(a, resolution), voxelize(b, resolution)
    union = np.logical_or(va, vb).sum()
    return float(np.logical_and(va, vb).sum() / union) if union else 0.0


# ----- reconstruction ----------------------------------------------------------------------------------------
def _cpu_field() -> FieldConfig:
    return FieldConfig(radius=1.0, n_levels=8, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.45,
                       mlp_width=32, mlp_hidden_layers=1)


@dataclass
class ReconstructionConfig:
    """Settings of :func:`reconstruct_mesh` (defaults sized for a CPU run of about a minute per shape)."""

    field: FieldConfig = dc_field(default_factory=_cpu_field)
    render: RenderSettings = dc_field(default_factory=lambda: RenderSettings(num_samples_per_ray=128))
    occupancy_resolution: int = 32
    occupancy_update_every: int = 8
    object_radius: float = 0.55
    num_views: int = 48
    view_size: int = 64
    view_supersampling: int = 2
    distance: float = 3.8
    fovy: float = 20.0
    steps: int = 300
    rays_per_step: int = 2048
    lr: float = 0.01
    lambda_mask: float = 1.0
    lambda_opaque: float = 0.001
    mesh: MeshExtractionConfig = dc_field(default_factory=lambda: MeshExtractionConfig(
        resolution=128, coarse_resolution=48))
    metric_points: int = 20000
    iou_resolution: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReconstructionResult:
    mesh: object               # reconstructed trimesh, in the ground truth's unit-sphere frame
    ground_truth: object       # ground-truth trimesh, unit-sphere frame
    chamfer: float
    iou: float
    field: NeRFField
    final_loss: float
    seconds: float


def fibonacci_views(n: int, min_elevation: float = -75.0, max_elevation: float = 75.0):
    """``n`` (elevation, azimuth) pairs in degrees spread evenly over the sphere band."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    elev = np.degrees(np.arcsin(z)).clip(min_elevation, max_elevation)
    azim = (np.degrees(np.pi * (1 + 5 ** 0.5) * i) % 360.0) - 180.0
    return elev, azim


def _default_render_fn():
    try:
        from ..rendering.mesh_rasterizer import render_mesh
    except ImportError as exc:  # pragma: no cover - the rasteriser ships with the package
        raise Zero123Error(f"the mesh rasteriser is not available ({exc})") from None
    return render_mesh


def reconstruct_mesh(mesh, config: ReconstructionConfig | None = None, *, seed: int = 0, device=None,
                     render_fn: Optional[Callable] = None, progress: bool = False) -> ReconstructionResult:
    """Reconstruct ``mesh`` (a ``trimesh.Trimesh``) from its renders and score it (see module docstring).

    ``render_fn`` defaults to :func:`zero123.rendering.mesh_rasterizer.render_mesh` (same signature)."""
    from tqdm.auto import tqdm

    c = config or ReconstructionConfig()
    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    render_fn = render_fn or _default_render_fn()
    gt_unit, center, scale = normalize_mesh(mesh, 1.0)
    gt_world = apply_transform(gt_unit, np.zeros(3), c.object_radius)
    if c.object_radius * 1.05 >= c.field.radius:
        raise Zero123Error(f"object radius {c.object_radius} does not fit in the field's cube ({c.field.radius})")

    # ground-truth views
    elev, azim = fibonacci_views(c.num_views)
    cams = orbit_cameras(elev, azim, c.distance, c.fovy)
    gt = render_fn(gt_world, cams.c2w, c.fovy, c.view_size, ambient=1.0, samples=c.view_supersampling)
    rgba = gt["rgba"].float()
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + (1 - alpha)                 # composite on white
    origins, dirs = ray_bundle(cams.c2w, cams.fovy, c.view_size)
    origins, dirs = origins.reshape(-1, 3).to(dev), dirs.reshape(-1, 3).to(dev)
    target_rgb, target_alpha = rgb.reshape(-1, 3).to(dev), alpha.reshape(-1).to(dev)

    torch.manual_seed(seed)
    fld = NeRFField(c.field).to(dev)
    occ = OccupancyGrid(c.field.radius, c.occupancy_resolution, c.occupancy_update_every).to(dev)
    opt = torch.optim.Adam(fld.parameters(), lr=c.lr, betas=(0.9, 0.99), eps=1e-15)
    gen = torch.Generator(device=dev).manual_seed(seed)
    step_size = c.render.step_size(c.field.radius)
    white = torch.ones(c.rays_per_step, 3, device=dev)
    loss_val = float("nan")
    for step in tqdm(range(c.steps), desc="reconstruct", disable=not progress):
        if step % occ.update_every == 0:
            occ.update(fld.density, step_size, generator=gen)
        idx = torch.randint(0, origins.shape[0], (c.rays_per_step,), device=dev, generator=gen)
        out = render_rays(fld, origins[idx], dirs[idx], white, occupancy=occ, settings=c.render, generator=gen)
        loss = torch.nn.functional.mse_loss(out["rgb"], target_rgb[idx])
        loss = loss + c.lambda_mask * torch.nn.functional.mse_loss(out["opacity"], target_alpha[idx])
        if c.lambda_opaque > 0:
            loss = loss + c.lambda_opaque * opaque_loss(out["opacity"])
        if loss.requires_grad:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss_val = float(loss.detach())

    pred_world = extract_mesh(fld, c.mesh)
    pred_unit = apply_transform(pred_world, np.zeros(3), 1.0 / c.object_radius)
    ch = chamfer_distance(pred_unit, gt_unit, c.metric_points, seed)
    iou = volume_iou(pred_unit, gt_unit, c.iou_resolution)
    return ReconstructionResult(mesh=pred_unit, ground_truth=gt_unit, chamfer=ch, iou=iou, field=fld,
                                final_loss=loss_val, seconds=time.perf_counter() - t0)


def analytic_shape(name: str):
    """The analytic test shapes: ``sphere``, ``torus``, ``box`` (trimesh.creation), ``duck`` (pybullet_data)."""
    import trimesh

    if name == "sphere":
        return trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    if name == "torus":
        return trimesh.creation.torus(major_radius=0.7, minor_radius=0.3, major_sections=64, minor_sections=32)
    if name == "box":
        return trimesh.creation.box(extents=(1.2, 0.8, 0.6))
    if name == "duck":
        try:
            import pybullet_data
        except ImportError:
            raise Zero123Error("the duck mesh needs pybullet (pip install 'zero123[data]')") from None
        import os

        path = os.path.join(pybullet_data.getDataPath(), "duck.obj")
        m = trimesh.load(path, force="mesh", process=True)
        return m
    raise Zero123Error(f"unknown shape {name!r}: use sphere, torus, box or duck")


def main(argv=None) -> int:
    """``python -m zero123.evaluation.mesh_reconstruction [shape ...] [--steps N]``: print the metrics."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("shapes", nargs="*", default=["sphere", "torus", "box", "duck"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    for name in a.shapes:
        cfg = ReconstructionConfig()
        if a.steps:
            cfg.steps = a.steps
        r = reconstruct_mesh(analytic_shape(name), cfg, seed=a.seed, device=a.device, progress=True)
        print(f"{name}: chamfer {r.chamfer:.4f}  iou {r.iou:.3f}  loss {r.final_loss:.4g}  "
              f"faces {len(r.mesh.faces)}  {r.seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
