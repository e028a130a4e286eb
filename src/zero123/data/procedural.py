"""Procedural objects for multi-view datasets: varied composites of primitives (boxes, cylinders, cones, spheres,
tori, surfaces of revolution) with a baked UV texture atlas (solid colours, stripes, checkers, dots, gradients,
one-sided markers), deterministic per seed.

Several families (creatures, vehicles, vases/mugs, furniture, houses, trees, abstract clusters) are built so that
most objects are asymmetric: the back differs from the front (a face, a handle, a door, a one-sided marker), which
a view-synthesis model must learn. :func:`procedural_object` returns a ``trimesh.Trimesh`` in the z-up world of
:mod:`zero123.camera`; :func:`zero123.data.objects.procedural_sources` lists them as dataset sources.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from ..errors import Zero123Error

__all__ = ["PROCEDURAL_KINDS", "procedural_object"]

#: Procedural object families.
PROCEDURAL_KINDS = ("creature", "vehicle", "vase", "furniture", "house", "tree", "abstract")

_TILE = 64  # texture tile side (pixels)
_ATLAS_TILES = 4  # atlas is _ATLAS_TILES x _ATLAS_TILES tiles
_MARGIN = 2.5 / _TILE  # UV margin inside a tile (no bilinear bleeding)


class _Builder:
    """Accumulates textured parts: vertices, per-vertex UVs (already placed in the atlas) and faces."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.vertices: List[np.ndarray] = []
        self.uvs: List[np.ndarray] = []
        self.faces: List[np.ndarray] = []
        self.atlas = np.zeros((_TILE * _ATLAS_TILES, _TILE * _ATLAS_TILES, 3), dtype=np.uint8)
        self.tiles = 0
        self.n = 0

    # ---- textures
    def new_tile(self, kind: Optional[str] = None, c1=None, c2=None) -> int:
        """Paint a procedural pattern into the next free atlas tile; returns its index (reused when full)."""
        if self.tiles >= _ATLAS_TILES * _ATLAS_TILES:
            return int(self.rng.integers(self.tiles))
        rng = self.rng
        c1 = _random_color(rng) if c1 is None else np.asarray(c1, float)
        c2 = _random_color(rng) if c2 is None else np.asarray(c2, float)
        kind = kind or rng.choice(["solid", "solid", "stripes", "checker", "dots", "gradient", "band"])
        s, t = np.meshgrid((np.arange(_TILE) + 0.5) / _TILE, (np.arange(_TILE) + 0.5) / _TILE)  # s ~ u, t ~ 1-v
        if kind == "solid":
            w = np.zeros_like(s)
        elif kind == "stripes":
            k = int(rng.integers(2, 7))
            w = (np.floor((s if rng.random() < 0.5 else t) * 2 * k) % 2).astype(float)
        elif kind == "checker":
            ku, kv = int(rng.integers(2, 6)), int(rng.integers(2, 6))
            w = ((np.floor(s * 2 * ku) + np.floor(t * 2 * kv)) % 2).astype(float)
        elif kind == "dots":
            ku, kv = int(rng.integers(3, 7)), int(rng.integers(2, 5))
            fu, fv = (s * ku) % 1 - 0.5, (t * kv) % 1 - 0.5
            w = (fu ** 2 + fv ** 2 < 0.09).astype(float)
        elif kind == "gradient":
            w = t
        elif kind == "band":
            lo = rng.uniform(0.2, 0.6)
            w = ((t > lo) & (t < lo + rng.uniform(0.1, 0.3))).astype(float)
        elif kind == "marker":  # a patch on one side only (u in [0.35, 0.65]): the front differs from the back
            w = ((np.abs(s - 0.5) < 0.15) & (np.abs(t - 0.5) < 0.25)).astype(float)
        else:
            raise ValueError(kind)
        img = c1[None, None] * (1 - w[..., None]) + c2[None, None] * w[..., None]
        img = img * (1 + rng.uniform(-0.04, 0.04, size=img.shape[:2])[..., None])  # a little grain
        tx, ty = self.tiles % _ATLAS_TILES, self.tiles // _ATLAS_TILES
        tile = np.clip(img * 255, 0, 255).astype(np.uint8)
        self.atlas[ty * _TILE:(ty + 1) * _TILE, tx * _TILE:(tx + 1) * _TILE] = tile
        self.tiles += 1
        return self.tiles - 1

    def _tile_uv(self, uv: np.ndarray, tile: int) -> np.ndarray:
        """Part UVs in [0,1]^2 (v up) -> atlas UVs (v up, row 0 of the atlas image at v = 1)."""
        tx, ty = tile % _ATLAS_TILES, tile // _ATLAS_TILES
        u = (tx + _MARGIN + np.clip(uv[:, 0], 0, 1) * (1 - 2 * _MARGIN)) / _ATLAS_TILES
        # tile row ty spans image rows [ty*T, (ty+1)*T) = v in [1-(ty+1)/N, 1-ty/N]
        v = 1 - (ty + 1) / _ATLAS_TILES + (_MARGIN + np.clip(uv[:, 1], 0, 1) * (1 - 2 * _MARGIN)) / _ATLAS_TILES
        return np.stack([u, v], 1)

    # ---- geometry
    def add(self, verts: np.ndarray, uv: np.ndarray, faces: np.ndarray, tile: int, transform: np.ndarray):
        v = verts @ transform[:3, :3].T + transform[:3, 3]
        self.vertices.append(v)
        self.uvs.append(self._tile_uv(uv, tile))
        self.faces.append(faces + self.n)
        self.n += len(v)

    def mesh(self):
        import trimesh
        from PIL import Image

        v = np.concatenate(self.vertices)
        f = np.concatenate(self.faces)
        uv = np.concatenate(self.uvs)
        visual = trimesh.visual.TextureVisuals(
            uv=uv, material=trimesh.visual.material.SimpleMaterial(image=Image.fromarray(self.atlas),
                                                                   diffuse=[255, 255, 255, 255]))
        return trimesh.Trimesh(v, f, visual=visual, process=False)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    h, s, v = rng.random(), rng.uniform(0.25, 0.95), rng.uniform(0.35, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _grid(fn, nu: int, nv: int):
    """Parametric surface on an (nu+1) x (nv+1) vertex grid: fn(u, v) -> xyz for u, v in [0,1]."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1))
    u, v = u.ravel(), v.ravel()
    xyz = fn(u, v)
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nv + 1, nu + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return xyz, np.stack([u, v], 1), faces


def _disc(radius: float, z: float, n: int):
    """A disc at height z (its own planar UVs)."""
    def fn(u, v):
        th, r = 2 * np.pi * u, radius * (1 - v)
        return np.stack([r * np.cos(th), r * np.sin(th), np.full_like(u, z)], 1)
    xyz, _, faces = _grid(fn, n, 2)
    uv = 0.5 + 0.5 * xyz[:, :2] / max(radius, 1e-9)
    return xyz, uv, faces


def _concat(*parts):
    vs, uvs, fs, n = [], [], [], 0
    for v, uv, f in parts:
        vs.append(v)
        uvs.append(uv)
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(uvs), np.concatenate(fs)


def _ellipsoid(rx, ry, rz, n=24):
    def fn(u, v):
        th, ph = 2 * np.pi * u, np.pi * (1 - v)
        return np.stack([rx * np.sin(ph) * np.cos(th), ry * np.sin(ph) * np.sin(th), rz * np.cos(ph)], 1)
    return _grid(fn, n, n // 2)


def _lathe(radii: Sequence[float], height: float, n=24, caps=(True, True)):
    """Surface of revolution about z from a radius profile sampled uniformly from z=-h/2 to h/2."""
    radii = np.asarray(radii, float)
    prof = np.linspace(0, 1, len(radii))

    def fn(u, v):
        th = 2 * np.pi * u
        r = np.interp(v, prof, radii)
        return np.stack([r * np.cos(th), r * np.sin(th), (v - 0.5) * height], 1)
    parts = [_grid(fn, n, max(2, 2 * (len(radii) - 1)))]
    if caps[0] and radii[0] > 1e-6:
        parts.append(_disc(radii[0], -height / 2, n))
    if caps[1] and radii[-1] > 1e-6:
        parts.append(_disc(radii[-1], height / 2, n))
    return _concat(*parts)


def _cylinder(r_bottom, r_top, height, n=24):
    return _lathe([r_bottom, r_top], height, n)


def _torus(R, r, n=24):
    def fn(u, v):
        th, ph = 2 * np.pi * u, 2 * np.pi * v
        return np.stack([(R + r * np.cos(ph)) * np.cos(th), (R + r * np.cos(ph)) * np.sin(th), r * np.sin(ph)], 1)
    return _grid(fn, n, max(8, n // 2))


def _box(ex, ey, ez):
    """Axis-aligned box centred at the origin, 6 faces each with its own [0,1]^2 UVs (2x2 grid per face)."""
    parts = []
    h = np.array([ex, ey, ez]) / 2
    for axis in range(3):
        for sign in (-1.0, 1.0):
            a1, a2 = [i for i in range(3) if i != axis]

            def fn(u, v, axis=axis, sign=sign, a1=a1, a2=a2):
                p = np.zeros((len(u), 3))
                p[:, axis] = sign * h[axis]
                p[:, a1] = (u - 0.5) * 2 * h[a1] * sign
                p[:, a2] = (v - 0.5) * 2 * h[a2]
                return p
            parts.append(_grid(fn, 2, 2))
    return _concat(*parts)


def _tf(translate=(0, 0, 0), rot=None, scale=1.0) -> np.ndarray:
    m = np.eye(4)
    r = np.eye(3) if rot is None else np.asarray(rot, float)
    m[:3, :3] = r * scale
    m[:3, 3] = translate
    return m


def _rot(axis: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _creature(b: _Builder, rng):
    bx, by, bz = rng.uniform(0.35, 0.6), rng.uniform(0.22, 0.35), rng.uniform(0.2, 0.32)
    leg_h = rng.uniform(0.15, 0.35)
    body_z = leg_h + bz * 0.8
    body_tile = b.new_tile()
    b.add(*_ellipsoid(bx, by, bz), body_tile, _tf((0, 0, body_z)))
    hr = rng.uniform(0.14, 0.24)
    head = np.array([bx * 0.9 + hr * 0.5, 0, body_z + bz * 0.7])
    head_tile = b.new_tile(rng.choice(["solid", "marker"]))
    b.add(*_ellipsoid(hr, hr, hr), head_tile, _tf(head, _rot("z", 180)))  # marker (u~0.5) faces +x
    eye = b.new_tile("solid", c1=(0.05, 0.05, 0.05))
    for sy in (-1, 1):
        b.add(*_ellipsoid(hr * 0.22, hr * 0.22, hr * 0.22, 12), eye,
              _tf(head + [hr * 0.85, sy * hr * 0.4, hr * 0.25]))
    if rng.random() < 0.6:  # nose / beak
        b.add(*_cylinder(hr * 0.3, 0.0, hr * 0.8, 12), b.new_tile("solid"),
              _tf(head + [hr * 1.2, 0, -hr * 0.1], _rot("y", 90)))
    legs = b.new_tile()
    lr = rng.uniform(0.04, 0.08)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.add(*_cylinder(lr, lr, leg_h + bz * 0.5, 12), legs,
                  _tf((sx * bx * 0.55, sy * by * 0.55, (leg_h + bz * 0.5) / 2)))
    if rng.random() < 0.7:  # tail at the back
        b.add(*_cylinder(rng.uniform(0.03, 0.07), 0.0, rng.uniform(0.2, 0.45), 12), b.new_tile(),
              _tf((-bx * 1.1, 0, body_z + bz * 0.3), _rot("y", -rng.uniform(50, 80))))
    if rng.random() < 0.6:  # ears
        et = b.new_tile("solid")
        for sy in (-1, 1):
            b.add(*_cylinder(hr * 0.35, 0.0, hr * 0.9, 12), et,
                  _tf(head + [0, sy * hr * 0.5, hr * 0.9], _rot("x", sy * -20)))


def _vehicle(b: _Builder, rng):
    L, W, H = rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.35)
    wr = rng.uniform(0.1, 0.17)
    z0 = wr + H / 2
    b.add(*_box(L, W, H), b.new_tile(), _tf((0, 0, z0)))
    cl = L * rng.uniform(0.35, 0.55)
    cx = rng.choice([-1, 1]) * rng.uniform(0.05, 0.25) * L  # cabin off-centre: front != back
    b.add(*_box(cl, W * 0.9, H * rng.uniform(0.6, 1.0)), b.new_tile(rng.choice(["solid", "stripes", "band"])),
          _tf((cx, 0, z0 + H * 0.8)))
    wheel = b.new_tile(rng.choice(["solid", "stripes"]), c1=(0.08, 0.08, 0.08))
    for sx in (-1, 1):
        for sy in (-1, 1):
            if rng.random() < 0.5:
                b.add(*_torus(wr * 0.7, wr * 0.3, 16), wheel, _tf((sx * L * 0.33, sy * W / 2, wr), _rot("x", 90)))
            else:
                b.add(*_cylinder(wr, wr, wr * 0.6, 16), wheel, _tf((sx * L * 0.33, sy * W / 2, wr), _rot("x", 90)))
    lights = b.new_tile("solid", c1=(1.0, 0.95, 0.6))
    for sy in (-1, 1):
        b.add(*_ellipsoid(0.05, 0.05, 0.04, 12), lights, _tf((L / 2, sy * W * 0.3, z0)))


def _vase(b: _Builder, rng):
    n = int(rng.integers(4, 8))
    radii = np.clip(np.cumsum(rng.uniform(-0.12, 0.12, n)) + rng.uniform(0.15, 0.3), 0.05, 0.45)
    h = rng.uniform(0.6, 1.1)
    b.add(*_lathe(radii, h, 28, caps=(True, rng.random() < 0.5)), b.new_tile(rng.choice(
        ["stripes", "band", "checker", "dots", "gradient", "marker"])), _tf((0, 0, h / 2)))
    if rng.random() < 0.6:  # a handle on one side (a mug / jug)
        R = rng.uniform(0.12, 0.22)
        rmax = float(np.interp(0.5, np.linspace(0, 1, n), radii))
        b.add(*_torus(R, rng.uniform(0.025, 0.05), 20), b.new_tile("solid"),
              _tf((rmax + R * 0.6, 0, h / 2), _rot("x", 90)))
    if rng.random() < 0.4:  # a knob on the lid
        b.add(*_ellipsoid(0.06, 0.06, 0.06, 12), b.new_tile("solid"), _tf((0, 0, h + 0.04)))


def _furniture(b: _Builder, rng):
    L, W = rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.8)
    top_t, leg_h = rng.uniform(0.04, 0.1), rng.uniform(0.3, 0.7)
    b.add(*_box(L, W, top_t), b.new_tile(rng.choice(["solid", "stripes", "checker"])),
          _tf((0, 0, leg_h + top_t / 2)))
    legs = b.new_tile("solid")
    round_legs = rng.random() < 0.5
    lr = rng.uniform(0.025, 0.05)
    for sx in (-1, 1):
        for sy in (-1, 1):
            pos = (sx * (L / 2 - lr * 1.5), sy * (W / 2 - lr * 1.5), leg_h / 2)
            if round_legs:
                b.add(*_cylinder(lr, lr * rng.uniform(0.6, 1.0), leg_h, 12), legs, _tf(pos))
            else:
                b.add(*_box(2 * lr, 2 * lr, leg_h), legs, _tf(pos))
    if rng.random() < 0.6:  # chair back on one side
        bh = rng.uniform(0.3, 0.6)
        b.add(*_box(top_t, W, bh), b.new_tile(), _tf((-L / 2 + top_t / 2, 0, leg_h + top_t + bh / 2)))
    if rng.random() < 0.4:  # something on top, off-centre
        r = rng.uniform(0.06, 0.12)
        b.add(*_ellipsoid(r, r, r, 16), b.new_tile(), _tf((L * 0.25, W * 0.2, leg_h + top_t + r)))


def _house(b: _Builder, rng):
    L, W, H = rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.7)
    b.add(*_box(L, W, H), b.new_tile(rng.choice(["solid", "stripes", "checker"])), _tf((0, 0, H / 2)))
    rh = rng.uniform(0.2, 0.45)
    roof = b.new_tile(rng.choice(["solid", "stripes"]))
    rr = math.hypot(L, W) / 2 * 1.05
    b.add(*_cylinder(rr, 0.0, rh, 4), roof,
          _tf((0, 0, H + rh / 2), np.diag([L / math.hypot(L, W) * math.sqrt(2),
                                           W / math.hypot(L, W) * math.sqrt(2), 1.0]) @ _rot("z", 45)))
    door = b.new_tile("solid")
    b.add(*_box(0.02, W * 0.22, H * 0.55), door, _tf((L / 2 + 0.01, rng.uniform(-0.2, 0.2) * W, H * 0.275)))
    win = b.new_tile("checker", c1=(0.7, 0.85, 1.0), c2=(0.2, 0.3, 0.5))
    for _ in range(int(rng.integers(1, 4))):
        side = rng.choice([-1, 1])
        b.add(*_box(L * 0.18, 0.02, H * 0.2), win, _tf((rng.uniform(-0.3, 0.3) * L, side * (W / 2 + 0.01),
                                                        H * rng.uniform(0.5, 0.75))))
    if rng.random() < 0.5:  # chimney
        b.add(*_box(0.08, 0.08, rh), b.new_tile("solid"), _tf((-L * 0.25, W * 0.15, H + rh * 0.6)))


def _tree(b: _Builder, rng):
    th = rng.uniform(0.3, 0.6)
    tr = rng.uniform(0.04, 0.09)
    b.add(*_cylinder(tr * 1.3, tr, th, 14), b.new_tile(rng.choice(["solid", "stripes"])), _tf((0, 0, th / 2)))
    top = b.new_tile(rng.choice(["solid", "dots", "gradient"]))
    if rng.random() < 0.5:  # mushroom / pine
        cr = rng.uniform(0.25, 0.45)
        b.add(*_cylinder(cr, 0.0 if rng.random() < 0.5 else cr * 0.3, rng.uniform(0.2, 0.6), 24), top,
              _tf((0, 0, th + 0.1)))
    else:  # blobs
        for _ in range(int(rng.integers(2, 5))):
            r = rng.uniform(0.12, 0.25)
            b.add(*_ellipsoid(r, r, r * rng.uniform(0.7, 1.1), 16), top,
                  _tf((rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), th + rng.uniform(0.0, 0.25))))
    # a branch with a sign (or a bird house) on one side: the tree's front differs from its back
    if rng.random() < 0.5:
        b.add(*_cylinder(tr * 0.5, tr * 0.3, 0.25, 10), b.new_tile("solid"),
              _tf((0.1, 0, th * 0.7), _rot("y", 70)))
        b.add(*_box(0.04, 0.16, 0.12), b.new_tile("marker"), _tf((0.22, 0, th * 0.62)))
    else:
        b.add(*_box(0.14, 0.12, 0.12), b.new_tile(rng.choice(["solid", "stripes"])), _tf((tr + 0.07, 0, th * 0.55)))
        b.add(*_ellipsoid(0.03, 0.03, 0.03, 10), b.new_tile("solid", c1=(0.05, 0.05, 0.05)),
              _tf((tr + 0.14, 0, th * 0.57)))


def _abstract(b: _Builder, rng):
    for _ in range(int(rng.integers(2, 7))):
        kind = rng.choice(["box", "sphere", "cylinder", "cone", "torus"])
        s = rng.uniform(0.15, 0.45)
        if kind == "box":
            part = _box(*(s * rng.uniform(0.4, 1.2, 3)))
        elif kind == "sphere":
            part = _ellipsoid(*(s * rng.uniform(0.4, 0.8, 3)))
        elif kind == "cylinder":
            part = _cylinder(s * rng.uniform(0.2, 0.5), s * rng.uniform(0.2, 0.5), s * rng.uniform(0.6, 1.6))
        elif kind == "cone":
            part = _cylinder(s * rng.uniform(0.3, 0.6), 0.0, s * rng.uniform(0.6, 1.6))
        else:
            part = _torus(s * 0.5, s * rng.uniform(0.08, 0.2))
        b.add(*part, b.new_tile(), _tf(rng.uniform(-0.35, 0.35, 3), _random_rotation(rng)))


_FAMILIES = {"creature": _creature, "vehicle": _vehicle, "vase": _vase, "furniture": _furniture,
             "house": _house, "tree": _tree, "abstract": _abstract}


def procedural_object(seed: int, kind: Optional[str] = None):
    """A textured procedural object (``trimesh.Trimesh`` with a UV texture atlas), z up, standing on z = 0.

    ``kind`` is one of :data:`PROCEDURAL_KINDS` (default: ``PROCEDURAL_KINDS[seed % 7]``). The same seed always
    gives the same mesh and texture. Front-facing details (faces, headlights, doors, handles) point to +x before
    the random yaw that every object gets.
    """
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFF)
    if kind is None:  # consecutive seeds cycle through the families: balanced even for small datasets
        kind = PROCEDURAL_KINDS[int(seed) % len(PROCEDURAL_KINDS)]
    if kind not in _FAMILIES:
        raise Zero123Error(f"unknown procedural kind {kind!r}: use one of {', '.join(PROCEDURAL_KINDS)}")
    b = _Builder(rng)
    _FAMILIES[kind](b, rng)
    mesh = b.mesh()
    yaw = np.eye(4)
    yaw[:3, :3] = _rot("z", rng.uniform(-180, 180))
    mesh.apply_transform(yaw)
    mesh.metadata["procedural_kind"] = kind
    mesh.metadata["seed"] = int(seed)
    return mesh
