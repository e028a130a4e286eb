"""Triton kernels of the hash-grid encoding: the fast path of :mod:`zero123.fields.hash_grid` on CUDA.

Same arithmetic as the PyTorch path (``_corners`` and ``_interpolate``): per level ``pos = x * scale + 0.5``, the 8
corners ``c = dx + 2 dy + 4 dz`` of the cell, dense indexing ``x + y R + z R^2`` (clamped to ``R - 1``) on the
coarse levels and the prime hash ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861) & mask`` on the others.

* ``forward``: one program per (block of points, level) gathers the 8 corner feature rows and writes the features
  ``[N, L*F]`` and, when asked, their spatial Jacobian ``[N, L*F, 3]`` (level scale included), in float32.
* ``backward``: recomputes the corners and scatters ``w * g_feat + dw . g_jac`` into the table gradient with
  relaxed atomic adds (what tiny-cuda-nn does), so nothing per (point, level, corner) is ever stored.

The PyTorch path builds ``[N, L, 8]`` index/weight tensors and runs ~30 kernels per chunk; these two kernels replace
all of that (``bench/bench_to3d.py`` measures the effect). ``TRITON_INTERPRET=1`` runs them on CPU tensors, which
is how the CPU tests compare them with the PyTorch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _level_setup(x_ptr, scales_ptr, res_ptr, offsets_ptr, primes_ptr, n_points, n_dense, L: tl.constexpr,
                 F: tl.constexpr, BLOCK: tl.constexpr):
    """This program's points (block ``program_id(0)``) at its level (``program_id(1)``): feature lanes ``f`` [F],
    point mask ``m2`` [BLOCK,1], output columns ``col`` [BLOCK,F] of ``[N, L*F]``, scaled positions, level data."""
    lvl = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_points
    f = tl.arange(0, F)
    col = offs[:, None].to(tl.int64) * (L * F) + lvl * F + f[None, :]
    px = tl.load(x_ptr + offs * 3 + 0, mask=valid, other=0.0).to(tl.float32)
    py = tl.load(x_ptr + offs * 3 + 1, mask=valid, other=0.0).to(tl.float32)
    pz = tl.load(x_ptr + offs * 3 + 2, mask=valid, other=0.0).to(tl.float32)
    scale = tl.load(scales_ptr + lvl)
    res = tl.load(res_ptr + lvl)
    table_offset = tl.load(offsets_ptr + lvl)
    dense = lvl < n_dense
    p1 = tl.load(primes_ptr + 1)  # int64 hash primes (loaded, so that no literal is narrowed to 32 bits)
    p2 = tl.load(primes_ptr + 2)
    return (f, valid[:, None], col, px * scale + 0.5, py * scale + 0.5, pz * scale + 0.5, scale, res, table_offset,
            dense, p1, p2)


@triton.jit
def _corner(posx, posy, posz, scale, res, table_offset, dense, hash_mask, p1, p2, c: tl.constexpr):
    """Table row [BLOCK] (int64), trilinear weight [BLOCK] and its x/y/z derivatives of corner ``c``."""
    bx = tl.floor(posx)
    by = tl.floor(posy)
    bz = tl.floor(posz)
    fx = posx - bx
    fy = posy - by
    fz = posz - bz
    ox: tl.constexpr = c & 1
    oy: tl.constexpr = (c >> 1) & 1
    oz: tl.constexpr = (c >> 2) & 1
    ix = bx.to(tl.int64) + ox
    iy = by.to(tl.int64) + oy
    iz = bz.to(tl.int64) + oz
    if ox == 1:
        wx = fx
        sx = scale
    else:
        wx = 1.0 - fx
        sx = -scale
    if oy == 1:
        wy = fy
        sy = scale
    else:
        wy = 1.0 - fy
        sy = -scale
    if oz == 1:
        wz = fz
        sz = scale
    else:
        wz = 1.0 - fz
        sz = -scale
    hi = res - 1
    dense_idx = tl.minimum(ix, hi) + tl.minimum(iy, hi) * res + tl.minimum(iz, hi) * (res * res)
    hash_idx = (ix ^ (iy * p1) ^ (iz * p2)) & hash_mask
    idx = tl.where(dense, dense_idx, hash_idx) + table_offset
    return idx, wx * wy * wz, sx * wy * wz, wx * sy * wz, wx * wy * sz


@triton.jit
def _hash_grid_fwd(x_ptr, table_ptr, scales_ptr, res_ptr, offsets_ptr, primes_ptr, feat_ptr, jac_ptr, n_points,
                   n_dense, hash_mask, L: tl.constexpr, F: tl.constexpr, JAC: tl.constexpr, BLOCK: tl.constexpr):
    f, m2, col, posx, posy, posz, scale, res, table_offset, dense, p1, p2 = _level_setup(
        x_ptr, scales_ptr, res_ptr, offsets_ptr, primes_ptr, n_points, n_dense, L, F, BLOCK)
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    jx = tl.zeros([BLOCK, F], dtype=tl.float32)
    jy = tl.zeros([BLOCK, F], dtype=tl.float32)
    jz = tl.zeros([BLOCK, F], dtype=tl.float32)
    for c in tl.static_range(8):
        idx, w, dwx, dwy, dwz = _corner(posx, posy, posz, scale, res, table_offset, dense, hash_mask, p1, p2, c)
        v = tl.load(table_ptr + idx[:, None] * F + f[None, :], mask=m2, other=0.0).to(tl.float32)
        acc += w[:, None] * v
        if JAC:
            jx += dwx[:, None] * v
            jy += dwy[:, None] * v
            jz += dwz[:, None] * v
    tl.store(feat_ptr + col, acc, mask=m2)
    if JAC:
        tl.store(jac_ptr + col * 3 + 0, jx, mask=m2)
        tl.store(jac_ptr + col * 3 + 1, jy, mask=m2)
        tl.store(jac_ptr + col * 3 + 2, jz, mask=m2)


@triton.jit
def _hash_grid_bwd(x_ptr, gfeat_ptr, gjac_ptr, gtable_ptr, scales_ptr, res_ptr, offsets_ptr, primes_ptr, n_points,
                   n_dense, hash_mask, L: tl.constexpr, F: tl.constexpr, HAS_GFEAT: tl.constexpr,
                   HAS_GJAC: tl.constexpr, BLOCK: tl.constexpr):
    f, m2, col, posx, posy, posz, scale, res, table_offset, dense, p1, p2 = _level_setup(
        x_ptr, scales_ptr, res_ptr, offsets_ptr, primes_ptr, n_points, n_dense, L, F, BLOCK)
    g = tl.zeros([BLOCK, F], dtype=tl.float32)
    gx = tl.zeros([BLOCK, F], dtype=tl.float32)
    gy = tl.zeros([BLOCK, F], dtype=tl.float32)
    gz = tl.zeros([BLOCK, F], dtype=tl.float32)
    if HAS_GFEAT:
        g = tl.load(gfeat_ptr + col, mask=m2, other=0.0).to(tl.float32)
    if HAS_GJAC:
        gx = tl.load(gjac_ptr + col * 3 + 0, mask=m2, other=0.0).to(tl.float32)
        gy = tl.load(gjac_ptr + col * 3 + 1, mask=m2, other=0.0).to(tl.float32)
        gz = tl.load(gjac_ptr + col * 3 + 2, mask=m2, other=0.0).to(tl.float32)
    for c in tl.static_range(8):
        idx, w, dwx, dwy, dwz = _corner(posx, posy, posz, scale, res, table_offset, dense, hash_mask, p1, p2, c)
        coef = w[:, None] * g
        if HAS_GJAC:
            coef += dwx[:, None] * gx + dwy[:, None] * gy + dwz[:, None] * gz
        tl.atomic_add(gtable_ptr + idx[:, None] * F + f[None, :], coef, mask=m2, sem="relaxed")


def _check(x: torch.Tensor, table: torch.Tensor) -> None:
    f = table.shape[1]
    if f & (f - 1):
        raise ValueError(f"the Triton hash grid needs a power-of-two number of features per level, got {f}")
    if x.dtype != torch.float32 or not x.is_contiguous() or x.shape[-1] != 3:
        raise ValueError("the Triton hash grid takes contiguous float32 points [N,3]")


def hash_grid_forward(x: torch.Tensor, table: torch.Tensor, lay, with_jacobian: bool):
    """Features ``[N, L*F]`` (and Jacobian ``[N, L*F, 3]`` or None) of points ``x`` ``[N,3]`` in [0,1]."""
    _check(x, table)
    n, n_levels, n_feat = x.shape[0], lay.n_levels, table.shape[1]
    feat = torch.empty(n, n_levels * n_feat, device=x.device, dtype=torch.float32)
    jac = torch.empty(n, n_levels * n_feat, 3, device=x.device, dtype=torch.float32) if with_jacobian else feat
    if n:
        grid = (triton.cdiv(n, BLOCK), n_levels)
        _hash_grid_fwd[grid](x, table.contiguous(), lay.scales, lay.res, lay.offsets, lay.primes, feat, jac, n,
                             lay.n_dense, lay.hash_mask, L=n_levels, F=n_feat, JAC=bool(with_jacobian), BLOCK=BLOCK)
    return feat.to(table.dtype), (jac.to(table.dtype) if with_jacobian else None)


def hash_grid_backward(x: torch.Tensor, grad_feat, grad_jac, table_shape, lay) -> torch.Tensor:
    """Gradient of the table (float32, ``table_shape``) from the gradients of features and/or Jacobian."""
    n, n_levels, n_feat = x.shape[0], lay.n_levels, table_shape[1]
    gtable = torch.zeros(table_shape, device=x.device, dtype=torch.float32)
    if n == 0 or (grad_feat is None and grad_jac is None):
        return gtable
    gf = grad_feat.float().contiguous() if grad_feat is not None else gtable
    gj = grad_jac.float().contiguous() if grad_jac is not None else gtable
    grid = (triton.cdiv(n, BLOCK), n_levels)
    _hash_grid_bwd[grid](x, gf, gj, gtable, lay.scales, lay.res, lay.offsets, lay.primes, n, lay.n_dense,
                         lay.hash_mask, L=n_levels, F=n_feat, HAS_GFEAT=grad_feat is not None,
                         HAS_GJAC=grad_jac is not None, BLOCK=BLOCK)
    return gtable
