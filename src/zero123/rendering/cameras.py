"""Cameras for field rendering: ray bundles and the image-to-3D recipe's camera sampling.

Thin users of :mod:`zero123.camera`, where the maths lives: matrices from :func:`zero123.camera.camera_to_world`
(z-up world, OpenGL camera axes: the camera looks down its -z, +y up in the image), rays from
:func:`zero123.camera.pixel_rays`, band elevations from :func:`zero123.camera.sphere_band_elevation`. Angles are
degrees, distances world units. Pixel ``(row i, col j)`` of an
``H x W`` image shoots the ray through its centre ``(j + 0.5, i + 0.5)``; row 0 is the top of the image.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..camera import camera_to_world, pixel_rays, position_from_spherical, sphere_band_elevation
from ..errors import Zero123Error


@dataclass
class Cameras:
    """A batch of orbit cameras looking at the origin.

    ``c2w`` [B,4,4]; ``elevation``/``azimuth`` [B] degrees; ``radius`` [B]; ``fovy`` [B] vertical field of view in
    degrees; ``light_positions`` [B,3] world positions of the point light (used by diffuse/textureless shading).
    """

    c2w: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    radius: torch.Tensor
    fovy: torch.Tensor
    light_positions: torch.Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def _map(self, fn) -> "Cameras":
        return Cameras(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device) -> "Cameras":
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index: slice) -> "Cameras":
        """The cameras ``index`` (a slice) of the batch."""
        return self._map(lambda t: t[index])


def orbit_cameras(elevation, azimuth, radius, fovy, light_positions=None) -> Cameras:
    """Cameras at spherical positions (degrees / world units, broadcast to one batch); light at the camera."""
    e, a, r, f = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float32).reshape(-1)
                                           for v in (elevation, azimuth, radius, fovy)))
    c2w = camera_to_world(e, a, r)
    if light_positions is None:
        light_positions = c2w[:, :3, 3].clone()
    return Cameras(c2w=c2w, elevation=e.clone(), azimuth=a.clone(), radius=r.clone(), fovy=f.clone(),
                   light_positions=torch.as_tensor(light_positions, dtype=torch.float32).reshape(-1, 3))


def turntable_cameras(n: int, elevation: float, radius: float, fovy: float, start_azimuth: float = 0.0) -> Cameras:
    """``n`` cameras evenly spaced in azimuth (a full turn, counter-clockwise seen from above)."""
    az = start_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    az = torch.remainder(az + 180.0, 360.0) - 180.0
    return orbit_cameras(elevation, az, radius, fovy)


def sample_cameras(batch_size: int, generator: torch.Generator, elevation_range=(-10.0, 80.0),
                   azimuth_range=(-180.0, 180.0), distance_range=(3.8, 3.8), fovy_range=(20.0, 20.0),
                   light_distance_range=(7.5, 10.0), light_position_perturb: float = 1.0) -> Cameras:
    """threestudio's ``RandomCameraIterableDataset`` sampling (``batch_uniform_azimuth=False``, no perturbations).

    With probability 1/2 (per batch) elevations are uniform in degrees, otherwise uniform on the sphere band
    (``asin`` inverse-transform sampling); azimuth, distance and fovy are uniform in their ranges. The light
    ("dreamfusion" strategy) sits at ``normalize(camera_position + N(0, perturb^2)) * U(light_distance_range)``.
    All randomness comes from ``generator`` (a CPU generator).
    """
    if batch_size < 1:
        raise Zero123Error(f"camera batch size must be >= 1, got {batch_size}")
    lo, hi = elevation_range

    def u(a, b):
        return torch.rand(batch_size, generator=generator) * (b - a) + a

    if float(torch.rand(1, generator=generator)) < 0.5:
        elevation = u(lo, hi)
    else:
        elevation = sphere_band_elevation(torch.rand(batch_size, generator=generator), (lo, hi), "threestudio")
    azimuth = u(*azimuth_range)
    radius = u(*distance_range)
    fovy = u(*fovy_range)
    light_dist = u(*light_distance_range)
    cam_pos = position_from_spherical(elevation, azimuth, radius)
    light_dir = F.normalize(cam_pos + torch.randn(batch_size, 3, generator=generator) * light_position_perturb, dim=-1)
    light_positions = light_dir * light_dist[:, None]
    return Cameras(c2w=camera_to_world(elevation, azimuth, radius), elevation=elevation, azimuth=azimuth,
                   radius=radius, fovy=fovy, light_positions=light_positions)


def ray_bundle(c2w: torch.Tensor, fovy_deg, height: int, width: int | None = None):
    """World-space rays of every pixel (:func:`zero123.camera.pixel_rays`, ``c2w`` checked first).

    Args:
        c2w: ``[B,4,4]`` camera-to-world (OpenGL axes). fovy_deg: float or ``[B]`` vertical fov in degrees.
    Returns:
        ``origins`` ``[B,H,W,3]`` and unit ``directions`` ``[B,H,W,3]``.
    """
    width = height if width is None else width
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise Zero123Error(f"c2w must be [B,4,4], got {tuple(c2w.shape)}")
    return pixel_rays(c2w, fovy_deg, height, width)
