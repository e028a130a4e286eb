"""On-disk layout of a multi-view dataset (the contract between ``zero123 render-dataset`` and training/eval).

::

    ROOT/manifest.json
    ROOT/<object_id>/000.png   RGBA 8-bit PNG, the object on a transparent background, image_size x image_size
    ROOT/<object_id>/000.npy   3x4 float32 world-to-camera RT of that view (zero123.camera.save_zero123_rt;
    ROOT/<object_id>/001.png   read back as a 4x4 camera-to-world with zero123.camera.load_zero123_rt)
    ...

``manifest.json``::

    {"version": 1, "image_size": 256, "fov_deg": 49.1, "views_per_object": 12,
     "objects": [{"id": "proc_00000", "split": "train"|"val"|"test", "num_views": 12, "source": "..."}, ...],
     "skipped": [{"path": "...", "reason": "..."}, ...],
     "settings": {...}}                       # optional: the render settings, informative only

Views are numbered ``000 .. num_views-1`` (3 digits, more digits above 999). Cameras follow
:mod:`zero123.camera` (z-up world, OpenGL camera axes, orbit cameras looking at the origin; the object is
normalised to the unit cube: centred at the origin, largest bounding-box side 1). ``fov_deg`` is the vertical
field of view in degrees, the same for all views. Object ids use only ``[A-Za-z0-9_.-]``. The split is by
object: all views of an object share its split.

Readers here validate and raise one-line ``Zero123Error`` s; writers are atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..camera import load_zero123_rt, save_zero123_rt
from ..errors import Zero123Error

PathLike = Union[str, os.PathLike]

#: Layout version written into ``manifest.json``.
LAYOUT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
IMAGE_EXT = ".png"
CAMERA_EXT = ".npy"
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def view_stem(index: int) -> str:
    """File stem of view ``index``: ``000``, ``001``, ... (at least 3 digits)."""
    if index < 0:
        raise Zero123Error(f"view index must be >= 0, got {index}")
    return f"{index:03d}"


def check_object_id(object_id: str) -> str:
    """Return ``object_id`` if it is a safe folder name (``[A-Za-z0-9_.-]+``, not ``.``/``..``), else raise."""
    if not isinstance(object_id, str) or not _ID_RE.match(object_id) or object_id in (".", ".."):
        raise Zero123Error(f"invalid object id {object_id!r}: use letters, digits, '_', '.', '-'")
    return object_id


def sanitize_object_id(name: str) -> str:
    """Turn any name (e.g. a file stem) into a valid object id."""
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("._") or "object"
    return s


def image_path(root: PathLike, object_id: str, index: int) -> Path:
    """``ROOT/<object_id>/<index:03d>.png``."""
    return Path(root) / check_object_id(object_id) / (view_stem(index) + IMAGE_EXT)


def camera_path(root: PathLike, object_id: str, index: int) -> Path:
    """``ROOT/<object_id>/<index:03d>.npy``."""
    return Path(root) / check_object_id(object_id) / (view_stem(index) + CAMERA_EXT)


@dataclass
class ObjectEntry:
    """One rendered object: ``id`` (folder name), ``split`` (train/val/test), ``num_views``, ``source``."""

    id: str
    split: str
    num_views: int
    source: str = ""


@dataclass
class SkippedEntry:
    """An input that could not be rendered, and why (one line)."""

    path: str
    reason: str


@dataclass
class Manifest:
    """``manifest.json`` as a dataclass. ``fov_deg`` vertical, degrees; ``image_size`` pixels (square)."""

    image_size: int
    fov_deg: float
    views_per_object: int
    objects: List[ObjectEntry] = field(default_factory=list)
    skipped: List[SkippedEntry] = field(default_factory=list)
    version: int = LAYOUT_VERSION
    settings: dict = field(default_factory=dict)

    def objects_in(self, split: Union[str, Sequence[str]]) -> List[ObjectEntry]:
        """Objects of one split (or of several)."""
        splits = (split,) if isinstance(split, str) else tuple(split)
        for s in splits:
            if s not in SPLITS:
                raise Zero123Error(f"unknown split {s!r}: use one of {', '.join(SPLITS)}")
        return [o for o in self.objects if o.split in splits]

    def to_json(self) -> dict:
        d = {"version": self.version, "image_size": self.image_size, "fov_deg": self.fov_deg,
             "views_per_object": self.views_per_object, "objects": [asdict(o) for o in self.objects],
             "skipped": [asdict(s) for s in self.skipped]}
        if self.settings:
            d["settings"] = self.settings
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise Zero123Error(f"{where}: expected a JSON object")
        version = d.get("version")
        if version != LAYOUT_VERSION:
            raise Zero123Error(f"{where}: unsupported layout version {version!r} (this zero123 reads {LAYOUT_VERSION})")
        try:
            image_size = int(d["image_size"])
            fov = float(d["fov_deg"])
            vpo = int(d["views_per_object"])
            objects = [ObjectEntry(id=str(o["id"]), split=str(o["split"]), num_views=int(o["num_views"]),
                                   source=str(o.get("source", ""))) for o in d.get("objects", [])]
            skipped = [SkippedEntry(path=str(s["path"]), reason=str(s["reason"])) for s in d.get("skipped", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise Zero123Error(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        if image_size <= 0 or not (0 < fov < 180) or vpo <= 0:
            raise Zero123Error(f"{where}: bad image_size/fov_deg/views_per_object ({image_size}, {fov}, {vpo})")
        seen = set()
        for o in objects:
            check_object_id(o.id)
            if o.split not in SPLITS:
                raise Zero123Error(f"{where}: object {o.id!r} has unknown split {o.split!r}")
            if o.num_views <= 0:
                raise Zero123Error(f"{where}: object {o.id!r} has num_views {o.num_views}")
            if o.id in seen:
                raise Zero123Error(f"{where}: duplicate object id {o.id!r}")
            seen.add(o.id)
        return cls(image_size=image_size, fov_deg=fov, views_per_object=vpo, objects=objects, skipped=skipped,
                   version=version, settings=dict(d.get("settings", {}) or {}))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from ..utils.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def write_manifest(root: PathLike, manifest: Manifest) -> Path:
    """Write ``ROOT/manifest.json`` atomically; returns its path."""
    path = Path(root) / MANIFEST_NAME
    _atomic_write_bytes(path, (json.dumps(manifest.to_json(), indent=1) + "\n").encode())
    return path


def read_manifest(root: PathLike) -> Manifest:
    """Read and validate ``ROOT/manifest.json`` (``Zero123Error`` if missing or malformed)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise Zero123Error(f"{root}: not a rendered dataset (no {MANIFEST_NAME}; "
                           "make one with `zero123 render-dataset`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Zero123Error(f"{path}: cannot read manifest ({exc})") from None
    return Manifest.from_json(data, where=str(path))


def write_view(root: PathLike, object_id: str, index: int, rgba: np.ndarray, c2w: torch.Tensor) -> None:
    """Write one view: ``rgba`` uint8 ``[H,W,4]`` (or float in [0,1]) as PNG and the camera as 3x4 RT ``.npy``.

    ``c2w`` is the 4x4 camera-to-world (OpenGL axes). Both files are written atomically.
    """
    from PIL import Image
    import io

    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise Zero123Error(f"view image must be [H,W,4] RGBA, got shape {rgba.shape}")
    if rgba.dtype != np.uint8:
        rgba = (np.clip(rgba.astype(np.float64), 0, 1) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=4)
    _atomic_write_bytes(image_path(root, object_id, index), buf.getvalue())
    from ..utils.atomic import atomic_write

    atomic_write(camera_path(root, object_id, index),
                 lambda tmp: save_zero123_rt(tmp, torch.as_tensor(c2w, dtype=torch.float32)))


def read_view_rgba(root: PathLike, object_id: str, index: int) -> np.ndarray:
    """The view's RGBA uint8 ``[H,W,4]``."""
    from PIL import Image

    path = image_path(root, object_id, index)
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGBA"))
    except (OSError, ValueError) as exc:
        raise Zero123Error(f"{path}: cannot read view image ({exc})") from None


def read_view_camera(root: PathLike, object_id: str, index: int) -> torch.Tensor:
    """The view's 4x4 camera-to-world (float32)."""
    path = camera_path(root, object_id, index)
    if not path.is_file():
        raise Zero123Error(f"{path}: missing camera file")
    return load_zero123_rt(path)


def rgba_to_tensor(rgba: np.ndarray, size: Optional[int] = None, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """RGBA uint8 ``[H,W,4]`` -> ``[3,S,S]`` float32 in [-1,1], composited on ``background`` (RGB in [0,1],
    white by default, as Zero123 trains) and resized (bicubic on the composite, antialiased) to ``size``."""
    x = torch.from_numpy(np.ascontiguousarray(rgba)).float().div(255.0).permute(2, 0, 1)
    rgb, a = x[:3], x[3:4]
    bg = torch.tensor(background, dtype=torch.float32).view(3, 1, 1)
    img = rgb * a + bg * (1 - a)
    if size is not None and (img.shape[1] != size or img.shape[2] != size):
        img = torch.nn.functional.interpolate(img[None], size=(size, size), mode="bicubic", antialias=True,
                                              align_corners=False)[0].clamp(0, 1)
    return img * 2 - 1


def load_view_image(root: PathLike, object_id: str, index: int, size: Optional[int] = None,
                    background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Image ``[3,S,S]`` in [-1,1] of one view, composited on ``background`` (``rgba_to_tensor``)."""
    return rgba_to_tensor(read_view_rgba(root, object_id, index), size, background)


def load_view(root: PathLike, object_id: str, index: int, size: Optional[int] = None,
              background=(1.0, 1.0, 1.0)) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image ``[3,S,S]`` in [-1,1] composited on ``background``, 4x4 camera-to-world) of one view."""
    return load_view_image(root, object_id, index, size, background), read_view_camera(root, object_id, index)


def check_dataset(root: PathLike, manifest: Optional[Manifest] = None,
                  splits: Iterable[str] = SPLITS) -> Manifest:
    """Validate that every listed view of ``splits`` exists on disk; returns the manifest."""
    manifest = manifest or read_manifest(root)
    for o in manifest.objects_in(tuple(splits)):
        for i in range(o.num_views):
            for p in (image_path(root, o.id, i), camera_path(root, o.id, i)):
                if not p.is_file():
                    raise Zero123Error(f"{root}: object {o.id!r} lists {o.num_views} views but {p.name} is missing")
    return manifest
