"""Projection of 3D Gaussians to the image plane (EWA splatting, first order), in PyTorch.

Cameras are :class:`zero123.rendering.cameras.Cameras`: ``c2w`` camera-to-world with OpenGL axes (the camera looks
down its -z, +y up in the image; :mod:`zero123.camera`) and ``fovy`` the vertical field of view in degrees. The
world-to-camera transform is :func:`zero123.camera.world_to_camera_rt` and the focal length (pixels, square pixels)
:func:`zero123.camera.fov_to_focal`. A camera-space point ``(x, y, z)`` at depth ``d = -z`` lands at pixel
coordinates ``u = W/2 + f x / d`` (right), ``v = H/2 - f y / d`` (down); pixel ``(row i, col j)`` has its centre at
``(j + 0.5, i + 0.5)``, so ``u, v`` are the rasteriser's ``means2d`` and the ray of
:func:`zero123.rendering.cameras.ray_bundle` through a pixel centre meets exactly the points that project there.

EWA (Zwicker et al. 2002, as 3DGS): the 2D covariance is ``J W Sigma W^T J^T + low_pass * I`` with ``W`` the
world-to-camera rotation and ``J`` the Jacobian of ``(u, v)`` in camera coordinates at the centre,
``J = [[f/d, 0, f x/d^2], [0, -f/d, -f y/d^2]]`` (``x/d``, ``y/d`` clamped to 1.3 x the half field of view, as
3DGS does, so Gaussians far outside the frustum do not blow up). The conic is its inverse ``(A, B, C)``; the
radius is ``ceil(3 sqrt(lambda_max))`` pixels, 0 (culled) for centres nearer than ``near`` or footprints wholly
outside the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...camera import fov_to_focal, world_to_camera_rt


@dataclass
class Projected:
    """Per camera and Gaussian: ``means2d`` [B,N,2] pixels (x right, y down), ``conics`` [B,N,3] ``(A, B, C)`` of
    the inverse 2D covariance, ``depths`` [B,N] camera-space depth (world units, > 0 in front), ``radii`` [B,N]
    float pixels (0 = culled), ``cov2d`` [B,N,2,2] and ``points_cam`` [B,N,3] camera-space centres."""

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    cov2d: torch.Tensor
    points_cam: torch.Tensor


def focal_lengths(fovy: torch.Tensor, height: int) -> torch.Tensor:
    """``[B]`` focal lengths in pixels for vertical fields of view ``fovy`` [B] (degrees) over ``height`` px."""
    return torch.tensor([fov_to_focal(float(f), height) for f in fovy.reshape(-1).tolist()], dtype=torch.float32)


def project_gaussians(means: torch.Tensor, covariances: torch.Tensor, c2w: torch.Tensor, fovy: torch.Tensor,
                      height: int, width: int, *, near: float = 0.01, low_pass: float = 0.3) -> Projected:
    """Project ``N`` Gaussians (``means`` [N,3], world ``covariances`` [N,3,3]) into ``B`` cameras (``c2w``
    [B,4,4], ``fovy`` [B] degrees) of ``height x width`` pixels; differentiable in ``means`` and ``covariances``."""
    dev = means.device
    rt = world_to_camera_rt(c2w.detach().float().cpu()).to(dev)                  # [B,3,4] (CPU maths)
    rot, trans = rt[:, :, :3], rt[:, :, 3]
    p = torch.einsum("bij,nj->bni", rot, means) + trans[:, None, :]               # [B,N,3]
    f = focal_lengths(fovy, height).to(dev)[:, None]                              # [B,1]
    d = -p[..., 2]
    d_safe = torch.where(d > near, d, torch.full_like(d, near))
    u = width / 2 + f * p[..., 0] / d_safe
    v = height / 2 - f * p[..., 1] / d_safe
    # Jacobian at the (clamped) centre
    lim_x = 1.3 * (width / 2) / f
    lim_y = 1.3 * (height / 2) / f
    tx = torch.maximum(torch.minimum(p[..., 0] / d_safe, lim_x), -lim_x)
    ty = torch.maximum(torch.minimum(p[..., 1] / d_safe, lim_y), -lim_y)
    zero = torch.zeros_like(d_safe)
    fd = f / d_safe
    jac = torch.stack([torch.stack([fd, zero, fd * tx], -1),
                       torch.stack([zero, -fd, -fd * ty], -1)], -2)               # [B,N,2,3]
    m = jac @ rot[:, None]                                                        # [B,N,2,3]
    cov2d = m @ covariances[None] @ m.transpose(-1, -2)
    cov2d = cov2d + low_pass * torch.eye(2, device=dev)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], -1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
    radii = torch.ceil(3.0 * torch.sqrt(lam)).detach()
    visible = (d > near) & (u + radii > 0) & (u - radii < width) & (v + radii > 0) & (v - radii < height)
    radii = torch.where(visible, radii, torch.zeros_like(radii))
    return Projected(means2d=torch.stack([u, v], -1), conics=conics, depths=d, radii=radii, cov2d=cov2d,
                     points_cam=p)
