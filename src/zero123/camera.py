"""Camera conventions for the whole package. Every other module imports from here.

World frame
    Right-handed, **z up** (as in Blender and the Zero123 / Objaverse renders). The object sits at the origin.

Spherical coordinates of a camera position ``p = (x, y, z)``
    * ``radius``    = |p| (world units; Zero123 renders use 1.5 .. 2.2, threestudio's recipe 3.8).
    * ``elevation`` = angle above the horizontal xy-plane, in **degrees** at every public API; +90 looks straight down.
    * ``polar``     = 90 - elevation: angle from the +z axis (what Zero123's ``cartesian_to_spherical`` returns).
    * ``azimuth``   = atan2(y, x) in **degrees**, counter-clockwise seen from above; azimuth 0 is on the +x axis.
    Inside the numerics (camera embeddings) angles are radians.

    p = radius * (cos(elev) cos(azim), cos(elev) sin(azim), sin(elev))

Camera axes ("OpenGL" / Blender): the camera looks down its own -z axis, +y is up in the image, +x is right.
``camera_to_world`` matrices are 4x4 with columns (right, up, back, position); the Zero123 training data stores
the inverse as a 3x4 world-to-camera ``RT`` per view (``load_zero123_rt`` / ``save_zero123_rt`` round-trip).

Export frame (the files we write: GLB, OBJ, PLY)
    glTF 2.0's convention, which most viewers also assume for OBJ and PLY: **+Y up**, the asset's front
    faces **+Z**, +X = Y x Z (right-handed). The front is the side seen by the input view (image-to-3D's
    reference camera at azimuth ``input_azimuth``). :func:`world_to_export_matrix` is the one frame change:
    world (x, y, z) with the input camera at azimuth 0 -> export (X, Y, Z) = (y, z, x).

Camera embedding ``T`` (the 4 numbers concatenated to the CLIP image embedding, see ``../shared/spec``):
    * ``zero123`` (Zero123, Zero123-XL): ``[d_polar (rad), sin(d_azim), cos(d_azim), d_radius]`` with
      ``d_x = target_x - input_x``. Positive d_polar = the target looks from lower than the input.
    * ``stable_zero123`` (Stable Zero123, Stable Zero123C): ``[d_polar (rad), sin(d_azim), cos(d_azim),
      polar of the INPUT view (rad)]``: the radius change is replaced by the input view's absolute polar angle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Sequence, Union

import numpy as np
import torch

from .errors import Zero123Error

TensorLike = Union[float, Sequence[float], np.ndarray, torch.Tensor]

#: Elevation bounds accepted at the public API, degrees (inclusive).
ELEVATION_RANGE_DEG = (-90.0, 90.0)


class ConditioningVariant(str, Enum):
    """How the 4 camera numbers are formed; the two checkpoint families differ only here."""

    ZERO123 = "zero123"
    STABLE_ZERO123 = "stable_zero123"

    @classmethod
    def parse(cls, value: Union[str, "ConditioningVariant"]) -> "ConditioningVariant":
        if isinstance(value, ConditioningVariant):
            return value
        key = str(value).strip().lower().replace("-", "_")
        aliases = {"zero123": cls.ZERO123, "zero123_xl": cls.ZERO123, "zero123xl": cls.ZERO123,
                   "stable_zero123": cls.STABLE_ZERO123, "stable_zero123c": cls.STABLE_ZERO123,
                   "stable": cls.STABLE_ZERO123}
        if key not in aliases:
            raise Zero123Error(f"unknown conditioning variant {value!r}: use 'zero123' or 'stable_zero123'")
        return aliases[key]


@dataclass(frozen=True)
class SphericalPose:
    """A camera on a sphere around the object. Degrees and world units."""

    elevation: float
    azimuth: float
    radius: float

    def __post_init__(self):
        check_elevation(self.elevation, "elevation")
        if not (math.isfinite(self.azimuth) and math.isfinite(self.radius)) or self.radius <= 0:
            raise Zero123Error(f"camera out of range: azimuth={self.azimuth}, radius={self.radius} "
                               "(azimuth must be finite, radius > 0)")


def check_elevation(value: float, name: str = "elevation") -> None:
    """Raise a one-line ``Zero123Error`` unless ``value`` is a finite elevation in [-90, 90] degrees."""
    lo, hi = ELEVATION_RANGE_DEG
    if not math.isfinite(float(value)) or not (lo <= float(value) <= hi):
        raise Zero123Error(f"{name} {value} deg is out of range [{lo:g}, {hi:g}] deg")


def polar_from_elevation(elevation_deg: TensorLike) -> TensorLike:
    """Polar angle (from +z) in degrees for an elevation (above the xy-plane) in degrees."""
    return 90.0 - elevation_deg


def _as_tensor(x: TensorLike, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)


def camera_embedding(
    variant: Union[str, ConditioningVariant],
    target_elevation: TensorLike,
    target_azimuth: TensorLike,
    target_radius: TensorLike,
    input_elevation: TensorLike = 0.0,
    input_azimuth: TensorLike = 0.0,
    input_radius: TensorLike = 0.0,
) -> torch.Tensor:
    """The 4-number camera embedding ``T`` for target views relative to the input view.

    All angles in degrees, radii in world units; inputs broadcast. Returns float32 ``[..., 4]``.
    For ``zero123`` only the differences matter; for ``stable_zero123`` the input elevation is also absolute
    (threestudio's default for it is 5 degrees) and radii are ignored.
    """
    variant = ConditioningVariant.parse(variant)
    te, ta, tr = (_as_tensor(v, torch.float64) for v in (target_elevation, target_azimuth, target_radius))
    ie, ia, ir = (_as_tensor(v, torch.float64) for v in (input_elevation, input_azimuth, input_radius))
    d_polar = torch.deg2rad(polar_from_elevation(te) - polar_from_elevation(ie))
    d_azim = torch.deg2rad(ta - ia)
    if variant is ConditioningVariant.ZERO123:
        fourth = tr - ir
    else:
        fourth = torch.deg2rad(polar_from_elevation(ie))
    parts = torch.broadcast_tensors(d_polar, torch.sin(d_azim), torch.cos(d_azim), fourth)
    return torch.stack(parts, dim=-1).to(torch.float32)


def relative_camera_embedding(
    variant: Union[str, ConditioningVariant],
    delta_elevation: TensorLike,
    delta_azimuth: TensorLike,
    delta_radius: TensorLike,
    input_elevation: TensorLike = 0.0,
) -> torch.Tensor:
    """``camera_embedding`` for a camera *change* (target = input + delta), as the CLI and pipeline take it.

    ``input_elevation`` (degrees) only matters for ``stable_zero123``.
    """
    ie = _as_tensor(input_elevation, torch.float64)
    return camera_embedding(variant, ie + _as_tensor(delta_elevation, torch.float64),
                            _as_tensor(delta_azimuth, torch.float64), _as_tensor(delta_radius, torch.float64),
                            ie, 0.0, 0.0)


def position_from_spherical(elevation: TensorLike, azimuth: TensorLike, radius: TensorLike) -> torch.Tensor:
    """Camera position(s) ``[..., 3]`` (world, z up) from elevation/azimuth in degrees and radius."""
    e, a, r = torch.broadcast_tensors(*(_as_tensor(v) for v in (elevation, azimuth, radius)))
    e, a = torch.deg2rad(e), torch.deg2rad(a)
    return torch.stack([r * torch.cos(e) * torch.cos(a), r * torch.cos(e) * torch.sin(a), r * torch.sin(e)], -1)


def spherical_from_position(position: torch.Tensor):
    """Inverse of ``position_from_spherical``: returns (elevation deg, azimuth deg, radius), each ``[...]``."""
    position = _as_tensor(position)
    x, y, z = position.unbind(-1)
    radius = position.norm(dim=-1)
    elevation = torch.rad2deg(torch.atan2(z, torch.sqrt(x * x + y * y)))
    azimuth = torch.rad2deg(torch.atan2(y, x))
    return elevation, azimuth, radius


def look_at(position: torch.Tensor, target: torch.Tensor | None = None, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera-to-world matrices ``[..., 4, 4]`` (OpenGL axes) for cameras at ``position`` looking at ``target``.

    Looking straight along ``up`` is handled by falling back to +y as the reference up vector.
    """
    position = _as_tensor(position)
    target = torch.zeros_like(position) if target is None else _as_tensor(target).expand_as(position)
    up_t = torch.tensor(up, dtype=position.dtype).expand_as(position)
    back = torch.nn.functional.normalize(position - target, dim=-1)  # camera +z points away from the target
    right = torch.linalg.cross(up_t, back, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor((0.0, 1.0, 0.0), dtype=position.dtype).expand_as(position)
    right = torch.where(degenerate, torch.linalg.cross(alt_up, back, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    cam_up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.zeros(*position.shape[:-1], 4, 4, dtype=position.dtype)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, cam_up, back, position
    c2w[..., 3, 3] = 1.0
    return c2w


def camera_to_world(elevation: TensorLike, azimuth: TensorLike, radius: TensorLike) -> torch.Tensor:
    """Orbit camera(s) looking at the origin, z up: ``[..., 4, 4]`` camera-to-world, OpenGL axes."""
    return look_at(position_from_spherical(elevation, azimuth, radius))


def world_to_camera_rt(c2w: torch.Tensor) -> torch.Tensor:
    """3x4 world-to-camera ``RT`` (the Zero123 dataset's per-view ``.npy``) from a 4x4 camera-to-world."""
    c2w = _as_tensor(c2w)
    rot = c2w[..., :3, :3].transpose(-1, -2)
    trans = -(rot @ c2w[..., :3, 3:4])
    return torch.cat([rot, trans], dim=-1)


def camera_to_world_from_rt(rt: torch.Tensor) -> torch.Tensor:
    """Inverse of ``world_to_camera_rt``: 4x4 camera-to-world from a 3x4 world-to-camera ``RT``."""
    rt = _as_tensor(rt)
    rot_c2w = rt[..., :3, :3].transpose(-1, -2)
    pos = -(rot_c2w @ rt[..., :3, 3:4])
    c2w = torch.zeros(*rt.shape[:-2], 4, 4, dtype=rt.dtype)
    c2w[..., :3, :3], c2w[..., :3, 3:4] = rot_c2w, pos
    c2w[..., 3, 3] = 1.0
    return c2w


def spherical_from_rt(rt: torch.Tensor):
    """(elevation deg, azimuth deg, radius) of the camera centre ``-R^T t`` of a 3x4 world-to-camera ``RT``."""
    return spherical_from_position(camera_to_world_from_rt(rt)[..., :3, 3])


def embedding_from_rt(variant, target_rt: torch.Tensor, input_rt: torch.Tensor) -> torch.Tensor:
    """Camera embedding between two stored views, as Zero123's ``ObjaverseData.get_T`` computes it."""
    te, ta, tr = spherical_from_rt(target_rt)
    ie, ia, ir = spherical_from_rt(input_rt)
    return camera_embedding(variant, te, ta, tr, ie, ia, ir)


def fov_to_focal(fov_deg: float, size_px: int) -> float:
    """Focal length in pixels for a (vertical) field of view in degrees over ``size_px`` pixels."""
    return 0.5 * size_px / math.tan(math.radians(fov_deg) / 2)


def save_zero123_rt(path, c2w: torch.Tensor) -> None:
    """Write one view's 3x4 world-to-camera matrix as float32 ``.npy`` (the Zero123 dataset layout)."""
    np.save(path, world_to_camera_rt(c2w).numpy().astype(np.float32))


def load_zero123_rt(path) -> torch.Tensor:
    """Read a view's 3x4 world-to-camera ``.npy``; returns the 4x4 camera-to-world."""
    rt = np.load(path, allow_pickle=False)
    if rt.shape != (3, 4):
        raise Zero123Error(f"{path}: expected a 3x4 world-to-camera matrix, got shape {rt.shape}")
    return camera_to_world_from_rt(torch.from_numpy(rt.astype(np.float32)))


def world_to_export_matrix(input_azimuth: float = 0.0) -> np.ndarray:
    """4x4 float64 rigid rotation from the z-up world to the export frame (+Y up, front toward +Z; see the module
    docstring). The world is first turned about z by ``-input_azimuth`` degrees so that the input camera lies on
    +x, then axes are relabelled (x, y, z) -> (Z, X, Y). Apply to column vectors: ``p_export = M @ p_world``;
    the inverse is ``M.T``."""
    if not math.isfinite(float(input_azimuth)):
        raise Zero123Error(f"input azimuth {input_azimuth} is not finite")
    a = math.radians(float(input_azimuth))
    turn = np.array([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    relabel = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    m = np.eye(4)
    m[:3, :3] = relabel @ turn
    return m


#: y-up -> z-up world (+90 degrees about x), as Blender's glTF / OBJ importers do: (x, y, z) -> (x, -z, y); 4x4,
#: applied to column vectors. Mesh files of y-up tools are brought into the z-up world with it.
Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def sphere_band_elevation(u, elevation_range, rule: str = "area"):
    """Elevations (degrees) in the band ``elevation_range = (lo, hi)`` from uniform draws ``u`` in [0, 1).

    ``rule="area"``: ``sin(elevation)`` uniform in ``[sin lo, sin hi]``, i.e. uniform over the band's area (the
    dataset renders). ``rule="threestudio"``: threestudio's ``RandomCameraIterableDataset`` formula,
    ``asin(2 p - 1)`` with ``p`` uniform in ``[(lo + 90) / 180, (hi + 90) / 180]``; area-uniform only for the
    full range [-90, 90]. ``u`` is a numpy array / float (float64 maths, numpy result) or a torch tensor (its dtype).
    """
    lo, hi = (float(x) for x in elevation_range)
    if rule == "area":
        a, b = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    elif rule == "threestudio":
        a, b = (lo + 90.0) / 180.0, (hi + 90.0) / 180.0
    else:
        raise ValueError(f"unknown sphere-band rule {rule!r} (area, threestudio)")
    if isinstance(u, torch.Tensor):
        s = u * (b - a) + a
        return torch.rad2deg(torch.asin((s if rule == "area" else 2 * s - 1.0).clamp(-1, 1)))
    s = a + (b - a) * np.asarray(u, dtype=np.float64)
    return np.degrees(np.arcsin(np.clip(s if rule == "area" else 2 * s - 1.0, -1, 1)))


def world_to_camera_points(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points ``[..., 3]`` in the camera frame of one 4x4 camera-to-world ``c2w`` (OpenGL axes: the camera
    looks down -z); ``[..., 3]`` in ``points``' dtype."""
    rot = c2w[:3, :3].T.to(points.dtype)
    t = -(rot @ c2w[:3, 3].to(points.dtype))
    return points @ rot.T + t


def project_to_pixels(p_cam: torch.Tensor, fov_deg: float, size: int, min_depth: float = 0.0):
    """Pinhole projection of camera-frame points ``[..., 3]`` into a ``size x size`` image of vertical field of
    view ``fov_deg``: returns ``(x, y, depth)``, each ``[...]``: pixel coordinates (x right, y down, pixel
    ``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``) and the depth along -z (clamped to ``min_depth``).
    The inverse of the rays of :func:`pixel_rays`."""
    depth = (-p_cam[..., 2]).clamp_min(min_depth)
    f = fov_to_focal(fov_deg, size)
    half = size / 2.0
    return half + f * p_cam[..., 0] / depth, half - f * p_cam[..., 1] / depth, depth


def pixel_rays(c2w: torch.Tensor, fovy_deg, height: int, width: int):
    """World-space rays through every pixel centre of ``B`` pinhole cameras.

    ``c2w`` ``[B,4,4]`` camera-to-world (OpenGL axes), ``fovy_deg`` a float or ``[B]`` vertical fields of view in
    degrees; pixel ``(row i, col j)`` shoots through ``(j + 0.5, i + 0.5)``, row 0 at the top. Returns
    ``origins`` ``[B,H,W,3]`` and unit ``directions`` ``[B,H,W,3]`` (float32, on ``c2w``'s device)."""
    B, dev = c2w.shape[0], c2w.device
    fovy = torch.as_tensor(fovy_deg, dtype=torch.float32, device=dev).reshape(-1).expand(B)
    focal = 0.5 * height / torch.tan(torch.deg2rad(fovy) / 2)                            # [B] pixels
    j = torch.arange(width, device=dev, dtype=torch.float32) + 0.5
    i = torch.arange(height, device=dev, dtype=torch.float32) + 0.5
    ii, jj = torch.meshgrid(i, j, indexing="ij")                                          # [H,W]
    x = (jj - width / 2)[None] / focal[:, None, None]
    y = -(ii - height / 2)[None] / focal[:, None, None]
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)                              # [B,H,W,3]
    d = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3].float(), d_cam)
    d = torch.nn.functional.normalize(d, dim=-1)
    return c2w[:, None, None, :3, 3].float().expand_as(d), d
