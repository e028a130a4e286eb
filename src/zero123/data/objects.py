"""Object sources for multi-view datasets: a procedural generator, mesh files, and the meshes shipped in pybullet.

* :func:`procedural_object` builds a varied object from primitives (boxes, cylinders, cones, spheres, tori,
  surfaces of revolution) with a baked UV texture atlas (solid colours, stripes, checkers, dots, gradients,
  one-sided markers), deterministic per seed. Several families (creatures, vehicles, vases/mugs, furniture,
  houses, trees, abstract clusters) are built so that most objects are asymmetric: the back differs from the
  front (a face, a handle, a door, a one-sided marker), which a view-synthesis model must learn.
* :func:`mesh_file_sources` collects OBJ / GLB / GLTF / PLY / STL / OFF files from paths, folders and globs.
* :func:`pybullet_sources` lists the object meshes in the optional ``pybullet`` wheel (``pip install
  zero123[data]``): ~20 named objects (textured duck, soccer ball, checker sphere, torus, mug, ...) and the
  1000 ``random_urdfs`` shapes (coloured as their URDF says).

Every source is an :class:`ObjectSource` (picklable, so worker processes can load it); ``load()`` returns a
``trimesh.Trimesh`` or ``trimesh.Scene`` in the z-up world of :mod:`zero123.camera`, not yet normalised.
"""

from __future__ import annotations

import glob as _glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..camera import Y_UP_TO_Z_UP
from ..errors import Zero123Error
from .procedural import PROCEDURAL_KINDS, procedural_object  # noqa: F401  (re-exported)

__all__ = [
    "ObjectSource", "PROCEDURAL_KINDS", "procedural_object", "procedural_sources", "mesh_file_sources",
    "pybullet_available", "pybullet_data_path", "pybullet_sources", "MESH_EXTENSIONS", "load_mesh_file",
]

#: File extensions accepted as meshes (trimesh loaders).
MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")


# ================================================================================================ sources
@dataclass(frozen=True)
class ObjectSource:
    """Where an object comes from.

    ``kind``: ``"procedural"`` (``ref`` = seed as a string), ``"file"`` (``ref`` = path) or ``"pybullet"``
    (``ref`` = path inside the pybullet data folder). ``up``: the file's up axis (``"y"`` for glTF and most
    OBJ exports, converted to z-up as Blender's importer does; ``"z"`` for z-up files). ``color``: RGB in [0,1]
    applied to an untextured, uncoloured mesh (pybullet URDF colours); ``scale``/``rpy``: the URDF's visual
    transform (xyz scale, roll-pitch-yaw radians), applied before the up-axis conversion.
    """

    id: str
    kind: str
    ref: str
    up: str = "z"
    color: Optional[Tuple[float, float, float]] = None
    scale: Optional[Tuple[float, float, float]] = None
    rpy: Optional[Tuple[float, float, float]] = None

    @property
    def description(self) -> str:
        """Human-readable origin, stored as ``source`` in the manifest."""
        if self.kind == "procedural":
            return f"procedural:{self.ref}"
        if self.kind == "pybullet":
            return f"pybullet:{self.ref}"
        return str(self.ref)

    def load(self):
        """The object as a ``trimesh.Trimesh`` / ``trimesh.Scene`` (z-up). Raises ``Zero123Error`` if unreadable."""
        if self.kind == "procedural":
            return procedural_object(int(self.ref))
        if self.kind == "pybullet":
            path = Path(pybullet_data_path()) / self.ref
        elif self.kind == "file":
            path = Path(self.ref)
        else:
            raise Zero123Error(f"unknown object source kind {self.kind!r}")
        return load_mesh_file(path, up=self.up, color=self.color, scale=self.scale, rpy=self.rpy)


def _rotation_xyz(rpy: Sequence[float]) -> np.ndarray:
    """URDF roll-pitch-yaw (radians, fixed axes x then y then z) as a 3x3 rotation."""
    r, p, y = rpy
    cx, sx, cy, sy, cz, sz = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def load_mesh_file(path, up: str = "y", color=None, scale=None, rpy=None):
    """Load a mesh file into the z-up world. See :class:`ObjectSource` for ``up``, ``color``, ``scale``, ``rpy``.

    Returns a ``trimesh.Trimesh`` or ``trimesh.Scene``. Raises ``Zero123Error`` (one line) if the file is
    missing, unreadable or has no triangles.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise Zero123Error(f"{path}: no such mesh file")
    if up not in ("y", "z"):
        raise Zero123Error(f"up axis must be 'y' or 'z', got {up!r}")
    try:
        obj = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Zero123Error(f"{path}: cannot read mesh ({msg[:200]})") from None
    if isinstance(obj, trimesh.Scene):
        geoms = [g for g in obj.dump(concatenate=False) if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if not geoms:
            raise Zero123Error(f"{path}: no triangles in the file")
        obj = trimesh.Scene(geoms) if len(geoms) > 1 else geoms[0]
    elif not isinstance(obj, trimesh.Trimesh):
        raise Zero123Error(f"{path}: not a triangle mesh ({type(obj).__name__})")
    elif len(obj.faces) == 0:
        raise Zero123Error(f"{path}: no triangles in the file")
    geoms = obj.dump(concatenate=False) if isinstance(obj, trimesh.Scene) else [obj]
    transform = np.eye(4)
    if scale is not None:
        transform = np.diag([*map(float, scale), 1.0]) @ transform
    if rpy is not None:
        rot = np.eye(4)
        rot[:3, :3] = _rotation_xyz(rpy)
        transform = rot @ transform
    if up == "y":
        transform = Y_UP_TO_Z_UP @ transform
    out = []
    for g in geoms:
        g = g.copy()
        g.apply_transform(transform)
        if color is not None and getattr(g.visual, "kind", None) in (None, "texture") and not _has_image(g):
            rgba = np.append(np.asarray(color) * 255, 255).astype(np.uint8)
            g.visual = trimesh.visual.ColorVisuals(g, face_colors=rgba)
        out.append(g)
    return out[0] if len(out) == 1 else trimesh.Scene(out)


def _has_image(g) -> bool:
    mat = getattr(g.visual, "material", None)
    return any(getattr(mat, a, None) is not None for a in ("image", "baseColorTexture"))


def procedural_sources(count: int, seed: int = 0) -> List[ObjectSource]:
    """``count`` procedural objects; object ``i`` uses seed ``seed * 1_000_003 + i`` and id ``proc_<seed>_<i>``."""
    if count < 0:
        raise Zero123Error(f"procedural object count must be >= 0, got {count}")
    return [ObjectSource(id=f"proc_{seed}_{i:05d}", kind="procedural", ref=str(seed * 1_000_003 + i))
            for i in range(count)]


def mesh_file_sources(patterns: Iterable[str], up: str = "y") -> List[ObjectSource]:
    """Mesh files from paths, folders (searched recursively) and glob patterns, sorted, de-duplicated.

    Object ids are the sanitised file stems, made unique with the parent folder name or a counter.
    Raises ``Zero123Error`` when a pattern matches nothing.
    """
    from .layout import sanitize_object_id

    files: List[Path] = []
    for pat in patterns:
        p = Path(os.path.expanduser(str(pat)))
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in MESH_EXTENSIONS)
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(q) for q in _glob.glob(str(p), recursive=True)
                           if Path(q).is_file() and Path(q).suffix.lower() in MESH_EXTENSIONS)
        if not found:
            raise Zero123Error(f"no mesh files ({', '.join(MESH_EXTENSIONS)}) match {pat!r}")
        files.extend(found)
    seen_paths, sources, used = set(), [], set()
    for f in files:
        key = str(f.resolve())
        if key in seen_paths:
            continue
        seen_paths.add(key)
        base = sanitize_object_id(f.stem)
        oid = base
        if oid in used:
            oid = sanitize_object_id(f"{f.parent.name}_{f.stem}")
        n = 1
        while oid in used:
            oid = f"{base}_{n}"
            n += 1
        used.add(oid)
        sources.append(ObjectSource(id=oid, kind="file", ref=str(f), up=up))
    return sources


# ----------------------------------------------------------------------------------------------- pybullet
def pybullet_available() -> bool:
    """Whether the optional ``pybullet`` package (and its ``pybullet_data`` meshes) is installed."""
    try:
        import pybullet_data  # noqa: F401
    except ImportError:
        return False
    return True


def pybullet_data_path() -> str:
    """Folder of the meshes shipped in the pybullet wheel; ``Zero123Error`` if pybullet is not installed."""
    try:
        import pybullet_data
    except ImportError:
        raise Zero123Error("pybullet is not installed: `pip install 'zero123[data]'` (or `pip install pybullet`) "
                           "to use its meshes") from None
    return pybullet_data.getDataPath()


#: Curated object-like meshes in pybullet_data: (id, path, up axis, URDF colour or None).
_PYBULLET_NAMED = [
    ("duck", "duck.obj", "y", None),
    ("soccerball", "soccerball.obj", "z", None),
    ("checker_sphere", "textured_sphere_smooth.obj", "z", None),
    ("torus", "torus/torus_textured.obj", "y", None),
    ("cube", "cube.obj", "z", None),
    ("mug", "objects/mug.obj", "z", (1.0, 0.2, 0.2)),
    ("bunny", "bunny.obj", "y", (0.85, 0.75, 0.6)),
    ("teddy", "teddy2_VHACD_CHs.obj", "y", (1.0, 0.4, 0.4)),
    ("lego", "lego/lego.obj", "y", (1.0, 1.0, 0.4)),
    ("tray", "tray/tray_textured.obj", "z", None),
    ("jenga", "jenga/jenga.obj", "z", None),
    ("domino", "domino/domino.obj", "z", None),
    ("shape_sorter", "toys/shape_sorter.obj", "z", None),
    ("concave_box", "toys/concave_box.obj", "z", None),
    ("toy_cylinder", "toys/cylinder.obj", "z", None),
    ("toy_prism", "toys/prism.obj", "z", None),
    ("traffic_cone", "racecar/meshes/cone.obj", "z", (1.0, 0.45, 0.1)),
    ("wheel", "racecar/meshes/left_front_wheel.obj", "z", (0.15, 0.15, 0.15)),
    ("stone", "stone.obj", "z", (0.55, 0.55, 0.5)),
]

_URDF_COLOR = re.compile(r'<color\s+rgba="([^"]+)"')
_URDF_SCALE = re.compile(r'<mesh\s+filename="[^"]+"\s+scale="([^"]+)"')


def pybullet_sources(named: bool = True, random_urdfs: bool = True,
                     limit: Optional[int] = None) -> List[ObjectSource]:
    """Object meshes from ``pybullet_data``: the curated named objects and/or the ``random_urdfs`` shapes
    (``random_urdfs/NNN/NNN.obj``, coloured from ``NNN.urdf``). ``limit`` keeps the first N. Ids are
    ``pybullet_<name>`` and ``pybullet_random_NNN``. ``Zero123Error`` if pybullet is not installed."""
    root = Path(pybullet_data_path())
    out: List[ObjectSource] = []
    if named:
        for name, rel, up, color in _PYBULLET_NAMED:
            if (root / rel).is_file():
                out.append(ObjectSource(id=f"pybullet_{name}", kind="pybullet", ref=rel, up=up, color=color))
    if random_urdfs:
        for d in sorted((root / "random_urdfs").glob("[0-9]*")):
            obj = d / f"{d.name}.obj"
            if not obj.is_file():
                continue
            color = None
            urdf = d / f"{d.name}.urdf"
            if urdf.is_file():
                m = _URDF_COLOR.search(urdf.read_text(errors="replace"))
                if m:
                    try:
                        color = tuple(float(x) for x in m.group(1).split()[:3])
                    except ValueError:
                        color = None
            out.append(ObjectSource(id=f"pybullet_random_{d.name}", kind="pybullet",
                                    ref=f"random_urdfs/{d.name}/{d.name}.obj", up="z", color=color))
    return out[:limit] if limit is not None else out
