"""Render a multi-view dataset (Objaverse / Zero123 style) from object sources, on CPU, with all cores.

Each object is normalised to the unit cube (bounding box centred at the origin, largest side 1), then rendered
from ``views_per_object`` random orbit cameras looking at the origin: azimuth uniform in ``azimuth_range``,
elevation in ``elevation_range`` (uniform over the sphere's area, i.e. sin(elevation) uniform), distance uniform
in ``distance_range``, one fixed vertical field of view. Lighting is randomised per object and fixed in the
world for all its views (a directional light at random azimuth / elevation, random ambient fraction), so the
views are consistent photos of one lit object. Output follows :mod:`zero123.data.layout`.

Defaults follow Zero123's Blender renders of Objaverse: 256 px, 12 views, 35 mm lens on a 32 mm sensor
(fov 49.1 degrees), distance 1.5 .. 2.2.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..camera import camera_to_world, sphere_band_elevation
from ..errors import Zero123Error
from .layout import (CAMERA_EXT, IMAGE_EXT, MANIFEST_NAME, Manifest, ObjectEntry, SkippedEntry, _atomic_write_bytes,
                     check_object_id, write_manifest, write_view)
from .objects import ObjectSource
from .shards import Shard

__all__ = ["DatasetRenderSettings", "normalize_to_unit_cube", "sample_view_cameras", "render_object_views",
           "render_object", "assign_splits", "render_dataset", "RENDER_STATS_NAME"]

#: Timing of a render (``elapsed_s``, ``views_per_s``, ``workers``, ``shard``), beside ``manifest.json``; kept out
#: of the manifest so that the manifest depends only on the inputs (a merged set of shards equals a whole render).
RENDER_STATS_NAME = "render_stats.json"


@dataclass
class DatasetRenderSettings:
    """Dataset render settings. Angles in degrees, distances in world units (object max extent = 1)."""

    image_size: int = 256
    views_per_object: int = 12
    fov_deg: float = 49.1
    elevation_range: Tuple[float, float] = (-20.0, 70.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    distance_range: Tuple[float, float] = (1.5, 2.2)
    ambient_range: Tuple[float, float] = (0.3, 0.6)
    light_elevation_range: Tuple[float, float] = (15.0, 75.0)
    samples: int = 2  # supersampling per axis (anti-aliased edges and alpha)
    seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.0

    def validate(self) -> "DatasetRenderSettings":
        def rng_ok(name, r, lo=-math.inf, hi=math.inf):
            if len(r) != 2 or not (lo <= r[0] <= r[1] <= hi) or not all(map(math.isfinite, r)):
                raise Zero123Error(f"{name} {tuple(r)} must be two finite numbers lo <= hi within [{lo}, {hi}]")

        if not (isinstance(self.image_size, int) and 8 <= self.image_size <= 4096):
            raise Zero123Error(f"image size {self.image_size} must be an integer in [8, 4096]")
        if not (isinstance(self.views_per_object, int) and self.views_per_object >= 1):
            raise Zero123Error(f"views per object must be >= 1, got {self.views_per_object}")
        if not (1.0 <= self.fov_deg <= 120.0):
            raise Zero123Error(f"fov {self.fov_deg} deg must be in [1, 120]")
        rng_ok("elevation range", self.elevation_range, -90.0, 90.0)
        rng_ok("azimuth range", self.azimuth_range)
        rng_ok("distance range", self.distance_range, 1e-3)
        rng_ok("ambient range", self.ambient_range, 0.0, 1.0)
        rng_ok("light elevation range", self.light_elevation_range, -90.0, 90.0)
        if not (isinstance(self.samples, int) and 1 <= self.samples <= 8):
            raise Zero123Error(f"samples {self.samples} must be an integer in [1, 8]")
        if not (0 <= self.test_fraction < 1 and 0 <= self.val_fraction < 1
                and self.test_fraction + self.val_fraction < 1):
            raise Zero123Error(f"test/val fractions ({self.test_fraction}, {self.val_fraction}) must be in [0, 1) "
                               "and sum to less than 1")
        # a unit-cube object (half-diagonal 0.866) must fit in the view at the closest distance
        return self


def normalize_to_unit_cube(mesh):
    """``PreparedMesh`` (or trimesh) -> ``PreparedMesh`` with its bounding box centred at the origin and its
    largest side 1. ``Zero123Error`` for degenerate (zero-size) objects."""
    from ..rendering.mesh_rasterizer import PreparedMesh, prepare_mesh

    pm = mesh if isinstance(mesh, PreparedMesh) else prepare_mesh(mesh)
    bounds = pm.bounds.double()
    extent = float((bounds[1] - bounds[0]).max())
    if not math.isfinite(extent) or extent <= 1e-9:
        raise Zero123Error(f"degenerate mesh (largest bounding-box side {extent:g})")
    centre = ((bounds[0] + bounds[1]) / 2).numpy()
    return pm.transformed(1.0 / extent, -centre)


def _object_rng(seed: int, object_id: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{object_id}".encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, h])


def sample_view_cameras(rng: np.random.Generator, settings: DatasetRenderSettings, n: Optional[int] = None):
    """Random orbit cameras: (elevation deg [n], azimuth deg [n], distance [n], c2w [n,4,4])."""
    n = settings.views_per_object if n is None else n
    elev = sphere_band_elevation(rng.random(n), settings.elevation_range)  # sin(elevation) uniform
    azim = rng.uniform(*settings.azimuth_range, n)
    dist = rng.uniform(*settings.distance_range, n)
    c2w = camera_to_world(torch.from_numpy(elev), torch.from_numpy(azim), torch.from_numpy(dist))
    return elev, azim, dist, c2w


def sample_lighting(rng: np.random.Generator, settings: DatasetRenderSettings):
    """(unit world direction towards the light [3], ambient fraction)."""
    az = math.radians(rng.uniform(-180, 180))
    lo, hi = (math.sin(math.radians(x)) for x in settings.light_elevation_range)
    el = math.asin(rng.uniform(lo, hi))  # kept in radians (same draws as sphere_band_elevation's "area" rule)
    direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return direction, float(rng.uniform(*settings.ambient_range))


def render_object_views(mesh, object_id: str, settings: DatasetRenderSettings):
    """Normalise and render one object. Returns (rgba uint8 [N,H,W,4], c2w [N,4,4]).

    Cameras and lighting are drawn from a generator seeded by (settings.seed, object_id), so the result does not
    depend on worker scheduling. ``Zero123Error`` if the mesh is degenerate or renders empty.
    """
    from ..rendering.mesh_rasterizer import render_mesh

    pm = normalize_to_unit_cube(mesh)
    rng = _object_rng(settings.seed, object_id)
    _, _, _, c2w = sample_view_cameras(rng, settings)
    light, ambient = sample_lighting(rng, settings)
    out = render_mesh(pm, c2w.float(), settings.fov_deg, settings.image_size, light_dir=light, ambient=ambient,
                      samples=settings.samples)
    coverage = out["rgba"][..., 3].flatten(1).sum(1)
    if bool((coverage < 1.0).any()):
        raise Zero123Error("mesh renders empty from some views (degenerate or zero-area faces)")
    rgba = (out["rgba"].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    return rgba, c2w.float()


def _clear_object_dir(d: Path) -> None:
    if d.is_dir():
        for p in d.iterdir():
            if p.is_file() and p.suffix in (IMAGE_EXT, CAMERA_EXT) and p.stem.isdigit():
                p.unlink()


def render_object(source: ObjectSource, root: Union[str, os.PathLike], settings: DatasetRenderSettings) -> int:
    """Load, render and write one object's views under ``root/<id>/``. Returns the number of views."""
    check_object_id(source.id)
    mesh = source.load()
    rgba, c2w = render_object_views(mesh, source.id, settings)
    obj_dir = Path(root) / source.id
    _clear_object_dir(obj_dir)
    obj_dir.mkdir(parents=True, exist_ok=True)
    for i in range(len(rgba)):
        write_view(root, source.id, i, rgba[i], c2w[i])
    return len(rgba)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, Zero123Error):
        return msg[:300]
    return f"{type(exc).__name__}: {msg}"[:300]


def _job(args):
    source, root, settings = args
    try:
        n = render_object(source, root, settings)
        return source, n, None
    except Exception as exc:  # a bad mesh must never stop the run
        shutil.rmtree(Path(root) / source.id, ignore_errors=True)
        return source, 0, _one_line(exc)


def _init_worker():
    torch.set_num_threads(1)


def assign_splits(ids: Sequence[str], seed: int, test_fraction: float, val_fraction: float = 0.0) -> Dict[str, str]:
    """Deterministic held-out split by object.

    Objects are ranked by a hash of (seed, id); the first ``round(test_fraction * n)`` are ``test`` (at least one
    when ``test_fraction > 0`` and n >= 2), the next ``round(val_fraction * n)`` are ``val`` (at least one when
    ``val_fraction > 0`` and n >= 3), the rest ``train``. An object's rank does not depend on the others, so
    adding objects moves few existing ones.
    """
    n = len(ids)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"split:{seed}:{i}".encode()).hexdigest())
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and n >= 2:
        n_test = max(n_test, 1)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 3:
        n_val = max(n_val, 1)
    n_test = min(n_test, max(n - 1, 0))
    n_val = min(n_val, max(n - 1 - n_test, 0))
    out = {}
    for k, i in enumerate(ranked):
        out[i] = "test" if k < n_test else ("val" if k < n_test + n_val else "train")
    return out


def render_dataset(sources: Sequence[ObjectSource], root: Union[str, os.PathLike],
                   settings: Optional[DatasetRenderSettings] = None, workers: Optional[int] = None,
                   progress: bool = True, overwrite: bool = False,
                   skipped: Optional[List[SkippedEntry]] = None, shard: Optional[Shard] = None) -> Manifest:
    """Render ``sources`` into ``root`` (layout of :mod:`zero123.data.layout`) and write the manifest.

    ``workers``: processes (default: all cores; 1 renders in this process). Objects that fail to load or render
    are listed in the manifest's ``skipped`` with a one-line reason. ``Zero123Error`` if ``root`` already holds a
    dataset and ``overwrite`` is false, or if object ids repeat. Returns the manifest; the timing goes to
    ``root/render_stats.json``.

    ``shard``: render only the objects of that shard (:mod:`zero123.data.shards`). The splits are still assigned
    over ALL ``sources``, so an object's split does not depend on the number of shards; the manifest lists the
    shard's objects and records, under ``settings["shard"]``, each entry's position in ``sources``, from which
    ``zero123.data.merge.merge_datasets`` rebuilds the manifest of the whole render exactly.
    """
    from tqdm.auto import tqdm

    settings = (settings or DatasetRenderSettings()).validate()
    root = Path(root)
    if (root / MANIFEST_NAME).exists() and not overwrite:
        raise Zero123Error(f"{root} already holds a dataset ({MANIFEST_NAME}); pass --overwrite to replace it")
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise Zero123Error(f"duplicate object ids: {', '.join(dup)}")
    for i in ids:
        check_object_id(i)
    if not sources:
        raise Zero123Error("no objects to render: give --procedural N, --meshes PATH or --pybullet")
    root.mkdir(parents=True, exist_ok=True)
    splits = assign_splits(ids, settings.seed, settings.test_fraction, settings.val_fraction)
    mine = [k for k, s in enumerate(sources) if shard is None or shard.contains(s.id)]
    workers = max(1, int(workers or os.cpu_count() or 1))
    workers = max(1, min(workers, len(mine)))
    jobs = [(sources[k], str(root), settings) for k in mine]
    results: Dict[str, Tuple[int, Optional[str]]] = {}
    t0 = time.perf_counter()
    views = 0
    bar = tqdm(total=len(jobs), unit="obj", desc="rendering", disable=not progress)
    try:
        if workers == 1:
            torch_threads = torch.get_num_threads()
            it = map(_job, jobs)
        else:
            # fork (as torch's DataLoader does) starts workers in milliseconds; spawn where fork is unavailable
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_init_worker)
            it = pool.imap_unordered(_job, jobs, chunksize=1)
        for source, n, err in it:
            results[source.id] = (n, err)
            views += n
            bar.update(1)
            bar.set_postfix(views_per_s=f"{views / max(time.perf_counter() - t0, 1e-9):.1f}",
                            skipped=sum(1 for v in results.values() if v[1]))
        if workers > 1:
            pool.close()
            pool.join()
        else:
            torch.set_num_threads(torch_threads)
    except BaseException:
        if workers > 1:
            pool.terminate()
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    # entries given by the caller come first (position -1); in a sharded render, shard 0 holds them
    skip = list(skipped or []) if shard is None or shard.index == 0 else []
    objects, obj_pos, skip_pos = [], [], [-1] * len(skip)
    for k in mine:
        s = sources[k]
        n, err = results[s.id]
        if err is None:
            objects.append(ObjectEntry(id=s.id, split=splits[s.id], num_views=n, source=s.description))
            obj_pos.append(k)
        else:
            skip.append(SkippedEntry(path=s.description, reason=err))
            skip_pos.append(k)
    st = asdict(settings)
    if shard is not None:
        st["shard"] = {"index": shard.index, "count": shard.count, "num_sources": len(sources),
                       "object_positions": obj_pos, "skipped_positions": skip_pos}
    manifest = Manifest(image_size=settings.image_size, fov_deg=settings.fov_deg,
                        views_per_object=settings.views_per_object, objects=objects, skipped=skip, settings=st)
    write_manifest(root, manifest)
    stats = {"elapsed_s": round(elapsed, 3), "views_per_s": round(views / max(elapsed, 1e-9), 3),
             "objects_per_s": round(len(mine) / max(elapsed, 1e-9), 3), "objects": len(mine), "views": views,
             "workers": workers, "shard": str(shard) if shard is not None else None}
    _atomic_write_bytes(root / RENDER_STATS_NAME, (json.dumps(stats) + "\n").encode())
    return manifest
