"""The parameters of a 3D Gaussian scene (SH degree 0) and their activations.

Gaussian ``i`` has a centre ``means[i]`` (world units, the z-up world of :mod:`zero123.camera`), a covariance
``R_i S_i S_i R_i^T`` with ``S_i = diag(exp(log_scales[i]))`` and ``R_i`` the rotation of the unit quaternion
``quats[i] / |quats[i]|`` (``(w, x, y, z)``, scalar first), an opacity ``sigmoid(opacity_logits[i])`` and a colour
``clamp(0.5 + C0 * sh0[i], 0, 1)`` with ``C0 = 0.28209479`` (the degree-0 real spherical harmonic, as 3DGS).

The number of Gaussians changes during training (densification, :mod:`.densify`); ``load_state_dict`` accepts a
state of another count and resizes every parameter *in place* (the ``nn.Parameter`` objects stay the same, so an
optimiser built on them stays valid).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import Zero123Error
from .config import GaussianConfig

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh0")
# per-Gaussian statistics kept with the state (densification: :mod:`.densify`)
STAT_NAMES = ("grad_accum", "grad_count")


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[N,3,3]`` of quaternions ``[N,4]`` ``(w, x, y, z)`` (normalised here)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


def knn_mean_sq_distance(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean squared distance of each point to its ``k`` nearest other points (what ``simple_knn.distCUDA2``
    returns for k = 3), by scipy's KD-tree; ``[N]`` float64."""
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return np.full(len(points), 1e-4)
    k = min(k, len(points) - 1)
    dist, _ = cKDTree(points).query(points, k=k + 1)
    return np.square(dist[:, 1:]).mean(-1)


class GaussianModel(torch.nn.Module):
    """``N`` Gaussians: parameters ``means`` [N,3], ``log_scales`` [N,3], ``quats`` [N,4], ``opacity_logits`` [N],
    ``sh0`` [N,3]; buffers ``grad_accum`` [N], ``grad_count`` [N] (densification statistics)."""

    def __init__(self, config: Optional[GaussianConfig] = None, num_points: Optional[int] = None):
        super().__init__()
        self.config = config or GaussianConfig()
        if self.config.sh_degree != 0:
            raise Zero123Error(f"gaussians.sh_degree {self.config.sh_degree} is not supported: only 0 is")
        n = self.config.num_points if num_points is None else int(num_points)
        if n < 1:
            raise Zero123Error(f"gaussians.num_points must be >= 1, got {n}")
        self.means = torch.nn.Parameter(torch.zeros(n, 3))
        self.log_scales = torch.nn.Parameter(torch.full((n, 3), math.log(0.01)))
        self.quats = torch.nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))
        self.opacity_logits = torch.nn.Parameter(torch.full((n,), float(inverse_sigmoid(torch.tensor(0.1)))))
        self.sh0 = torch.nn.Parameter(torch.zeros(n, 3))
        self.register_buffer("grad_accum", torch.zeros(n))
        self.register_buffer("grad_count", torch.zeros(n))

    # ----- initialisation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_in_sphere(self, generator: Optional[torch.Generator] = None) -> "GaussianModel":
        """DreamGaussian's random start: centres uniform in the ball of radius ``init_radius`` (direction uniform on
        the sphere, radius ``r * cbrt(U)``), SH0 ``U(0, init_color_max)``, opacity ``init_opacity``, isotropic
        scales ``sqrt(mean squared distance to the 3 nearest neighbours)``, identity rotations. Draws from
        ``generator`` (CPU) or the global torch generator."""
        c, n = self.config, len(self)
        u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
        phi = u[:, 0] * 2 * math.pi
        cos_t = u[:, 1] * 2 - 1
        sin_t = torch.sqrt((1 - cos_t ** 2).clamp_min(0))
        r = c.init_radius * torch.pow(u[:, 2], 1.0 / 3.0)
        xyz = torch.stack([r * sin_t * torch.cos(phi), r * sin_t * torch.sin(phi), r * cos_t], -1)
        sh = torch.rand(n, 3, generator=generator) * c.init_color_max
        d2 = np.clip(knn_mean_sq_distance(xyz.numpy()), 1e-7, None)
        dev = self.means.device
        self.means.copy_(xyz.float().to(dev))
        self.log_scales.copy_(torch.from_numpy(0.5 * np.log(d2)).float()[:, None].expand(n, 3).to(dev))
        self.quats.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).expand(n, 4))
        self.opacity_logits.fill_(float(inverse_sigmoid(torch.tensor(c.init_opacity, dtype=torch.float64))))
        self.sh0.copy_(sh.to(dev))
        self.grad_accum.zero_()
        self.grad_count.zero_()
        return self

    # ----- activations ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> torch.Tensor:
        """``[N,3]`` standard deviations along the Gaussian's own axes, world units."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        """``[N]`` in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> torch.Tensor:
        """``[N,3]`` RGB in [0, 1] (SH degree 0)."""
        return (0.5 + SH_C0 * self.sh0).clamp(0.0, 1.0)

    def rotations(self) -> torch.Tensor:
        """``[N,3,3]``: column ``k`` is the world direction of the Gaussian's axis ``k``."""
        return quaternion_to_matrix(self.quats)

    def covariances(self) -> torch.Tensor:
        """``[N,3,3]`` world covariance ``R S^2 R^T``."""
        rs = self.rotations() * self.scales[:, None, :]
        return rs @ rs.transpose(-1, -2)

    def shortest_axes(self) -> torch.Tensor:
        """``[N,3]`` unit world direction of each Gaussian's shortest axis (its normal for a flat Gaussian; the
        sign is arbitrary: the renderer turns it toward the camera)."""
        idx = self.log_scales.argmin(-1)
        rot = self.rotations()
        return rot.gather(2, idx[:, None, None].expand(-1, 3, 1))[..., 0]

    # ----- state ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_tensors(self, tensors: dict, optimizer: Optional[torch.optim.Optimizer] = None,
                    moments: Optional[dict] = None, new_leaves: bool = True) -> None:
        """Replace every parameter and statistic by ``tensors[name]`` (a new count is allowed).

        ``new_leaves`` (densification during training): each parameter becomes a new ``nn.Parameter``, which takes
        the old one's place in ``optimizer``'s param group with the per-Gaussian optimiser state ``moments[name]``
        (``{state key: tensor}``; other entries, e.g. Adam's ``step``, are kept). A new leaf is needed there:
        autograd caches a leaf's shape, so resizing ``.data`` of a parameter that graphs have used breaks the next
        backward. ``new_leaves=False`` (loading a state, before any graph): ``.data`` is swapped in place, so the
        ``nn.Parameter`` objects, and an optimiser already built on them, stay valid."""
        n = tensors["means"].shape[0]
        for name in PARAM_NAMES + STAT_NAMES:
            value = tensors[name]
            if value.shape[0] != n:
                raise Zero123Error(f"gaussian state: {name} has {value.shape[0]} rows, means has {n}")
            old = getattr(self, name)
            value = value.detach().to(device=old.device, dtype=old.dtype).contiguous()
            if not isinstance(old, torch.nn.Parameter):
                old.data = value
            elif not new_leaves:
                old.data = value
                old.grad = None
            else:
                new = torch.nn.Parameter(value, requires_grad=old.requires_grad)
                for group in (optimizer.param_groups if optimizer is not None else []):
                    group["params"] = [new if p is old else p for p in group["params"]]
                state = optimizer.state.pop(old, None) if optimizer is not None else None
                if state is not None:
                    state.update((moments or {}).get(name, {}))
                    optimizer.state[new] = state
                setattr(self, name, new)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Resize to the state's number of Gaussians (in place) before ``nn.Module`` copies the tensors, so
        ``load_state_dict`` of this module or of any module holding it accepts another count."""
        key = prefix + "means"
        if key in state_dict and state_dict[key].shape[0] != len(self):
            n = state_dict[key].shape[0]
            self.set_tensors({name: getattr(self, name).new_zeros((n, *getattr(self, name).shape[1:]))
                              for name in PARAM_NAMES + STAT_NAMES}, new_leaves=False)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
