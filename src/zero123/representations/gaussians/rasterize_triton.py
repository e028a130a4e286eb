"""Triton tile kernels of the Gaussian rasteriser: the CUDA fast path of :func:`.rasterize.rasterize_gaussians`.

Same arithmetic as the dense PyTorch path (``_dense_chunk``), per pixel, in float32. The inputs are flat over views
(``[B*N, ...]``) and :func:`.rasterize.bin_gaussians` has already listed, per 16x16 tile and view, the Gaussians
whose footprint touches it, front to back.

* ``_raster_fwd``: one program per (tile, view) holds its 256 pixels and walks the tile's list front to back,
  ``BLOCK_G`` Gaussians per step: a ``[256, BLOCK_G]`` block of alphas, transmittance within the block by a
  cumulative product (``tl.cumprod``), until the list ends or every pixel has stopped (``T`` would fall below
  1e-4). It writes the image, ``T_final`` and, per pixel, ``last``: how many list entries it walked up to its last
  contributing Gaussian.
* ``_raster_bwd``: the same program walks the blocks back to front from the tile's largest ``last``, recovers
  ``T_i = T_end / prod_{j >= i in the block} (1 - a_j)`` (3DGS divides one Gaussian at a time), keeps the colour
  composited behind each Gaussian dotted with the pixel's colour gradient (``S_i . g``, from
  ``T_final * background . g``, a reverse cumulative sum within the block) and adds each Gaussian's gradient,
  summed over the tile's pixels, with atomic adds:

  ``dL/dc_i = a_i T_i g``, ``dL/da_i = T_i (c_i . g) - (S_i . g) / (1 - a_i) + g_alpha T_final / (1 - a_i)``
  (``g``: gradient of the pixel's colour), then through ``a_i = o_i exp(power)`` (0 where clamped to 0.99) to the
  opacity, the conic and the mean; ``dL/dbackground = sum_pixels T_final g``.

``TRITON_INTERPRET=1`` runs both on CPU tensors, which is how the CPU tests compare them with the dense path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rasterize import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE

# Launch configuration of both kernels: BLOCK_G list entries per step (a [256 pixels, BLOCK_G] block of alphas) and
# warps per tile. 16 x 16 compiles for sm_90 without register spills (forward 87, backward 128 registers; 16 x 8
# spills in the backward); bench/bench_gaussian_raster.py --triton-configs times the alternatives.
CONFIG = {"BLOCK_G": 16, "num_warps": 16}


@triton.jit
def _tile_setup(offsets_ptr, H, W, n_tiles_x, n_tiles, TILE: tl.constexpr):
    """This program's tile (``program_id(0)``) of view ``program_id(1)``: view, list range, pixel indices [P]
    (flat in ``[B, H, W]``, int64), in-image mask and pixel-centre coordinates."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    p = tl.arange(0, TILE * TILE)
    py = (t // n_tiles_x) * TILE + p // TILE
    px = (t % n_tiles_x) * TILE + p % TILE
    inside = (py < H) & (px < W)
    pix = (b * H + py).to(tl.int64) * W + px
    start = tl.load(offsets_ptr + b * n_tiles + t)
    end = tl.load(offsets_ptr + b * n_tiles + t + 1)
    return b, start, end, pix, inside, px.to(tl.float32) + 0.5, py.to(tl.float32) + 0.5


@triton.jit
def _batch_at(base, end, ids_ptr, means_ptr, conics_ptr, opac_ptr, radii_ptr, fx, fy, BLOCK_G: tl.constexpr,
              ALPHA_MAX: tl.constexpr, ALPHA_MIN: tl.constexpr):
    """List entries ``base .. base + BLOCK_G`` (clipped to ``end``) against the tile's pixels ``[P]``: entry indices
    and validity ``[G]``, Gaussian indices (int64), alphas ``[P, G]`` (0 where unseen), seen, ``exp(power)``, the
    offsets ``dx, dy [P, G]`` and the conics and opacities ``[G]`` (for the backward)."""
    idx = base + tl.arange(0, BLOCK_G)
    valid = idx < end
    g = tl.load(ids_ptr + idx, mask=valid, other=0).to(tl.int64)
    mx = tl.load(means_ptr + g * 2, mask=valid, other=0.0)
    my = tl.load(means_ptr + g * 2 + 1, mask=valid, other=0.0)
    ca = tl.load(conics_ptr + g * 3, mask=valid, other=0.0)
    cb = tl.load(conics_ptr + g * 3 + 1, mask=valid, other=0.0)
    cc = tl.load(conics_ptr + g * 3 + 2, mask=valid, other=0.0)
    o = tl.load(opac_ptr + g, mask=valid, other=0.0)
    r = tl.load(radii_ptr + g, mask=valid, other=0.0)
    r = tl.where(valid & (r > 0), r, -1.0)           # culled (radius 0) or past the list: no pixel within -1
    dx = fx[:, None] - mx[None, :]
    dy = fy[:, None] - my[None, :]
    power = -0.5 * (ca[None, :] * dx * dx + cc[None, :] * dy * dy) - cb[None, :] * dx * dy
    gauss = tl.exp(tl.minimum(power, 0.0))
    alpha = tl.minimum(o[None, :] * gauss, ALPHA_MAX)
    seen = (tl.abs(dx) <= r[None, :]) & (tl.abs(dy) <= r[None, :]) & (power <= 0.0) & (alpha >= ALPHA_MIN)
    return idx, valid, g, tl.where(seen, alpha, 0.0), seen, gauss, dx, dy, ca, cb, cc, o


@triton.jit
def _raster_fwd(means_ptr, conics_ptr, opac_ptr, colors_ptr, radii_ptr, bg_ptr, offsets_ptr, ids_ptr, img_ptr,
                tfinal_ptr, last_ptr, H, W, n_tiles_x, n_tiles, C: tl.constexpr, BLOCK_C: tl.constexpr,
                TILE: tl.constexpr, BLOCK_G: tl.constexpr, ALPHA_MAX: tl.constexpr, ALPHA_MIN: tl.constexpr,
                T_MIN: tl.constexpr):
    b, start, end, pix, inside, fx, fy = _tile_setup(offsets_ptr, H, W, n_tiles_x, n_tiles, TILE)
    ch = tl.arange(0, BLOCK_C)
    cmask = ch < C
    trans = tl.full([TILE * TILE], 1.0, tl.float32)
    acc = tl.zeros([TILE * TILE, BLOCK_C], tl.float32)
    last = tl.zeros([TILE * TILE], tl.int32)
    active = inside
    n_active = tl.sum(active.to(tl.int32), axis=0)
    base = start
    while (base < end) & (n_active > 0):
        idx, valid, g, alpha, seen, gauss, dx, dy, ca, cb, cc, o = _batch_at(
            base, end, ids_ptr, means_ptr, conics_ptr, opac_ptr, radii_ptr, fx, fy, BLOCK_G, ALPHA_MAX, ALPHA_MIN)
        seen = seen & active[:, None]
        alpha = tl.where(seen, alpha, 0.0)
        incl = trans[:, None] * tl.cumprod(1.0 - alpha, axis=1)        # T_{i+1}
        alive = incl >= T_MIN                                           # else stop before i (and all behind)
        seen = seen & alive
        w = tl.where(seen, alpha * (incl / (1.0 - alpha)), 0.0)         # a_i T_i
        for c in tl.static_range(C):
            col = tl.load(colors_ptr + g * C + c, mask=valid, other=0.0)
            acc += tl.where(ch[None, :] == c, tl.sum(w * col[None, :], axis=1)[:, None], 0.0)
        trans = tl.min(tl.where(alive, incl, trans[:, None]), axis=1)
        last = tl.maximum(last, tl.max(tl.where(seen, idx[None, :] - start + 1, 0), axis=1))
        active = active & (tl.min(alive.to(tl.int32), axis=1) > 0)
        n_active = tl.sum(active.to(tl.int32), axis=0)
        base += BLOCK_G
    bg = tl.load(bg_ptr + b * C + ch, mask=cmask, other=0.0)
    out = acc + trans[:, None] * bg[None, :]
    m2 = inside[:, None] & cmask[None, :]
    tl.store(img_ptr + pix[:, None] * C + ch[None, :], out, mask=m2)
    tl.store(tfinal_ptr + pix, trans, mask=inside)
    tl.store(last_ptr + pix, last, mask=inside)


@triton.jit
def _raster_bwd(means_ptr, conics_ptr, opac_ptr, colors_ptr, radii_ptr, bg_ptr, offsets_ptr, ids_ptr, tfinal_ptr,
                last_ptr, gimg_ptr, galpha_ptr, gmeans_ptr, gconics_ptr, gopac_ptr, gcolors_ptr, gbg_ptr, H, W,
                n_tiles_x, n_tiles, C: tl.constexpr, BLOCK_C: tl.constexpr, TILE: tl.constexpr,
                BLOCK_G: tl.constexpr, ALPHA_MAX: tl.constexpr, ALPHA_MIN: tl.constexpr):
    b, start, end, pix, inside, fx, fy = _tile_setup(offsets_ptr, H, W, n_tiles_x, n_tiles, TILE)
    ch = tl.arange(0, BLOCK_C)
    cmask = ch < C
    m2 = inside[:, None] & cmask[None, :]
    t_end = tl.load(tfinal_ptr + pix, mask=inside, other=1.0)       # T after the current batch, first T_final
    last = tl.load(last_ptr + pix, mask=inside, other=0)
    gimg = tl.load(gimg_ptr + pix[:, None] * C + ch[None, :], mask=m2, other=0.0)
    g_t_final = tl.load(galpha_ptr + pix, mask=inside, other=0.0) * t_end     # g_alpha T_final
    bg = tl.load(bg_ptr + b * C + ch, mask=cmask, other=0.0)
    tl.atomic_add(gbg_ptr + b * C + ch, tl.sum(t_end[:, None] * gimg, axis=0), mask=cmask, sem="relaxed")
    behind = t_end * tl.sum(bg[None, :] * gimg, axis=1)              # S . g behind the current batch
    n_batches = tl.cdiv(tl.max(last, axis=0), BLOCK_G)
    for j in range(0, n_batches):
        base = start + (n_batches - 1 - j) * BLOCK_G
        idx, valid, g, alpha, seen, gauss, dx, dy, ca, cb, cc, o = _batch_at(
            base, end, ids_ptr, means_ptr, conics_ptr, opac_ptr, radii_ptr, fx, fy, BLOCK_G, ALPHA_MAX, ALPHA_MIN)
        seen = seen & ((idx[None, :] - start) < last[:, None])
        alpha = tl.where(seen, alpha, 0.0)
        one_minus = 1.0 - alpha
        t_i = t_end[:, None] / tl.cumprod(one_minus, axis=1, reverse=True)   # T_i = T_end / prod_{j >= i} (1 - a_j)
        w = alpha * t_i
        dot_c = tl.zeros_like(w)                                              # c_i . g
        for c in tl.static_range(C):
            col = tl.load(colors_ptr + g * C + c, mask=valid, other=0.0)
            g_c = tl.sum(tl.where(ch[None, :] == c, gimg, 0.0), axis=1)
            dot_c += g_c[:, None] * col[None, :]
            tl.atomic_add(gcolors_ptr + g * C + c, tl.sum(w * g_c[:, None], axis=0), mask=valid, sem="relaxed")
        wd = w * dot_c
        behind_i = behind[:, None] + (tl.cumsum(wd, axis=1, reverse=True) - wd)   # S_i . g
        d_alpha = t_i * dot_c + (g_t_final[:, None] - behind_i) / one_minus
        d_alpha = tl.where(seen & (o[None, :] * gauss <= ALPHA_MAX), d_alpha, 0.0)
        d_power = d_alpha * alpha
        tl.atomic_add(gopac_ptr + g, tl.sum(d_alpha * gauss, axis=0), mask=valid, sem="relaxed")
        tl.atomic_add(gmeans_ptr + g * 2, tl.sum(d_power * (ca[None, :] * dx + cb[None, :] * dy), axis=0),
                      mask=valid, sem="relaxed")
        tl.atomic_add(gmeans_ptr + g * 2 + 1, tl.sum(d_power * (cc[None, :] * dy + cb[None, :] * dx), axis=0),
                      mask=valid, sem="relaxed")
        tl.atomic_add(gconics_ptr + g * 3, tl.sum(d_power * (-0.5 * dx * dx), axis=0), mask=valid, sem="relaxed")
        tl.atomic_add(gconics_ptr + g * 3 + 1, tl.sum(d_power * (-dx * dy), axis=0), mask=valid, sem="relaxed")
        tl.atomic_add(gconics_ptr + g * 3 + 2, tl.sum(d_power * (-0.5 * dy * dy), axis=0), mask=valid,
                      sem="relaxed")
        behind += tl.sum(wd, axis=1)
        t_end = tl.max(t_i, axis=1)                                           # T before the batch: its first T_i


def _grid_args(b: int, height: int, width: int, colors: torch.Tensor):
    n_tiles_x = triton.cdiv(width, TILE)
    n_tiles = n_tiles_x * triton.cdiv(height, TILE)
    c = colors.shape[1]
    consts = dict(C=c, BLOCK_C=triton.next_power_of_2(c), TILE=TILE, ALPHA_MAX=ALPHA_MAX, ALPHA_MIN=ALPHA_MIN,
                  **CONFIG)
    return (n_tiles, b), n_tiles_x, n_tiles, consts


def rasterize_forward(means, conics, opac, colors, radii, bg, offsets, ids, b: int, height: int, width: int):
    """Image ``[B,H,W,C]``, ``T_final [B,H,W]`` and ``last [B,H,W]`` (int32) from flat float32 inputs
    (``means [B*N,2]``, ``conics [B*N,3]``, ``opac [B*N,1]``, ``colors [B*N,C]``, ``radii [B*N]``, ``bg [B,C]``)
    and :func:`.rasterize.bin_gaussians`' ``offsets``/``ids``."""
    c = colors.shape[1]
    image = torch.empty(b, height, width, c, device=colors.device, dtype=torch.float32)
    t_final = torch.empty(b, height, width, device=colors.device, dtype=torch.float32)
    last = torch.empty(b, height, width, device=colors.device, dtype=torch.int32)
    grid, n_tiles_x, n_tiles, consts = _grid_args(b, height, width, colors)
    _raster_fwd[grid](means, conics, opac, colors, radii, bg, offsets, ids, image, t_final, last, height, width,
                      n_tiles_x, n_tiles, T_MIN=T_MIN, **consts)
    return image, t_final, last


def rasterize_backward(means, conics, opac, colors, radii, bg, offsets, ids, t_final, last, grad_image, grad_alpha,
                       b: int, height: int, width: int):
    """Gradients (float32, flat like the inputs) of means, conics, opacities, colours and background from the
    forward's ``t_final``/``last`` and the output gradients ``grad_image [B,H,W,C]``, ``grad_alpha [B,H,W]``."""
    grads = [torch.zeros_like(t) for t in (means, conics, opac, colors, bg)]
    grid, n_tiles_x, n_tiles, consts = _grid_args(b, height, width, colors)
    _raster_bwd[grid](means, conics, opac, colors, radii, bg, offsets, ids, t_final, last, grad_image, grad_alpha,
                      *grads, height, width, n_tiles_x, n_tiles, **consts)
    return grads
