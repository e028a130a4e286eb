"""A tiny synthetic multi-view dataset (coloured boxes drawn with PIL) in the training layout.

For tests, smoke runs and benchmarks that must not depend on a renderer or on downloaded data. Each object is a
box with random sizes, yaw and six face colours; each view is a perspective projection of it (painter's order,
back faces culled) from a random camera on a sphere around the origin, using ``zero123.camera``'s conventions
(z up, OpenGL camera axes), with a transparent background. The 3x4 world-to-camera matrices are written with
``zero123.camera.save_zero123_rt`` so the pairs are genuinely view-consistent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..camera import camera_to_world, fov_to_focal, world_to_camera_rt
from ..data import layout

#: ground-truth cameras of the synthetic views (not part of the layout; for tests)
CAMERAS_NAME = "synthetic_cameras.json"

# unit cube corners and its faces (counter-clockwise seen from outside)
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_FACES = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]


def render_box(rt: np.ndarray, half_sizes, yaw_deg: float, face_colors, size: int, fov_deg: float) -> Image.Image:
    """RGBA image of a box centred at the origin seen by the camera ``rt`` (3x4 world-to-camera).

    ``half_sizes`` are the half extents along x, y, z before the yaw (degrees, about +z); ``face_colors`` are
    six RGB triples. Pixels outside the box are fully transparent.
    """
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    verts = (_CORNERS * np.asarray(half_sizes, dtype=np.float64)) @ rot.T
    cam = verts @ rt[:, :3].T + rt[:, 3]  # camera coordinates, camera looks down -z
    focal = fov_to_focal(fov_deg, size)
    depth = -cam[:, 2]
    uv = np.stack([focal * cam[:, 0] / depth + size / 2, -focal * cam[:, 1] / depth + size / 2], axis=1)
    centre = -rt[:, :3].T @ rt[:, 3]  # camera position in the world
    faces = []
    for face, color in zip(_FACES, face_colors):
        pts = verts[list(face)]
        normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
        if np.dot(normal, centre - pts.mean(0)) <= 0:
            continue  # back face
        faces.append((depth[list(face)].mean(), face, tuple(int(v) for v in color)))
    scale = 2  # draw at 2x and downsample: antialiased edges
    img = Image.new("RGBA", (size * scale, size * scale), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for _, face, color in sorted(faces, key=lambda f: -f[0]):
        draw.polygon([(float(uv[i, 0] * scale), float(uv[i, 1] * scale)) for i in face], fill=color + (255,))
    return img.resize((size, size), Image.LANCZOS)


def write_synthetic_dataset(root, num_objects: int = 4, views_per_object: int = 6, image_size: int = 32,
                            fov_deg: float = 40.0, seed: int = 0, val_objects: int = 1,
                            elevation_range=(-10.0, 40.0), radius_range=(1.8, 2.2)) -> Path:
    """Write ``num_objects`` random boxes x ``views_per_object`` views into ``root`` (the training layout).

    The last ``val_objects`` objects get split ``val``, the others ``train``. Cameras: elevation uniform in
    ``elevation_range`` degrees, azimuth uniform in [0, 360) degrees, radius uniform in ``radius_range``.
    Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    objects, cameras = [], {}
    for i in range(num_objects):
        oid = f"box_{i:04d}"
        half = rng.uniform(0.22, 0.45, size=3)
        yaw = float(rng.uniform(0, 90))
        base = rng.uniform(40, 230, size=3)
        colors = [np.clip(base * f + rng.uniform(-25, 25, size=3), 0, 255)
                  for f in (1.0, 0.55, 0.8, 0.7, 0.45, 0.95)]
        for v in range(views_per_object):
            elev = float(rng.uniform(*elevation_range))
            azim = float(rng.uniform(0, 360))
            radius = float(rng.uniform(*radius_range))
            cameras.setdefault(oid, []).append([elev, azim, radius])
            c2w = camera_to_world(elev, azim, radius)
            rt = world_to_camera_rt(c2w).numpy().astype(np.float64)
            img = render_box(rt, half, yaw, colors, image_size, fov_deg)
            layout.write_view(root, oid, v, np.asarray(img), c2w)
        split = "val" if i >= num_objects - val_objects else "train"
        objects.append(layout.ObjectEntry(oid, split, views_per_object, "synthetic box"))
    from ..utils.atomic import atomic_write_text

    atomic_write_text(root / CAMERAS_NAME, json.dumps(cameras))
    layout.write_manifest(root, layout.Manifest(image_size=image_size, fov_deg=fov_deg,
                                                views_per_object=views_per_object, objects=objects))
    return root


def synthetic_cameras(root) -> dict:
    """``{object_id: [(elevation deg, azimuth deg, radius), ...]}``: the cameras the views were drawn from."""
    return {k: [tuple(c) for c in v]
            for k, v in json.loads((Path(root) / CAMERAS_NAME).read_text(encoding="utf-8")).items()}
