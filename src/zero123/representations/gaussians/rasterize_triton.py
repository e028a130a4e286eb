"""Triton tile kernels of the Gaussian rasteriser: the CUDA fast path of :func:`.rasterize.rasterize_gaussians`.

Same arithmetic as the dense PyTorch path (``_dense_chunk``), per pixel, in float32. The inputs are flat over views
(``[B*N, ...]``) and :func:`.rasterize.bin_gaussians` has already listed, per 16x16 tile and view, the Gaussians
whose footprint touches it, front to back.

* ``_raster_fwd``: one program per (tile, view) holds its 256 pixels as vectors and walks the tile's list front to
  back, one Gaussian per step (3DGS's loop, with the pixels as lanes), until the list ends or every pixel has
  stopped (``T`` would fall below 1e-4). It writes the image, ``T_final`` and, per pixel, ``last``: how many list
  entries it walked up to its last contributing Gaussian.
* ``_raster_bwd``: the same program walks the list back to front from the tile's largest ``last``, recovers
  ``T_i = T_{i+1} / (1 - a_i)``, keeps the colour composited behind each Gaussian (``S_i``, starting from
  ``T_final * background``) and adds each Gaussian's gradient, summed over the tile's pixels, with atomic adds:

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
def _gaussian_at(k, ids_ptr, means_ptr, conics_ptr, opac_ptr, radii_ptr, fx, fy, ALPHA_MAX: tl.constexpr,
                 ALPHA_MIN: tl.constexpr):
    """List entry ``k``: Gaussian index (int64), its alpha at the pixels (0 where unseen), whether it is seen,
    exp(power), the offsets and the conic and opacity (for the backward)."""
    g = tl.load(ids_ptr + k).to(tl.int64)
    mx = tl.load(means_ptr + g * 2)
    my = tl.load(means_ptr + g * 2 + 1)
    ca = tl.load(conics_ptr + g * 3)
    cb = tl.load(conics_ptr + g * 3 + 1)
    cc = tl.load(conics_ptr + g * 3 + 2)
    o = tl.load(opac_ptr + g)
    r = tl.load(radii_ptr + g)
    r = tl.where(r > 0, r, -1.0)                     # culled (radius 0): no pixel within |d| <= -1
    dx = fx - mx
    dy = fy - my
    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
    gauss = tl.exp(tl.minimum(power, 0.0))
    alpha = tl.minimum(o * gauss, ALPHA_MAX)
    seen = (tl.abs(dx) <= r) & (tl.abs(dy) <= r) & (power <= 0.0) & (alpha >= ALPHA_MIN)
    return g, tl.where(seen, alpha, 0.0), seen, gauss, dx, dy, ca, cb, cc, o


@triton.jit
def _raster_fwd(means_ptr, conics_ptr, opac_ptr, colors_ptr, radii_ptr, bg_ptr, offsets_ptr, ids_ptr, img_ptr,
                tfinal_ptr, last_ptr, H, W, n_tiles_x, n_tiles, C: tl.constexpr, BLOCK_C: tl.constexpr,
                TILE: tl.constexpr, ALPHA_MAX: tl.constexpr, ALPHA_MIN: tl.constexpr, T_MIN: tl.constexpr):
    b, start, end, pix, inside, fx, fy = _tile_setup(offsets_ptr, H, W, n_tiles_x, n_tiles, TILE)
    ch = tl.arange(0, BLOCK_C)
    cmask = ch < C
    trans = tl.full([TILE * TILE], 1.0, tl.float32)
    acc = tl.zeros([TILE * TILE, BLOCK_C], tl.float32)
    last = tl.zeros([TILE * TILE], tl.int32)
    active = inside
    n_active = tl.sum(active.to(tl.int32), axis=0)
    k = start
    while (k < end) & (n_active > 0):
        g, alpha, seen, gauss, dx, dy, ca, cb, cc, o = _gaussian_at(k, ids_ptr, means_ptr, conics_ptr, opac_ptr,
                                                                    radii_ptr, fx, fy, ALPHA_MAX, ALPHA_MIN)
        seen = seen & active
        test_t = trans * (1.0 - alpha)
        stop = seen & (test_t < T_MIN)
        active = active & ~stop
        seen = seen & ~stop
        col = tl.load(colors_ptr + g * C + ch, mask=cmask, other=0.0)
        w = tl.where(seen, alpha * trans, 0.0)
        acc += w[:, None] * col[None, :]
        trans = tl.where(seen, test_t, trans)
        last = tl.where(seen, k - start + 1, last)
        n_active = tl.sum(active.to(tl.int32), axis=0)
        k += 1
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
                ALPHA_MAX: tl.constexpr, ALPHA_MIN: tl.constexpr):
    b, start, end, pix, inside, fx, fy = _tile_setup(offsets_ptr, H, W, n_tiles_x, n_tiles, TILE)
    ch = tl.arange(0, BLOCK_C)
    cmask = ch < C
    m2 = inside[:, None] & cmask[None, :]
    t_final = tl.load(tfinal_ptr + pix, mask=inside, other=1.0)
    last = tl.load(last_ptr + pix, mask=inside, other=0)
    gimg = tl.load(gimg_ptr + pix[:, None] * C + ch[None, :], mask=m2, other=0.0)
    galpha = tl.load(galpha_ptr + pix, mask=inside, other=0.0)
    bg = tl.load(bg_ptr + b * C + ch, mask=cmask, other=0.0)
    tl.atomic_add(gbg_ptr + b * C + ch, tl.sum(t_final[:, None] * gimg, axis=0), mask=cmask, sem="relaxed")
    behind = t_final[:, None] * bg[None, :]            # S_i: colour composited behind the current Gaussian
    trans = t_final
    g_behind_alpha = galpha * t_final                  # the alpha output's share: g_alpha T_final
    n_walk = tl.max(last, axis=0)
    for j in range(0, n_walk):
        kl = n_walk - 1 - j
        g, alpha, seen, gauss, dx, dy, ca, cb, cc, o = _gaussian_at(start + kl, ids_ptr, means_ptr, conics_ptr,
                                                                    opac_ptr, radii_ptr, fx, fy, ALPHA_MAX,
                                                                    ALPHA_MIN)
        seen = seen & (kl < last)
        alpha = tl.where(seen, alpha, 0.0)
        one_minus = 1.0 - alpha
        trans = tl.where(seen, trans / one_minus, trans)   # T_i
        col = tl.load(colors_ptr + g * C + ch, mask=cmask, other=0.0)
        w = alpha * trans
        tl.atomic_add(gcolors_ptr + g * C + ch, tl.sum(w[:, None] * gimg, axis=0), mask=cmask, sem="relaxed")
        dot_c = tl.sum(col[None, :] * gimg, axis=1)
        dot_s = tl.sum(behind * gimg, axis=1)
        d_alpha = trans * dot_c + (g_behind_alpha - dot_s) / one_minus
        behind += w[:, None] * col[None, :]
        d_alpha = tl.where(seen & (o * gauss <= ALPHA_MAX), d_alpha, 0.0)
        d_power = d_alpha * alpha
        tl.atomic_add(gopac_ptr + g, tl.sum(d_alpha * gauss, axis=0), sem="relaxed")
        tl.atomic_add(gmeans_ptr + g * 2, tl.sum(d_power * (ca * dx + cb * dy), axis=0), sem="relaxed")
        tl.atomic_add(gmeans_ptr + g * 2 + 1, tl.sum(d_power * (cc * dy + cb * dx), axis=0), sem="relaxed")
        tl.atomic_add(gconics_ptr + g * 3, tl.sum(d_power * (-0.5 * dx * dx), axis=0), sem="relaxed")
        tl.atomic_add(gconics_ptr + g * 3 + 1, tl.sum(d_power * (-dx * dy), axis=0), sem="relaxed")
        tl.atomic_add(gconics_ptr + g * 3 + 2, tl.sum(d_power * (-0.5 * dy * dy), axis=0), sem="relaxed")


def _grid_args(b: int, height: int, width: int, colors: torch.Tensor):
    n_tiles_x = triton.cdiv(width, TILE)
    n_tiles = n_tiles_x * triton.cdiv(height, TILE)
    c = colors.shape[1]
    consts = dict(C=c, BLOCK_C=triton.next_power_of_2(c), TILE=TILE, ALPHA_MAX=ALPHA_MAX, ALPHA_MIN=ALPHA_MIN)
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
