"""``NeRFField``: hash-grid density + albedo field in a bounded cube, threestudio's ``implicit-volume`` geometry.

World points ``x`` (z up, world units) inside the cube ``[-radius, radius]^3`` are mapped to ``[0,1]^3`` and encoded
by the hash grid; two bias-free ReLU MLPs (tiny-cuda-nn's ``FullyFusedMLP`` has no biases, nor does threestudio's
``VanillaMLP``) map the encoding to a raw density and 3 raw albedo features.

* density ``sigma = softplus(raw + bias(x))`` (1 / world unit), with the "blob_magic3d" bias
  ``bias(x) = scale * (1 - |x| / std)`` (scale 10, std 0.5) that starts the optimisation from a ball.
* albedo ``sigmoid(features)`` in (0, 1).
* analytic normals ``n = -normalize(d raw_density / d x)`` (threestudio differentiates the pre-activation density
  for stability). Computed by forward-mode differentiation: the hash grid returns the Jacobian of its features and
  it is pushed through the MLP alongside the activations, so losses on normals need only first-order autograd.
  ``normal_type="finite_difference"`` uses central differences of the density with step ``fd_eps`` instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import Zero123Error
from .hash_grid import BACKENDS as HASH_GRID_BACKENDS
from .hash_grid import HashGridEncoding


@dataclass
class FieldConfig:
    """Sizes of the field (defaults: threestudio ``stable-zero123.yaml``)."""

    radius: float = 2.0
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378
    mlp_width: int = 64
    mlp_hidden_layers: int = 2
    density_bias: str = "blob_magic3d"      # "blob_magic3d", "blob_dreamfusion" or "none"
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    density_activation: str = "softplus"    # "softplus" or "exp"
    normal_type: str = "analytic"           # "analytic" or "finite_difference"
    fd_eps: float = 0.01
    chunk: int = 1 << 18                    # points per hash-grid chunk (PyTorch path)
    encoding_backend: str = "auto"          # "auto" (Triton kernels on CUDA), "torch" or "triton"
    checkpoint_mlp: bool = True             # recompute MLP activations in backward (saves memory)
    mlp_dtype: str = "float32"              # "float32", "bfloat16" or "float16": the MLPs (and their Jacobian)
                                            # under autocast; encoding, density bias and activations stay float32

    def to_dict(self) -> dict:
        return asdict(self)


MLP_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mlp(n_in: int, n_out: int, width: int, hidden: int) -> nn.ModuleList:
    dims = [n_in] + [width] * hidden + [n_out]
    return nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))


def _mlp_forward(layers, h):
    for i, lin in enumerate(layers):
        h = lin(h)
        if i < len(layers) - 1:
            h = F.relu(h)
    return h


def _mlp_forward_with_jacobian(weights, h, dh):
    """h [N,D], dh [N,3,D] (d h / d x, transposed) -> (out [N,O], d out / d x [N,3,O])."""
    n = len(weights)
    for i, w in enumerate(weights):
        h = h @ w.t()
        dh = dh @ w.t()
        if i < n - 1:
            active = h > 0                                  # the ReLU's derivative, kept as a bool mask
            h = torch.relu(h)
            dh = torch.where(active[:, None, :], dh, 0.0)
    return h, dh


@dataclass
class FieldOutput:
    """Per-point field values. ``density`` [N] (1/world unit, >= 0), ``raw_density`` [N] (pre-activation),
    ``albedo`` [N,3] in (0,1) or None, ``normal`` [N,3] unit outward normals or None."""

    density: torch.Tensor
    raw_density: torch.Tensor
    albedo: torch.Tensor | None = None
    normal: torch.Tensor | None = None


class NeRFField(nn.Module):
    """Density/albedo field over world points ``[N,3]`` (see module docstring)."""

    def __init__(self, config: FieldConfig | None = None):
        super().__init__()
        self.config = config = config or FieldConfig()
        if config.radius <= 0:
            raise Zero123Error(f"field radius must be > 0, got {config.radius}")
        if config.normal_type not in ("analytic", "finite_difference"):
            raise Zero123Error(f"unknown normal_type {config.normal_type!r}: use 'analytic' or 'finite_difference'")
        if config.density_bias not in ("blob_magic3d", "blob_dreamfusion", "none"):
            raise Zero123Error(f"unknown density_bias {config.density_bias!r}")
        if config.encoding_backend not in HASH_GRID_BACKENDS:
            raise Zero123Error(f"unknown encoding_backend {config.encoding_backend!r}: use one of "
                               f"{', '.join(HASH_GRID_BACKENDS)}")
        if config.density_activation not in ("softplus", "exp"):
            raise Zero123Error(f"unknown density_activation {config.density_activation!r}")
        if config.mlp_dtype not in MLP_DTYPES:
            raise Zero123Error(f"unknown mlp_dtype {config.mlp_dtype!r}: use one of {', '.join(MLP_DTYPES)}")
        self.encoding = HashGridEncoding(config.n_levels, config.n_features_per_level, config.log2_hashmap_size,
                                         config.base_resolution, config.per_level_scale, chunk=config.chunk,
                                         backend=config.encoding_backend)
        d = self.encoding.n_output_dims
        self.density_net = _mlp(d, 1, config.mlp_width, config.mlp_hidden_layers)
        self.feature_net = _mlp(d, 3, config.mlp_width, config.mlp_hidden_layers)

    @property
    def radius(self) -> float:
        return float(self.config.radius)

    # ----- pieces -----------------------------------------------------------------------------------------
    def normalize_points(self, x: torch.Tensor) -> torch.Tensor:
        """World points -> [0,1]^3 (clamped to the cube)."""
        return ((x + self.radius) / (2 * self.radius)).clamp(0.0, 1.0)

    def density_bias(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation density bias [N] at world points x [N,3]."""
        c = self.config
        if c.density_bias == "blob_magic3d":
            return c.density_blob_scale * (1 - x.norm(dim=-1) / c.density_blob_std)
        if c.density_bias == "blob_dreamfusion":
            return c.density_blob_scale * torch.exp(-0.5 * (x * x).sum(-1) / c.density_blob_std ** 2)
        return torch.zeros_like(x[..., 0])

    def density_bias_grad(self, x: torch.Tensor) -> torch.Tensor:
        """d bias / d x [N,3]."""
        c = self.config
        if c.density_bias == "blob_magic3d":
            return -c.density_blob_scale / c.density_blob_std * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if c.density_bias == "blob_dreamfusion":
            b = c.density_blob_scale * torch.exp(-0.5 * (x * x).sum(-1, keepdim=True) / c.density_blob_std ** 2)
            return -b * x / c.density_blob_std ** 2
        return torch.zeros_like(x)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        if self.config.density_activation == "softplus":
            return F.softplus(raw)
        return torch.exp(raw.clamp(max=15.0))

    def _autocast(self, device: torch.device):
        """The MLPs' precision (``mlp_dtype``): autocast of their matmuls and element-wise work (the weights and
        their gradients stay float32; outputs are cast back to float32 by the callers)."""
        dtype = MLP_DTYPES[self.config.mlp_dtype]
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _mlp(self, layers, h):
        with self._autocast(h.device):
            if self.config.checkpoint_mlp and torch.is_grad_enabled() and h.requires_grad:
                out = checkpoint(_mlp_forward, layers, h, use_reentrant=False)
            else:
                out = _mlp_forward(layers, h)
        return out.float()

    # ----- public -----------------------------------------------------------------------------------------
    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Activated density ``[N]`` at world points ``x`` ``[N,3]``."""
        x = x.reshape(-1, 3)
        enc, _ = self.encoding(self.normalize_points(x))
        raw = self._mlp(self.density_net, enc)[:, 0] + self.density_bias(x)
        return self.activate(raw)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        """Albedo ``[N,3]`` in (0,1) at world points ``x`` ``[N,3]``."""
        enc, _ = self.encoding(self.normalize_points(x.reshape(-1, 3)))
        return torch.sigmoid(self._mlp(self.feature_net, enc))

    def forward(self, x: torch.Tensor, with_albedo: bool = True, with_normal: bool = False) -> FieldOutput:
        """Evaluate the field at world points ``x`` ``[N,3]`` (see :class:`FieldOutput`)."""
        x = x.reshape(-1, 3)
        analytic = with_normal and self.config.normal_type == "analytic"
        xn = self.normalize_points(x)
        enc, jac = self.encoding(xn, with_jacobian=analytic)
        normal = None
        if analytic:
            # d enc / d x_world = d enc / d x01 * 1/(2r); zero outside the cube (clamped)
            inside = ((x > -self.radius) & (x < self.radius)).to(jac.dtype)          # [N,3]
            djac = jac.transpose(1, 2) * (inside / (2 * self.radius))[:, :, None]    # [N,3,D]
            weights = [lin.weight for lin in self.density_net]
            with self._autocast(x.device):
                if self.config.checkpoint_mlp and torch.is_grad_enabled() and (enc.requires_grad or
                                                                               djac.requires_grad):
                    raw_mlp, draw = checkpoint(_mlp_forward_with_jacobian, weights, enc, djac, use_reentrant=False)
                else:
                    raw_mlp, draw = _mlp_forward_with_jacobian(weights, enc, djac)
            raw_mlp, draw = raw_mlp.float(), draw.float()
            raw = raw_mlp[:, 0] + self.density_bias(x)
            grad = draw[:, :, 0] + self.density_bias_grad(x)
            normal = -F.normalize(grad, dim=-1)
        else:
            raw = self._mlp(self.density_net, enc)[:, 0] + self.density_bias(x)
        density = self.activate(raw)
        if with_normal and not analytic:
            normal = self.finite_difference_normal(x)
        albedo = torch.sigmoid(self._mlp(self.feature_net, enc)) if with_albedo else None
        return FieldOutput(density=density, raw_density=raw, albedo=albedo, normal=normal)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """Unit outward normals ``[N,3]`` at world points (the configured ``normal_type``)."""
        return self.forward(x, with_albedo=False, with_normal=True).normal

    def finite_difference_normal(self, x: torch.Tensor) -> torch.Tensor:
        """Central-difference normals of the activated density (threestudio's ``finite_difference``)."""
        eps = self.config.fd_eps
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        pts = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1)    # [N,6,3]
        pts = pts.clamp(-self.radius, self.radius)
        d = self.density(pts.reshape(-1, 3)).view(-1, 6)
        grad = (d[:, :3] - d[:, 3:]) / (2 * eps)
        return -F.normalize(grad, dim=-1)
