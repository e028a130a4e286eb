"""``zero123 eval-3d``: whole image-to-3D runs scored against the ground-truth meshes of a rendered dataset.

For each held-out object of a ``zero123 render-dataset`` folder:

* **Ground truth.** The source mesh is rebuilt from the manifest's ``source`` (``procedural:<seed>`` is
  regenerated, ``pybullet:<path>`` re-read from the pybullet wheel with its URDF colour, other entries are mesh
  files, read with ``up``) and normalised exactly as the renderer did (bounding box centred, largest side 1).
  The dataset's own views (random cameras, stored PNG + RT) are the held-out views; the per-object light is
  replayed from the dataset seed, so the ground-truth mesh re-rendered at a stored camera gives the stored image
  (``gt_rerender_psnr`` in the results checks it).
* **Input view.** One view per object, rendered from the ground truth at a fixed camera: elevation
  ``input_elevation`` (default 10 degrees), azimuth ``input_azimuth`` (default 0), distance ``input_distance``
  (2.0), the dataset's field of view, size and light. None of the held-out views is this camera.
* **Rows.** ``model``: :func:`zero123.pipelines.image_to_3d.to3d` on the input view (told its elevation) with the
  preset, ``config_file`` and ``overrides`` on top (``--config`` / ``--set``; its texture, turntable and preview
  at the tiny preset's sizes, which the scored mesh does not depend on); its ``model.ply`` is in the export frame
  (front toward +Z, :mod:`zero123.camera`), mapped back into the ground truth's world with the input camera's
  azimuth. ``gt_views``: the 3D stage's upper bound, :func:`zero123.evaluation.mesh_reconstruction.reconstruct_mesh`
  from many ground-truth renders.
  ``extrude``: the input silhouette extruded along the viewing axis (orthographically, in the plane through the
  origin) to a depth equal to its width. ``sphere``: a sphere of the silhouette's size (diameter = the larger
  side of its bounding box) in that plane. Baselines are coloured by projecting the input view onto them
  (nearest silhouette pixel).
* **Metrics** (Zero123's appendix D protocol, F-score as SF3D): both meshes normalised to the unit cube (bounding
  box centred, largest side 1), no alignment (``icp=True`` adds a rigid ICP of the prediction onto the ground
  truth first). ``chamfer``: ``0.5 * (mean_{p in P} d(p, G) + mean_{q in G} d(q, P))`` with ``points`` (2000)
  points sampled on each surface and ``d`` the distance to the other surface (lower is better).
  ``iou``: volume IoU on the unit cube's ``iou_resolution``^3 (64) cells, a cell occupied when the surface
  crosses it or encloses it (hole filling, so open or overlapping parts count as well as closed ones). ``f@0.05``, ``f@0.1``: ``2PR / (P + R)`` with precision ``P`` the fraction of
  predicted points within the threshold of the ground truth and recall ``R`` the converse. ``psnr`` / ``ssim``
  (and ``lpips`` with local weights; none ship) of the normalised result rendered at the held-out cameras with
  the dataset's light, composited on white, against the stored views.

Results are cached per object (``<out>/objects/<id>/metrics.json``, keyed by the settings), so a run resumes,
and ``shard="K/N"`` runs one shard of the objects (:mod:`zero123.data.shards`) for parallel processes; ``cached_only`` tabulates what exists.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.shards import Shard
from ..errors import Zero123Error
from .eval3d_rows import ROWS  # result rows, in table order (an import-free module: the CLI parser reads it)

__all__ = ["ROWS", "Eval3DConfig", "GroundTruth", "load_ground_truth", "render_input_view", "normalize_unit_cube",
           "shape_metrics", "view_metrics", "load_result_mesh", "extruded_silhouette", "silhouette_sphere",
           "evaluate_3d", "summarize", "paired_comparison", "format_table"]

#: Metrics per row, in table order; higher is better except chamfer (and lpips).
METRICS = ("chamfer", "iou", "f@0.05", "f@0.1", "psnr", "ssim", "lpips")


@dataclass
class Eval3DConfig:
    """Settings of :func:`evaluate_3d`. Angles in degrees, lengths in the dataset's units (object side 1)."""

    split: str = "test"
    max_objects: Optional[int] = None
    rows: Tuple[str, ...] = ROWS
    input_elevation: float = 10.0
    input_azimuth: float = 0.0
    input_distance: float = 2.0
    preset: str = "auto"
    representation: str = "nerf"         # to3d's representation for the model row: nerf or gaussians
    steps: Optional[int] = None
    config_file: Optional[str] = None    # to3d config keys on top of the preset (to3d --config)
    overrides: Tuple[str, ...] = ()      # dotted key=value on top of those (to3d --set)
    seed: int = 0
    points: int = 2000
    iou_resolution: int = 64
    fscore_thresholds: Tuple[float, ...] = (0.05, 0.1)
    icp: bool = False
    max_views: Optional[int] = None      # held-out views scored per object (default: all)
    figure_views: int = 4
    up: str = "y"                        # up axis of mesh-file sources (render-dataset --up)
    gt_views_steps: Optional[int] = None  # reconstruct_mesh steps (default: its config's; 20 for the tiny preset)
    shard: Optional[str] = None          # "K/N": this process's shard of the objects (zero123.data.shards)
    objects: Optional[Tuple[str, ...]] = None  # only these object ids of the split, in this order
    cached_only: bool = False

    def validate(self) -> "Eval3DConfig":
        from ..camera import check_elevation

        bad = [r for r in self.rows if r not in ROWS]
        if bad or not self.rows:
            raise Zero123Error(f"unknown row(s) {', '.join(bad) or '(none)'}: choose from {', '.join(ROWS)}")
        check_elevation(self.input_elevation, "input elevation")
        if not math.isfinite(self.input_azimuth):
            raise Zero123Error(f"input azimuth {self.input_azimuth} is not finite")
        if not (self.input_distance > 0.9):
            raise Zero123Error(f"input distance {self.input_distance} must exceed 0.9 (the object's half-diagonal)")
        if self.points < 10 or self.iou_resolution < 8:
            raise Zero123Error("points must be >= 10 and the IoU resolution >= 8")
        if self.max_objects is not None and self.max_objects < 1:
            raise Zero123Error(f"max objects must be >= 1, got {self.max_objects}")
        if self.max_views is not None and self.max_views < 1:
            raise Zero123Error(f"max views must be >= 1, got {self.max_views}")
        if self.steps is not None and self.steps < 1:
            raise Zero123Error(f"steps must be >= 1, got {self.steps}")
        if self.shard is not None:
            Shard.parse(self.shard)
        if self.up not in ("y", "z"):
            raise Zero123Error(f"up axis must be 'y' or 'z', got {self.up!r}")
        from ..pipelines.image_to_3d_config import REPRESENTATION_PRESETS

        if self.representation not in REPRESENTATION_PRESETS:
            raise Zero123Error(f"unknown representation {self.representation!r}: use one of "
                               f"{', '.join(REPRESENTATION_PRESETS)}")
        return self

    def cache_key(self) -> dict:
        """Settings that change an object's numbers (not which objects run); a config file by its content."""
        skip = {"split", "max_objects", "rows", "shard", "objects", "cached_only", "figure_views"}
        key = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        if self.config_file is not None:
            from ..utils.dataclass_config import read_config_file

            key["config_file"] = read_config_file(self.config_file)
        return key

    def resolved(self, device=None, bundled: bool = False) -> "Eval3DConfig":
        """This config with ``preset="auto"`` replaced by the preset that to3d runs for it (``preset_config``'s rule:
        the device, whether the model is the bundled one, the representation)."""
        if self.preset != "auto":
            return self
        from dataclasses import replace

        return replace(self, preset=self.to3d_config(device, bundled=bundled).preset)

    def to3d_config(self, device=None, bundled: bool = False):
        """The model row's :class:`ImageTo3DConfig`: the preset, then ``config_file``, ``overrides``, ``steps``
        (one-line errors for bad keys, before any work)."""
        from ..pipelines.image_to_3d_config import preset_config

        return preset_config(self.preset, self.steps, device=device, config_file=self.config_file,
                             overrides=self.overrides, representation=self.representation, bundled=bundled)


# ----- ground truth --------------------------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """One held-out object: ``mesh`` (trimesh, unit cube, z up), ``prepared`` (for the rasteriser), the stored
    views ``rgba`` uint8 ``[N,H,W,4]`` with cameras ``c2w`` ``[N,4,4]``, and the light / lens they used."""

    object_id: str
    mesh: object
    prepared: object
    rgba: np.ndarray
    c2w: torch.Tensor
    light_dir: np.ndarray
    ambient: float
    fov_deg: float
    size: int
    samples: int


def _object_source(entry, up: str):
    from ..data.objects import ObjectSource, pybullet_sources

    src = entry.source
    if src.startswith("procedural:"):
        return ObjectSource(id=entry.id, kind="procedural", ref=src.split(":", 1)[1])
    if src.startswith("pybullet:"):
        ref = src.split(":", 1)[1]
        for s in pybullet_sources():
            if s.ref == ref:
                return s
        raise Zero123Error(f"object {entry.id}: pybullet mesh {ref} not found in this pybullet install")
    if not src or not Path(src).is_file():
        raise Zero123Error(f"object {entry.id}: its source mesh {src!r} is not available; eval-3d needs the meshes "
                           "the dataset was rendered from")
    return ObjectSource(id=entry.id, kind="file", ref=src, up=up)


def _render_settings(manifest):
    from ..data.render import DatasetRenderSettings

    names = {f.name for f in fields(DatasetRenderSettings)}
    st = {k: (tuple(v) if isinstance(v, list) else v) for k, v in manifest.settings.items() if k in names}
    if "seed" not in st:
        raise Zero123Error("the manifest has no render settings (a merged dataset?): eval-3d needs the folder "
                           "written by `zero123 render-dataset`")
    return DatasetRenderSettings(**st)


def load_ground_truth(root, manifest, entry, up: str = "y") -> GroundTruth:
    """The object's normalised mesh, stored views and replayed light (see the module docstring)."""
    import trimesh

    from ..data import layout
    from ..data.render import _object_rng, normalize_to_unit_cube, sample_lighting, sample_view_cameras
    from ..rendering.mesh_rasterizer import _geometries, prepare_mesh

    settings = _render_settings(manifest)
    raw = _object_source(entry, up).load()
    pm0 = prepare_mesh(raw)
    bounds = pm0.bounds.double().numpy()
    extent = float((bounds[1] - bounds[0]).max())
    centre = (bounds[0] + bounds[1]) / 2
    prepared = normalize_to_unit_cube(pm0)
    geoms = [g for g in _geometries(raw) if len(g.faces)]
    mesh = geoms[0].copy() if len(geoms) == 1 else trimesh.util.concatenate(geoms)
    mesh.vertices = (np.asarray(mesh.vertices, dtype=np.float64) - centre) / extent
    rng = _object_rng(settings.seed, entry.id)
    sample_view_cameras(rng, settings)  # the renderer drew the cameras first, then the light
    light, ambient = sample_lighting(rng, settings)
    rgba = np.stack([layout.read_view_rgba(root, entry.id, i) for i in range(entry.num_views)])
    c2w = torch.stack([layout.read_view_camera(root, entry.id, i) for i in range(entry.num_views)]).float()
    return GroundTruth(entry.id, mesh, prepared, rgba, c2w, light, ambient, manifest.fov_deg, manifest.image_size,
                       settings.samples)


def _render_uint8(mesh, gt: GroundTruth, c2w: torch.Tensor) -> np.ndarray:
    """``mesh`` at cameras ``c2w`` with the object's light and lens: RGBA uint8 ``[B,H,W,4]`` as the dataset."""
    from ..rendering.mesh_rasterizer import render_mesh

    out = render_mesh(mesh, c2w, gt.fov_deg, gt.size, light_dir=gt.light_dir, ambient=gt.ambient,
                      samples=gt.samples)
    return (out["rgba"].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def render_input_view(gt: GroundTruth, cfg: Eval3DConfig):
    """The fixed input camera's view of the ground truth: (RGBA uint8 ``[H,W,4]``, c2w ``[4,4]``)."""
    from ..camera import camera_to_world

    c2w = camera_to_world(cfg.input_elevation, cfg.input_azimuth, cfg.input_distance).float()
    return _render_uint8(gt.prepared, gt, c2w[None])[0], c2w


# ----- metrics -------------------------------------------------------------------------------------------------
def normalize_unit_cube(mesh):
    """Copy of a trimesh with its bounding box centred at the origin and its largest side 1."""
    m = mesh.copy()
    v = np.asarray(m.vertices, dtype=np.float64)
    if len(m.faces) == 0:
        raise Zero123Error("cannot normalise an empty mesh")
    lo, hi = v[np.unique(np.asarray(m.faces))].min(0), v[np.unique(np.asarray(m.faces))].max(0)
    extent = float((hi - lo).max())
    if not math.isfinite(extent) or extent <= 1e-12:
        raise Zero123Error("cannot normalise a degenerate mesh")
    m.vertices = (v - (lo + hi) / 2) / extent
    return m


def _fine(mesh, max_edge: float):
    """The same surface with no edge longer than ``max_edge``."""
    import trimesh

    v, f = trimesh.remesh.subdivide_to_size(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces),
                                            max_edge, max_iter=16)
    return trimesh.Trimesh(v, f, process=False)


def _occupancy(fine, resolution: int) -> np.ndarray:
    """Cells of the unit cube's ``resolution^3`` grid holding a vertex of ``fine`` (edges under half a cell, so
    the surface's cells form a gap-free shell) or enclosed by them (``binary_fill_holes``): works for open or
    overlapping parts, where ray parity does not."""
    from scipy.ndimage import binary_fill_holes

    idx = np.clip(np.floor((np.asarray(fine.vertices) + 0.5) * resolution), 0, resolution - 1).astype(np.int64)
    occ = np.zeros((resolution,) * 3, dtype=bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return binary_fill_holes(occ)


def shape_metrics(pred, gt, points: int = 2000, iou_resolution: int = 64, thresholds=(0.05, 0.1),
                  seed: int = 0) -> dict:
    """Chamfer, volume IoU and F-scores of two meshes already in the unit cube (see the module docstring).

    Distances go to the other mesh subdivided to edges under half an IoU cell, where the nearest-centroid
    candidates of :func:`zero123.evaluation.mesh_reconstruction.point_mesh_distance` are exact."""
    import trimesh

    from .mesh_reconstruction import point_mesh_distance

    fine_p, fine_g = _fine(pred, 0.5 / iou_resolution), _fine(gt, 0.5 / iou_resolution)
    pp = np.asarray(trimesh.sample.sample_surface(pred, points, seed=seed)[0])
    pg = np.asarray(trimesh.sample.sample_surface(gt, points, seed=seed + 1)[0])
    d_pg, d_gp = point_mesh_distance(pp, fine_g), point_mesh_distance(pg, fine_p)
    out = {"chamfer": float(0.5 * (d_pg.mean() + d_gp.mean()))}
    va, vb = _occupancy(fine_p, iou_resolution), _occupancy(fine_g, iou_resolution)
    union = np.logical_or(va, vb).sum()
    out["iou"] = float(np.logical_and(va, vb).sum() / union) if union else 0.0
    for t in thresholds:
        p, r = float((d_pg < t).mean()), float((d_gp < t).mean())
        out[f"f@{t:g}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out


def view_metrics(mesh, gt: GroundTruth, views: Sequence[int], lpips=None):
    """(``{"psnr", "ssim"[, "lpips"]}`` means over ``views``, renders uint8 RGBA ``[V,H,W,4]``) of a unit-cube
    mesh against the stored views, both composited on white."""
    from ..data.layout import rgba_to_tensor
    from .metrics import psnr, ssim

    idx = list(views)
    renders = _render_uint8(mesh, gt, gt.c2w[idx])
    pred = torch.stack([rgba_to_tensor(x) for x in renders]).add(1).div(2)
    target = torch.stack([rgba_to_tensor(gt.rgba[i]) for i in idx]).add(1).div(2)
    out = {"psnr": float(psnr(pred, target).mean()), "ssim": float(ssim(pred, target).mean())}
    if lpips is not None:
        dev = next(lpips.parameters()).device
        with torch.no_grad():
            out["lpips"] = float(lpips(pred.to(dev), target.to(dev)).mean())
    return out, renders


def _icp_onto(pred, gt, seed: int):
    import trimesh

    pts = np.asarray(trimesh.sample.sample_surface(pred, 2000, seed=seed + 7)[0])
    matrix, _, _ = trimesh.registration.icp(pts, gt, max_iterations=30, scale=False, reflection=False)
    return pred.copy().apply_transform(matrix)


# ----- baselines -----------------------------------------------------------------------------------------------
def _silhouette(rgba: np.ndarray, c2w: torch.Tensor, fov_deg: float, distance: float):
    """Mask bbox in camera-plane coordinates at ``distance``: (mask, rows, cols, pixel size, x0, x1, y0, y1)."""
    from ..camera import fov_to_focal

    mask = rgba[..., 3] > 127
    if not mask.any():
        raise Zero123Error("the input view is empty: no silhouette")
    size = mask.shape[0]
    pix = distance / fov_to_focal(fov_deg, size)
    rows, cols = np.nonzero(mask)
    x0, x1 = (cols.min() - size / 2) * pix, (cols.max() + 1 - size / 2) * pix
    y0, y1 = (size / 2 - rows.max() - 1) * pix, (size / 2 - rows.min()) * pix
    return mask, rows, cols, pix, x0, x1, y0, y1


def _to_world(points_cam: np.ndarray, c2w: torch.Tensor) -> np.ndarray:
    m = c2w.double().numpy()
    return points_cam @ m[:3, :3].T + m[:3, 3]


def _project_colors(mesh, rgba: np.ndarray, c2w: torch.Tensor, fov_deg: float):
    """Per-vertex RGBA uint8 from the input view: each vertex takes the colour of the silhouette pixel nearest
    to its projection (perspective through the input camera)."""
    from scipy.ndimage import distance_transform_edt

    from ..camera import project_to_pixels, world_to_camera_points

    size = rgba.shape[0]
    p = world_to_camera_points(torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64), c2w.double())
    x, y, _ = project_to_pixels(p, fov_deg, size, min_depth=1e-6)
    col = np.clip(np.floor(x.numpy()), 0, size - 1).astype(int)
    row = np.clip(np.floor(y.numpy()), 0, size - 1).astype(int)
    mask = rgba[..., 3] > 127
    _, (ni, nj) = distance_transform_edt(~mask, return_indices=True)
    rgb = rgba[ni[row, col], nj[row, col], :3]
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)


def extruded_silhouette(rgba: np.ndarray, c2w: torch.Tensor, fov_deg: float, distance: float, max_cells: int = 96):
    """The input silhouette (alpha > 0.5) in the plane through the origin facing the camera, extruded along the
    viewing axis to a depth equal to its width (centred on the plane): a closed trimesh in the world, coloured
    by :func:`_project_colors`."""
    import torch.nn.functional as F

    from ..export.mesh import marching_cubes

    mask, rows, cols, pix, x0, x1, y0, y1 = _silhouette(rgba, c2w, fov_deg, distance)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = crop.shape
    s = min(1.0, max_cells / max(h, w))
    nh, nw = max(2, round(h * s)), max(2, round(w * s))
    small = F.interpolate(torch.from_numpy(crop.astype(np.float32))[None, None], (nh, nw), mode="area")[0, 0]
    plane = (small.numpy() > 0.5)[::-1].T                            # [x (cols), y (rows, upwards)]
    depth = (x1 - x0)
    nd = max(2, nw)
    vol = np.zeros((nw + 2, nh + 2, nd + 2), dtype=np.float32)
    vol[1:-1, 1:-1, 1:-1] = plane[:, :, None]
    cx, cy, cz = (x1 - x0) / nw, (y1 - y0) / nh, depth / nd          # cell sizes
    lo = np.array([x0 - 0.5 * cx, y0 - 0.5 * cy, -distance - depth / 2 - 0.5 * cz])
    hi = lo + np.array([(nw + 1) * cx, (nh + 1) * cy, (nd + 1) * cz])
    mesh = marching_cubes(vol, 0.5, lo, hi)
    mesh.vertices = _to_world(np.asarray(mesh.vertices), c2w)
    mesh.visual.vertex_colors = _project_colors(mesh, rgba, c2w, fov_deg)
    return mesh


def silhouette_sphere(rgba: np.ndarray, c2w: torch.Tensor, fov_deg: float, distance: float):
    """A sphere centred on the silhouette's bounding box (in the plane through the origin) with the box's larger
    side as diameter, coloured by :func:`_project_colors`."""
    import trimesh

    _, _, _, _, x0, x1, y0, y1 = _silhouette(rgba, c2w, fov_deg, distance)
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=max(x1 - x0, y1 - y0) / 2)
    mesh.vertices = _to_world(np.asarray(mesh.vertices) + [(x0 + x1) / 2, (y0 + y1) / 2, -distance], c2w)
    mesh.visual.vertex_colors = _project_colors(mesh, rgba, c2w, fov_deg)
    return mesh


# ----- the rows that run a reconstruction ------------------------------------------------------------------
def _model_mesh(model, input_rgba: np.ndarray, cfg: Eval3DConfig, out_dir: Path):
    """to3d on the input view; its model.ply mapped from the export frame into the ground truth's world."""
    from PIL import Image

    from ..pipelines.image_to_3d import to3d

    from ..loading import is_bundled_model

    # `--preset auto` as to3d picks it (evaluate_3d has resolved it already: the same rule)
    config = cfg.to3d_config(getattr(model, "device", None), bundled=is_bundled_model(model=model))
    # the row scores model.ply only (its mesh and vertex colours): the texture, turntable, preview and mid-run
    # checkpoints, which do not change it, are made as small and as few as the tiny preset's
    ex = config.export
    ex.texture_size, ex.video_frames, ex.video_size, ex.gif_frames, ex.gif_size, ex.preview_size = 64, 4, 32, 4, 32, 32
    config.checkpoint_every = config.steps
    res = to3d(Image.fromarray(input_rgba, "RGBA"), out_dir=out_dir, config=config,
               seed=cfg.seed, input_elevation=cfg.input_elevation, progress=False, model=model,
               representation=cfg.representation)
    return load_result_mesh(res.ply, cfg.input_azimuth), res.timings


def load_result_mesh(path, input_azimuth: float):
    """A to3d mesh file (export frame: front toward +Z) in the world of a dataset whose input camera was at
    ``input_azimuth`` degrees: the export frame is the same whatever azimuth to3d's own world used."""
    import trimesh

    from ..export.writers import from_export_frame

    return from_export_frame(trimesh.load(path, process=False), input_azimuth)


def _gt_views_mesh(gt: GroundTruth, cfg: Eval3DConfig, device):
    from ..export import MeshExtractionConfig, vertex_colors
    from ..fields import FieldConfig
    from .mesh_reconstruction import ReconstructionConfig, reconstruct_mesh
    from ..rendering.volume import RenderSettings

    rc = ReconstructionConfig()
    if cfg.preset == "tiny":  # test-sized, still far better than the baselines (tests/test_eval3d.py)
        rc.field = FieldConfig(radius=1.0, n_levels=5, log2_hashmap_size=13, base_resolution=8, per_level_scale=1.6,
                               mlp_width=32, mlp_hidden_layers=1)
        rc.render = RenderSettings(num_samples_per_ray=96)
        rc.num_views, rc.view_size, rc.steps, rc.rays_per_step = 24, 32, 100, 512
        rc.mesh = MeshExtractionConfig(resolution=48, coarse_resolution=24)
    if cfg.gt_views_steps is not None:
        rc.steps = cfg.gt_views_steps
    r = reconstruct_mesh(gt.mesh, rc, seed=cfg.seed, device=device)
    mesh = r.mesh
    dev = next(r.field.parameters()).device
    mesh.visual.vertex_colors = vertex_colors(mesh, lambda p: r.field.albedo((p * rc.object_radius).to(dev)))
    return mesh


# ----- the run -------------------------------------------------------------------------------------------------
def _select(manifest, cfg: Eval3DConfig):
    objs = manifest.objects_in(cfg.split)
    if not objs:
        raise Zero123Error(f"the dataset has no {cfg.split!r} objects")
    if cfg.objects is not None:
        by_id = {o.id: o for o in objs}
        missing = [i for i in cfg.objects if i not in by_id]
        if missing:
            raise Zero123Error(f"object {missing[0]!r} is not in the dataset's {cfg.split!r} split")
        objs = [by_id[i] for i in cfg.objects]
    if cfg.max_objects is not None:
        objs = objs[:cfg.max_objects]
    if cfg.shard is None:
        return objs
    shard = Shard.parse(cfg.shard)
    return [o for o in objs if shard.contains(o.id)]


def _read_cache(path: Path, key: dict) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d.get("rows", {}) if d.get("settings") == key else {}


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def _figure(out: Path, input_rgba: np.ndarray, gt: GroundTruth, views: Sequence[int], renders: Dict[str, np.ndarray]):
    """Rows: ground truth (input view first), then each method at the same held-out views."""
    from ..data.layout import rgba_to_tensor
    from ..export.writers import image_grid, write_png

    def rgb(x):
        return (rgba_to_tensor(x).add(1).div(2).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    blank = np.full((gt.size, gt.size, 3), 255, np.uint8)
    grid = [[rgb(input_rgba)] + [rgb(gt.rgba[i]) for i in views]]
    grid += [[blank] + [rgb(x) for x in r[:len(views)]] for r in renders.values()]
    return write_png(image_grid(grid), out)


def run_key(cfg: Eval3DConfig, checkpoint=None, device=None, model=None) -> Tuple[Eval3DConfig, dict]:
    """``(cfg, key)`` of a run: ``cfg`` with ``preset="auto"`` replaced by the preset to3d runs (the device the model
    is on, whether it is the bundled one), and the per-object cache key (``metrics.json``'s ``settings``)."""
    from ..loading import is_bundled_model

    key = _jsonable(cfg.cache_key())
    key["checkpoint"] = str(checkpoint) if checkpoint else "bundled"
    if cfg.preset == "auto":  # record the preset that runs, as to3d picks it
        cfg = cfg.resolved(device, bundled=is_bundled_model(checkpoint, model))
        key["preset"] = cfg.preset
    return cfg, key


def selected_objects(root, cfg: Eval3DConfig) -> list:
    """The ids of the objects ``cfg`` selects in the dataset at ``root``, in the order they run."""
    from ..data import layout

    return [o.id for o in _select(layout.read_manifest(root), cfg)]


def rows_done(out_dir, object_ids: Sequence[str], key: dict) -> int:
    """How many rows of ``object_ids`` are cached under ``out_dir`` with the settings ``key``."""
    return sum(len(_read_cache(Path(out_dir) / "objects" / i / "metrics.json", key)) for i in object_ids)


def evaluate_3d(root, out_dir, cfg: Optional[Eval3DConfig] = None, *, checkpoint=None, variant=None, device=None,
                dtype=None, model=None, lpips=None, progress: bool = True) -> dict:
    """Score the rows of ``cfg`` on the selected objects of the dataset at ``root``; write
    ``<out_dir>/eval3d.json`` and per-object ``objects/<id>/{metrics.json, figure.png, input.png}`` (+ the to3d
    run under ``objects/<id>/model/``). Returns the summary dict (also the JSON's content)."""
    from tqdm.auto import tqdm

    from ..data import layout
    from ..export.writers import atomic_write_bytes, write_png

    cfg = (cfg or Eval3DConfig()).validate()
    root, out_dir = Path(root), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise Zero123Error(f"--out {out_dir} exists and is not a folder")
    manifest = layout.read_manifest(root)
    objects = _select(manifest, cfg)
    if "model" in cfg.rows and not cfg.cached_only and model is None:
        from ..pipelines.image_to_3d import load_guidance_model

        model = load_guidance_model(checkpoint, variant=variant, device=device, dtype=dtype)
    rec_device = model.device if model is not None else (device or "cpu")
    cfg, key = run_key(cfg, checkpoint, model.device if model is not None else device, model)
    per_object: Dict[str, dict] = {}
    bar = tqdm(total=len(objects) * len(cfg.rows), desc="eval-3d", unit="run", disable=not progress)
    for entry in objects:
        odir = out_dir / "objects" / entry.id
        cache = odir / "metrics.json"
        rows = _read_cache(cache, key)
        todo = [r for r in cfg.rows if r not in rows]
        if cfg.cached_only or not todo:
            if rows:
                per_object[entry.id] = rows
            bar.update(len(cfg.rows))
            continue
        gt = load_ground_truth(root, manifest, entry, cfg.up)
        views = list(range(len(gt.rgba)))[:cfg.max_views]
        input_rgba, in_c2w = render_input_view(gt, cfg)
        write_png(input_rgba, odir / "input.png")
        gt_check, _ = view_metrics(gt.mesh, gt, views[:1])
        renders = {}
        for row in cfg.rows:
            bar.set_postfix(object=entry.id, row=row)
            if row in rows:
                bar.update(1)
                continue
            t0, to3d_timings = time.perf_counter(), {}
            try:
                if row == "model":
                    mesh, to3d_timings = _model_mesh(model, input_rgba, cfg, odir / "model")
                elif row == "gt_views":
                    mesh = _gt_views_mesh(gt, cfg, rec_device)
                elif row == "extrude":
                    mesh = extruded_silhouette(input_rgba, in_c2w, gt.fov_deg, cfg.input_distance)
                else:
                    mesh = silhouette_sphere(input_rgba, in_c2w, gt.fov_deg, cfg.input_distance)
                mesh = normalize_unit_cube(mesh)
                t1 = time.perf_counter()
                if cfg.icp:
                    mesh = _icp_onto(mesh, gt.mesh, cfg.seed)
                m = shape_metrics(mesh, gt.mesh, cfg.points, cfg.iou_resolution, cfg.fscore_thresholds, cfg.seed)
                vm, renders[row] = view_metrics(mesh, gt, views, lpips)
                m.update(vm, faces=int(len(mesh.faces)), gt_rerender_psnr=gt_check["psnr"])
                # wall seconds of the row (not a metric: for planning runs): making the mesh, scoring it, and
                # the model row's to3d stages (train_s, mesh_s, ...)
                m["seconds"] = {"build": t1 - t0, "score": time.perf_counter() - t1,
                                **{k: float(v) for k, v in to3d_timings.items()}}
            except Zero123Error as exc:  # an empty reconstruction is a result (a failure), not a crash
                m = {"error": str(exc)}
            rows[row] = m
            atomic_write_bytes(cache, (json.dumps({"settings": key, "rows": rows}, indent=1) + "\n").encode())
            bar.update(1)
        per_object[entry.id] = rows
        if renders:
            _figure(odir / "figure.png", input_rgba, gt, views[:cfg.figure_views], renders)
    bar.close()
    summary = {"settings": key, "rows": list(cfg.rows), "objects_selected": len(objects),
               "objects_scored": len(per_object), "summary": summarize(per_object, cfg.rows),
               "objects": per_object}
    if cfg.shard is None:
        atomic_write_bytes(out_dir / "eval3d.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def summarize(per_object: Dict[str, dict], rows: Sequence[str]) -> dict:
    """Per row and metric: mean, standard error of the mean and count over the objects (failures counted)."""
    out = {}
    for row in rows:
        res = [o[row] for o in per_object.values() if row in o]
        ok = [r for r in res if "error" not in r]
        d = {"n": len(ok), "failed": len(res) - len(ok)}
        for k in METRICS:
            vals = np.array([r[k] for r in ok if k in r], dtype=np.float64)
            if len(vals):
                se = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
                d[k] = {"mean": float(vals.mean()), "se": se}
        secs = [r["seconds"]["build"] + r["seconds"]["score"] for r in ok if "seconds" in r]
        if secs:  # mean wall seconds of the row an object (results cached before session 20 have none)
            d["seconds"] = float(np.mean(secs))
        out[row] = d
    return out


def paired_comparison(base: Dict[str, dict], other: Dict[str, dict], row: str = "model", other_row: str = "model",
                      metrics: Sequence[str] = ("chamfer", "iou", "f@0.1", "psnr")) -> dict:
    """``other``'s ``other_row`` against ``base``'s ``row`` on the objects both scored (``objects`` dicts of two
    :func:`evaluate_3d` summaries; failed runs left out): per metric the mean of each, the paired difference
    ``other - base`` with its standard error (:func:`zero123.evaluation.breakdown.paired_difference`) and
    ``wins``, the objects where ``other`` is strictly better (lower for chamfer and lpips, higher otherwise)."""
    from .breakdown import paired_difference, wins

    ids = [i for i in base if i in other and "error" not in base[i].get(row, {"error": 1})
           and "error" not in other[i].get(other_row, {"error": 1})]
    pairs = [{"base": base[i][row], "other": other[i][other_row]} for i in ids]
    out = {"n": len(ids), "objects": ids, "metrics": {}}
    for k in metrics:
        sel = {"pairs": [p for p in pairs if k in p["base"] and k in p["other"]]}
        if not sel["pairs"]:
            continue
        mean, se = paired_difference(sel, "other", "base", k)
        lower = k in ("chamfer", "lpips")
        out["metrics"][k] = {"base": float(np.mean([p["base"][k] for p in sel["pairs"]])),
                             "other": float(np.mean([p["other"][k] for p in sel["pairs"]])),
                             "delta": mean, "se": se, "n": len(sel["pairs"]),
                             "wins": wins(sel, "base", "other", k) if lower else wins(sel, "other", "base", k)}
    return out


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table (mean +- standard error over objects)."""
    s = summary["summary"]
    cols = [k for k in METRICS if any(k in s[r] for r in s)]
    arrows = {"chamfer": "v", "lpips": "v"}
    head = f"{'row':<10}{'n':>4}" + "".join(f"{k + ' ' + arrows.get(k, '^'):>17}" for k in cols)
    lines = [head, "-" * len(head)]
    for row, d in s.items():
        cells = "".join(f"{d[k]['mean']:>9.4f} +-{d[k]['se']:<6.4f}" if k in d else f"{'-':>17}" for k in cols)
        fail = f"  ({d['failed']} failed)" if d["failed"] else ""
        lines.append(f"{row:<10}{d['n']:>4}{cells}{fail}")
    lines.append(f"{summary['objects_scored']} of {summary['objects_selected']} objects; no alignment"
                 if not summary["settings"].get("icp") else
                 f"{summary['objects_scored']} of {summary['objects_selected']} objects; ICP-aligned")
    timed = [f"{row} {d['seconds']:.1f}" for row, d in s.items() if "seconds" in d]
    if timed:
        lines.append("wall seconds an object: " + ", ".join(timed))
    return "\n".join(lines)
