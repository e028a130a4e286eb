"""Atomic file writers for meshes (OBJ+MTL+PNG, GLB, PLY), images, MP4 and GIF.

Meshes are given in the z-up world of :mod:`zero123.camera` and written in the export frame (+Y up, the input
view's front toward +Z: glTF 2.0's convention, which Blender, three.js, model-viewer and gradio also assume for
OBJ and PLY), through :func:`zero123.camera.world_to_export_matrix`; ``input_azimuth=None`` writes the vertices
as given. :func:`from_export_frame` reads them back into the world.

Every file is written by :mod:`zero123.utils.atomic` (a temporary name in the destination folder, ``os.replace``),
so an interrupted export never leaves a truncated file under the final name.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import Zero123Error
from ..utils.atomic import atomic_write, atomic_write_bytes
from ..utils.images import image_grid as _image_grid


# the package's one atomic writer (zero123.utils.atomic); ``atomic_write_with(path, writer)`` is its name here
atomic_write_with = atomic_write
# the package's one image grid (zero123.utils.images.image_grid) with the export previews' 2-pixel frame as default
image_grid = functools.partial(_image_grid, pad=2)


def to_export_frame(mesh, input_azimuth: Optional[float] = 0.0):
    """Copy of a z-up world ``trimesh`` in the export frame (input camera at ``input_azimuth`` degrees; its side
    toward +Z); ``None`` returns ``mesh`` unchanged."""
    if input_azimuth is None:
        return mesh
    from ..camera import world_to_export_matrix

    return mesh.copy().apply_transform(world_to_export_matrix(input_azimuth))


def from_export_frame(mesh, input_azimuth: float = 0.0):
    """Inverse of :func:`to_export_frame`: a mesh read from one of our files, back in the z-up world."""
    from ..camera import world_to_export_matrix

    return mesh.copy().apply_transform(world_to_export_matrix(input_azimuth).T)


def write_obj(mesh, path, input_azimuth: Optional[float] = 0.0) -> dict:
    """OBJ with its MTL (``<stem>.mtl``) and texture image beside it, in the export frame. Returns
    ``{name: path}`` of written files."""
    import trimesh

    path = Path(path)
    mtl_name = f"{path.stem}.mtl"
    text, files = trimesh.exchange.obj.export_obj(to_export_frame(mesh, input_azimuth), include_normals=True,
                                                  include_texture=True, return_texture=True, mtl_name=mtl_name)
    written = {}
    for name, data in (files or {}).items():
        written[name] = atomic_write_bytes(path.parent / name, data)
    written["obj"] = atomic_write_bytes(path, text.encode("utf-8"))
    return written


_GLB_MAGIC, _GLB_JSON, _ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 0x46546C67, 0x4E4F534A, 34962, 34963


def add_buffer_view_targets(glb: bytes) -> bytes:
    """Set each mesh bufferView's ``target`` (ARRAY_BUFFER for vertex attributes, ELEMENT_ARRAY_BUFFER for
    indices) in a binary glTF, which trimesh leaves out (the Khronos validator's BUFFER_VIEW_TARGET_MISSING)."""
    magic, version, _ = struct.unpack_from("<III", glb, 0)
    length, kind = struct.unpack_from("<II", glb, 12)
    if magic != _GLB_MAGIC or version != 2 or kind != _GLB_JSON:
        raise Zero123Error("not a glTF 2.0 binary")
    doc = json.loads(glb[20:20 + length].decode("utf-8"))
    views, accessors = doc.get("bufferViews", []), doc.get("accessors", [])

    def mark(accessor, target):
        view = accessors[accessor].get("bufferView") if 0 <= accessor < len(accessors) else None
        if view is not None:
            views[view].setdefault("target", target)

    for m in doc.get("meshes", []):
        for prim in m.get("primitives", []):
            for acc in prim.get("attributes", {}).values():
                mark(acc, _ARRAY_BUFFER)
            if "indices" in prim:
                mark(prim["indices"], _ELEMENT_ARRAY_BUFFER)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    rest = glb[20 + length:]
    return struct.pack("<III", _GLB_MAGIC, 2, 12 + 8 + len(text) + len(rest)) + \
        struct.pack("<II", len(text), _GLB_JSON) + text + rest


def write_glb(mesh, path, input_azimuth: Optional[float] = 0.0) -> Path:
    """Binary glTF (texture embedded), in the export frame."""
    data = to_export_frame(mesh, input_azimuth).export(file_type="glb")
    return atomic_write_bytes(path, add_buffer_view_targets(data))


def write_ply(mesh, path, input_azimuth: Optional[float] = 0.0) -> Path:
    """Binary PLY (vertex colours when present), in the export frame."""
    return atomic_write_bytes(path, to_export_frame(mesh, input_azimuth).export(file_type="ply"))


def write_png(image: np.ndarray, path) -> Path:
    """``[H,W,3|4]`` uint8 array -> PNG."""
    from PIL import Image

    return atomic_write_with(path, lambda tmp: Image.fromarray(np.asarray(image)).save(tmp, format="PNG"))


def write_mp4(frames, path, fps: int = 30) -> Path:
    """``[N,H,W,3]`` uint8 frames -> H.264 MP4 (imageio-ffmpeg). Sides must be multiples of 16 to avoid resizing."""
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise Zero123Error(f"video frames must be [N,H,W,3] uint8 with N > 0, got {frames.shape}")

    def _write(tmp):
        with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=16, ffmpeg_log_level="error") as w:
            for fr in frames:
                w.append_data(fr)

    return atomic_write_with(path, _write)


def write_gif(frames, path, fps: int = 15) -> Path:
    """``[N,H,W,3]`` uint8 frames -> looping GIF."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise Zero123Error(f"GIF frames must be [N,H,W,3] uint8 with N > 0, got {frames.shape}")
    images = [Image.fromarray(f) for f in frames]
    return atomic_write_with(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0))


