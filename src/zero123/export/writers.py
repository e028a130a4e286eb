"""Atomic file writers for meshes (OBJ+MTL+PNG, GLB, PLY), images, MP4 and GIF.

Every file is written under a temporary name in the destination folder and moved into place with ``os.replace``,
so an interrupted export never leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import Zero123Error


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_with(path, writer) -> Path:
    """Call ``writer(tmp_path)`` then move the result to ``path`` (for libraries that write files themselves;
    the temporary name keeps ``path``'s suffix so format detection works)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_dir(tmp, final) -> Path:
    """Put the finished folder ``tmp`` at ``final`` (same file system); an older ``final`` is moved aside first
    and removed after, so ``final`` is always either the old folder or the new one, complete."""
    import shutil
    import threading

    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{threading.get_ident()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def write_obj(mesh, path) -> dict:
    """OBJ with its MTL (``<stem>.mtl``) and texture image beside it. Returns ``{name: path}`` of written files."""
    import trimesh

    path = Path(path)
    mtl_name = f"{path.stem}.mtl"
    text, files = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_texture=True,
                                                  return_texture=True, mtl_name=mtl_name)
    written = {}
    for name, data in (files or {}).items():
        written[name] = atomic_write_bytes(path.parent / name, data)
    written["obj"] = atomic_write_bytes(path, text.encode("utf-8"))
    return written


def write_glb(mesh, path) -> Path:
    """Binary glTF (texture embedded)."""
    return atomic_write_bytes(path, mesh.export(file_type="glb"))


def write_ply(mesh, path) -> Path:
    """Binary PLY (vertex colours when present)."""
    return atomic_write_bytes(path, mesh.export(file_type="ply"))


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


def image_grid(rows: list, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile lists of ``[H,W,3]`` uint8 images (rows of equal-size images) into one array."""
    h = max(im.shape[0] for row in rows for im in row)
    w = max(im.shape[1] for row in rows for im in row)
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + im.shape[0], x:x + im.shape[1]] = im[..., :3]
    return out
