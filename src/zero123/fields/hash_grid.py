"""Multi-resolution hash-grid encoding (Instant-NGP / tiny-cuda-nn ``HashGrid``) in pure PyTorch.

Input points are in the unit cube ``[0, 1]^3``. Level ``l`` has ``scale_l = base_resolution * per_level_scale**l
- 1`` and ``resolution_l = ceil(scale_l) + 1`` grid vertices per axis (tiny-cuda-nn's convention); a point maps to
``pos = x * scale_l + 0.5`` and is trilinearly interpolated from the 8 surrounding vertices. Coarse levels whose
``resolution_l**3`` vertices fit in the table are indexed densely (``x + y*R + z*R^2``), the others through the
coherent prime hash ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861)`` modulo the (power-of-two) table size, as
tiny-cuda-nn does (dense levels clamp the far-boundary vertex instead of wrapping). Parameters of all levels live
in one ``[sum(T_l), F]`` table (init U(-1e-4, 1e-4)).

Besides the features the encoder can return their **spatial Jacobian** ``d features / d x`` (analytic derivative of
the trilinear weights), so analytic normals need no double backward: both outputs are linear in the table, and
the custom autograd function below recomputes the corner indices in its backward instead of storing them (it
saves only the input points, so memory per point is a few bytes instead of ``levels x 8`` indices), except on a
CPU for batches under ``KEEP_CORNERS_BYTES``, where memory is cheap and the recomputation is not.
No gradient flows to the input points (ray samples are not optimised).

On CUDA the same arithmetic runs as two Triton kernels (:mod:`zero123.fields.hash_grid_triton`) when Triton is
installed (it ships with PyTorch's CUDA wheels); ``backend="torch"`` forces this file's PyTorch path.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
from torch import nn

_PRIMES = (1, 2654435761, 805459861)


def level_layout(n_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float):
    """Per-level ``(scale, resolution, table_size, dense)`` lists, tiny-cuda-nn's arithmetic."""
    scales, resolutions, sizes, dense = [], [], [], []
    max_size = 2 ** log2_hashmap_size
    for level in range(n_levels):
        scale = base_resolution * per_level_scale ** level - 1.0
        res = int(math.ceil(scale)) + 1
        n_dense = res ** 3
        n_dense = (n_dense + 7) // 8 * 8
        size = min(max_size, n_dense)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(size)
        dense.append(n_dense <= max_size)
    return scales, resolutions, sizes, dense


class _Layout:
    """Index tensors of the layout on one device (cached per device). Dense levels come first (coarse)."""

    def __init__(self, scales, resolutions, sizes, dense, device):
        self.n_levels = len(scales)
        self.n_dense = int(sum(dense))
        if any(dense[self.n_dense:]):
            raise ValueError("dense levels must precede hashed levels")
        self.scales = torch.tensor(scales, dtype=torch.float32, device=device)            # [L]
        self.res = torch.tensor(resolutions, dtype=torch.int64, device=device)            # [L]
        self.sizes = torch.tensor(sizes, dtype=torch.int64, device=device)                # [L]
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)           # [L]
        hashed_sizes = set(sizes[self.n_dense:])
        if len(hashed_sizes) > 1 or any(h & (h - 1) for h in hashed_sizes):
            raise ValueError("hashed levels must share one power-of-two table size")
        self.hash_mask = (next(iter(hashed_sizes)) - 1) if hashed_sizes else 0
        self.primes = torch.tensor(_PRIMES, dtype=torch.int64, device=device)             # [3] (Triton kernels)
        # the PyTorch path's int32 copies (_corners): every index fits (tables hold < 2^31 rows) and the hash only
        # keeps the low bits, which a wrapping 32-bit product gives as a 64-bit one does
        if sum(sizes) >= 2 ** 31:
            raise ValueError("hash-grid tables must hold fewer than 2^31 rows")
        self.res32, self.offsets32 = self.res.int(), self.offsets.int()
        self.primes32 = tuple(_wrap_int32(p) for p in _PRIMES)
        self.bit32 = torch.tensor([0, 1], dtype=torch.int32, device=device)               # [2]


def _wrap_int32(v: int) -> int:
    """``v`` modulo 2^32 as a signed 32-bit value (the same low 32 bits)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _corners(x: torch.Tensor, lay: _Layout):
    """For points ``x`` [N,3] in [0,1]: flat table indices [N,L,8] (int32) of the 8 corners (corner ``c = dx + 2
    dy + 4 dz``, so ``idx.view(N,L,2,2,2)`` is indexed ``[z,y,x]``) and the fractional positions ``frac`` [N,L,3]
    in [0,1) inside each level's cell. Per-axis terms are formed on [N,L,2] tensors and combined by broadcasting,
    which keeps the integer work on [N,L,8] to one xor/add per axis. The hash's products wrap in 32 bits, as
    tiny-cuda-nn's uint32 arithmetic does; its low bits, all the table mask keeps, equal the exact products'."""
    n, L, D = x.shape[0], lay.n_levels, lay.n_dense
    pos = x[:, None, :].float() * lay.scales[None, :, None] + 0.5            # [N,L,3]
    base_f = torch.floor(pos)
    frac = pos - base_f                                                      # [N,L,3] in [0,1)
    coord = base_f.int()[..., None] + lay.bit32                              # [N,L,3,2] corner coordinate per axis
    cx, cy, cz = coord.unbind(2)                                             # each [N,L,2]
    parts = []
    if D > 0:
        res = lay.res32[:D, None]
        hi = res - 1
        dx, dy, dz = cx[:, :D].clamp(max=hi), cy[:, :D].clamp(max=hi), cz[:, :D].clamp(max=hi)
        di = (dz * (res * res))[:, :, :, None, None] + (dy * res)[:, :, None, :, None] + dx[:, :, None, None, :]
        parts.append(di.reshape(n, D, 8))
    if D < L:
        hx, hy, hz = (c[:, D:] * p for c, p in zip((cx, cy, cz), lay.primes32))
        hi_ = hz[:, :, :, None, None] ^ hy[:, :, None, :, None] ^ hx[:, :, None, None, :]
        parts.append(hi_.reshape(n, L - D, 8) & lay.hash_mask)
    idx = (torch.cat(parts, 1) if len(parts) > 1 else parts[0]) + lay.offsets32[None, :, None]   # [N,L,8]
    return idx, frac


def _interpolate(vals: torch.Tensor, frac: torch.Tensor, scales: torch.Tensor, with_jacobian: bool):
    """Trilinear interpolation of corner values ``vals`` [N,L,2,2,2,F] (``[z,y,x]``) at ``frac`` [N,L,3] by
    successive lerps along x, y, z: features [N,L,F] and, optionally, their derivative w.r.t. the unit-cube point
    [N,L,F,3] (``scales`` [L]: the level scales, d pos / d x). The derivative along an axis is the difference of
    the two faces' lerps times the scale, so it shares the lerps of the features (no [N,L,8,3] weights)."""
    f = frac.to(vals.dtype)
    fx, fy, fz = f[:, :, 0, None, None, None], f[:, :, 1, None, None], f[:, :, 2, None]
    vx = torch.lerp(vals[..., 0, :], vals[..., 1, :], fx)                    # [N,L,2z,2y,F]
    vxy = torch.lerp(vx[:, :, :, 0], vx[:, :, :, 1], fy)                     # [N,L,2z,F]
    feat = torch.lerp(vxy[:, :, 0], vxy[:, :, 1], fz)                        # [N,L,F]
    if not with_jacobian:
        return feat, None
    s = scales.to(vals.dtype)[None, :, None]                                 # [1,L,1]
    d_x = vals[..., 1, :] - vals[..., 0, :]                                  # [N,L,2z,2y,F]
    d_x = torch.lerp(d_x[:, :, :, 0], d_x[:, :, :, 1], fy)
    d_y = vx[:, :, :, 1] - vx[:, :, :, 0]                                    # [N,L,2z,F]
    jx = torch.lerp(d_x[:, :, 0], d_x[:, :, 1], fz)
    jy = torch.lerp(d_y[:, :, 0], d_y[:, :, 1], fz)
    jz = vxy[:, :, 1] - vxy[:, :, 0]
    return feat, torch.stack([jx, jy, jz], dim=-1) * s[..., None]


def _lerp_adjoint(g: torch.Tensor, t: torch.Tensor, extra=None) -> torch.Tensor:
    """The adjoint of ``y = lerp(a, b, t)`` (plus a difference output ``d = b - a`` whose gradient is ``extra``):
    ``(d/da, d/db)`` stacked on a new axis -2: ``gb = t g + extra`` and ``ga = g - gb`` (= ``(1 - t) g - extra``)."""
    gb = t * g if extra is None else torch.addcmul(extra, t, g)
    return torch.stack([g - gb, gb], dim=-2)


def _interpolate_backward(frac: torch.Tensor, scales: torch.Tensor, g, gj):
    """The adjoint of :func:`_interpolate`: d loss / d corner values [N,L,2,2,2,F] (``[z,y,x]``, float32) from
    ``g`` = d loss / d features [N,L,F] and ``gj`` = d loss / d Jacobian [N,L,F,3] (either may be None), by the
    adjoints of its lerps taken in reverse (z, then y, then x)."""
    fx, fy, fz = frac[:, :, 0, None, None, None], frac[:, :, 1, None, None], frac[:, :, 2, None]
    if gj is None:
        return _lerp_adjoint(_lerp_adjoint(_lerp_adjoint(g, fz), fy), fx)
    s = scales[None, :, None]                                                # [1,L,1]
    gjx, gjy, gjz = (gj[..., k] * s for k in range(3))                        # [N,L,F], times d pos / d x
    g_vxy = _lerp_adjoint(torch.zeros_like(gjz) if g is None else g, fz, gjz)  # [N,L,2z,F]: features and jz
    g_dy = _lerp_adjoint(gjy, fz)                                            # [N,L,2z,F]: jy = lerp_z(d_y)
    g_vx = _lerp_adjoint(g_vxy, fy, g_dy)                                    # [N,L,2z,2y,F]
    g_dx = _lerp_adjoint(_lerp_adjoint(gjx, fz), fy)                         # [N,L,2z,2y,F]: jx = lerp_z(lerp_y(d_x))
    return _lerp_adjoint(g_vx, fx, g_dx)                                     # [N,L,2z,2y,2x,F]


BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Whether the Triton kernels can run here (Triton importable and a CUDA device present)."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


class _TritonHashGridFunction(torch.autograd.Function):
    """Forward/backward through the Triton kernels (same outputs as ``_HashGridFunction``)."""

    @staticmethod
    def forward(ctx, x, table, lay, with_jacobian):
        from .hash_grid_triton import hash_grid_forward

        ctx.save_for_backward(x)
        ctx.lay, ctx.table_shape, ctx.table_dtype = lay, table.shape, table.dtype
        return hash_grid_forward(x, table, lay, with_jacobian)

    @staticmethod
    def backward(ctx, grad_feat, grad_jac):
        from .hash_grid_triton import hash_grid_backward

        (x,) = ctx.saved_tensors
        grad_table = hash_grid_backward(x, grad_feat, grad_jac, ctx.table_shape, ctx.lay)
        return None, grad_table.to(ctx.table_dtype), None, None


#: corner indices and fractions a CPU forward keeps for its backward, in bytes (int32 [N,L,8] + float32 [N,L,3]:
#: ``_CORNER_BYTES`` a point and level); a larger batch, and any CUDA batch, recomputes them in backward instead
KEEP_CORNERS_BYTES = 256 << 20
_CORNER_BYTES = 8 * 4 + 3 * 4


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, lay, with_jacobian, chunk, keep_corners):
        feats, jacs = [], []
        n_feat = table.shape[1]
        ctx.corners = [] if keep_corners else None
        for s in range(0, x.shape[0], chunk):
            idx, frac = _corners(x[s:s + chunk], lay)
            if ctx.corners is not None:
                ctx.corners.append((idx, frac))
            vals = torch.index_select(table, 0, idx.reshape(-1)).view(*idx.shape[:2], 2, 2, 2, n_feat)
            feat, jac = _interpolate(vals, frac, lay.scales, with_jacobian)
            feats.append(feat.flatten(1))
            if with_jacobian:
                jacs.append(jac.flatten(1, 2))                                # [n, L*F, 3]
        ctx.save_for_backward(x)
        ctx.lay, ctx.with_jacobian, ctx.chunk, ctx.table_shape = lay, with_jacobian, chunk, table.shape
        ctx.table_dtype = table.dtype
        feat = torch.cat(feats) if feats else table.new_zeros(0, lay.scales.numel() * table.shape[1])
        if with_jacobian:
            jac = torch.cat(jacs) if jacs else table.new_zeros(0, feat.shape[1], 3)
            return feat, jac
        return feat, None

    @staticmethod
    def backward(ctx, grad_feat, grad_jac):
        (x,) = ctx.saved_tensors
        lay = ctx.lay
        n_levels = lay.scales.numel()
        n_feat = ctx.table_shape[1]
        grad_table = torch.zeros(ctx.table_shape, dtype=torch.float32, device=x.device)
        use_jac = ctx.with_jacobian and grad_jac is not None
        if grad_feat is None and not use_jac:  # nothing flows back into the table
            return None, grad_table.to(ctx.table_dtype), None, None, None, None
        for i, s in enumerate(range(0, x.shape[0], ctx.chunk)):
            idx, frac = ctx.corners[i] if ctx.corners is not None else _corners(x[s:s + ctx.chunk], lay)
            g = grad_feat[s:s + ctx.chunk].float().view(-1, n_levels, n_feat) if grad_feat is not None else None
            gj = grad_jac[s:s + ctx.chunk].float().view(-1, n_levels, n_feat, 3) if use_jac else None
            coef = _interpolate_backward(frac, lay.scales, g, gj)                 # [n,L,2,2,2,F]
            # int64 here: index_add_ on CPU takes a far slower path with an int32 index (10x at 2.6 M rows)
            grad_table.index_add_(0, idx.reshape(-1).long(), coef.reshape(-1, n_feat))
        ctx.corners = None
        return None, grad_table.to(ctx.table_dtype), None, None, None, None


class HashGridEncoding(nn.Module):
    """``[N,3]`` points in [0,1] -> ``[N, n_levels * n_features]`` features (and optionally their Jacobian).

    Args mirror tiny-cuda-nn's ``HashGrid`` config: ``n_levels`` (16), ``n_features_per_level`` (2),
    ``log2_hashmap_size`` (19), ``base_resolution`` (16), ``per_level_scale`` (1.4473 -> finest 4096).
    ``chunk``: points processed at once inside forward/backward of the PyTorch path (bounds temporary memory
    ~ chunk * L * 8 * 24 B). ``backend``: ``"auto"`` (Triton kernels for CUDA inputs when available, else
    PyTorch), ``"torch"`` or ``"triton"``.
    """

    def __init__(self, n_levels: int = 16, n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 1.447269237440378, chunk: int = 1 << 18,
                 backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown hash-grid backend {backend!r}: use one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.n_levels, self.n_features_per_level = n_levels, n_features_per_level
        self.chunk = int(chunk)
        self._layout_args = level_layout(n_levels, log2_hashmap_size, base_resolution, per_level_scale)
        total = sum(self._layout_args[2])
        self.table = nn.Parameter(torch.empty(total, n_features_per_level).uniform_(-1e-4, 1e-4))
        self._layouts: dict = {}

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    @property
    def resolutions(self) -> list:
        return list(self._layout_args[1])

    def _layout(self, device) -> _Layout:
        key = str(device)
        if key not in self._layouts:
            self._layouts[key] = _Layout(*self._layout_args, device=device)
        return self._layouts[key]

    def use_triton(self, x: torch.Tensor) -> bool:
        """Whether points ``x`` go through the Triton kernels (see ``backend``)."""
        if self.backend == "torch":
            return False
        if self.backend == "triton":
            if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError("hash-grid backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on a CPU)")
            return True
        return x.is_cuda and triton_available()

    def forward(self, x: torch.Tensor, with_jacobian: bool = False):
        """Returns ``features [N, L*F]`` and, when ``with_jacobian``, ``d features / d x`` ``[N, L*F, 3]``
        (else ``None``). ``x`` is detached: no gradient flows to the points."""
        x = x.detach().reshape(-1, 3).contiguous()
        if self.use_triton(x):
            return _TritonHashGridFunction.apply(x.float(), self.table, self._layout(x.device), bool(with_jacobian))
        keep = (x.device.type == "cpu" and torch.is_grad_enabled() and self.table.requires_grad
                and x.shape[0] * self.n_levels * _CORNER_BYTES <= KEEP_CORNERS_BYTES)
        return _HashGridFunction.apply(x, self.table, self._layout(x.device), bool(with_jacobian), self.chunk, keep)
