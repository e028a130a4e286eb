"""Differentiable rasterisation of projected 3D Gaussians (3DGS's image formation), with nothing compiled at install.

One functional entry point, :func:`rasterize_gaussians`, in the style of gsplat's ``rasterize_to_pixels``: it takes
Gaussians that are already projected to the image plane (2D means, inverse 2D covariances, depths, radii: the
projection lives with the representation) and alpha-composites them front to back per pixel.

Conventions (per view ``b``, per Gaussian ``i``, per pixel centre ``p = (x + 0.5, y + 0.5)``; ``x`` right, ``y``
down, in pixels):

* ``d = p - means2d[i]``, ``power = -0.5 * (A d_x^2 + 2 B d_x d_y + C d_y^2)`` with ``(A, B, C) = conics[i]``;
* Gaussian ``i`` is seen at ``p`` only when ``radii[i] > 0`` (0 = culled), ``|d_x| <= r_i`` and ``|d_y| <= r_i``
  (its square footprint: pixel-exact, so the result does not depend on how an implementation tiles the image) and
  ``power <= 0``;
* ``a_i = min(0.99, opacities[i] * exp(power))``, skipped when ``a_i < 1/255`` (3DGS);
* Gaussians are composited in ascending ``depths`` (stable for equal depths), ``T_0 = 1``,
  ``T_{i+1} = T_i (1 - a_i)``; compositing stops before the first Gaussian that would bring ``T`` below ``1e-4``
  (that one and all behind it are left out, as in 3DGS);
* ``image = sum_i colors[i] a_i T_i + T_final * background``, ``alpha = 1 - T_final``.

Gradients flow to ``means2d``, ``conics``, ``opacities``, ``colors`` and ``background`` (not to ``depths`` or
``radii``, which only order and cull). Where ``a_i`` is clamped to 0.99 its derivative is 0 (the exact derivative;
3DGS's CUDA backward passes the unclamped one).

Backends (``backend=``):

* ``"torch"``: dense PyTorch. Per view the Gaussians are sorted by depth, every Gaussian is evaluated at every pixel
  in chunks of pixels (``[B, P, N]`` tensors of at most ``chunk_elements`` entries) and transmittance is a cumulative
  product; autograd does the backward. With ``checkpoint`` each chunk is recomputed in the backward, so memory stays
  at a few chunks instead of ``B*H*W*N`` entries. It runs anywhere (CPU, any dtype) and is the reference of the tests;
  cost grows as ``B*H*W*N``.
* ``"triton"``: a tile rasteriser (:mod:`.rasterize_triton`, 16x16 tiles) for CUDA tensors: per-view depth sort and
  tile binning in PyTorch (:func:`bin_gaussians`), then one forward kernel (one program per tile and view, front to
  back in blocks of Gaussians, with early stop) and a hand-written backward kernel (back to front from each pixel's
  last contributor, recovering ``T_i`` by dividing out ``(1 - a_j)`` as 3DGS does), float32. Triton is
  JIT-compiled by the ``triton`` package that PyTorch's CUDA wheels already bring (with its own ``ptxas``): no CUDA
  toolkit, nothing compiled at install; the first call of a process compiles for a few seconds. With
  ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors (slowly; the tests do this).
* ``"auto"``: ``"triton"`` for CUDA tensors when Triton is importable, else ``"torch"``.

gsplat (``pip install gsplat``, nerfstudio's CUDA rasteriser) is not a dependency: installed from PyPI it builds its
CUDA extension on first use (JIT through ``torch.utils.cpp_extension``), which needs a CUDA toolkit (``nvcc``)
matching PyTorch's CUDA, a C++ compiler and ninja on the machine, and takes minutes the first time; pre-built wheels
exist on its own index only for some Python/torch/CUDA combinations. Its ``isect_tiles`` + ``isect_offset_encode``
+ ``rasterize_to_pixels`` take the same projected inputs as this function (its tiles decide which Gaussians a pixel
sees, so its images differ from these at footprint edges).
"""

from __future__ import annotations

import os

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ...errors import Zero123Error

BACKENDS = ("auto", "torch", "triton")
TILE = 16                     # tile side of the Triton path (pixels)
ALPHA_MAX = 0.99              # 3DGS: a_i = min(0.99, o_i exp(power))
ALPHA_MIN = 1.0 / 255.0       # 3DGS: skip a_i < 1/255
T_MIN = 1e-4                  # 3DGS: stop before T would fall below 1e-4


def rasterize_gaussians(means2d: torch.Tensor, conics: torch.Tensor, depths: torch.Tensor, opacities: torch.Tensor,
                        colors: torch.Tensor, background: torch.Tensor, height: int, width: int,
                        radii: torch.Tensor, backend: str = "auto", *, chunk_elements: int = 1 << 23,
                        checkpoint: bool | None = None, cull: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-composite projected 2D Gaussians into ``B`` images (conventions in the module docstring).

    Args:
        means2d: ``[B, N, 2]`` centres in pixels, ``(x right, y down)``; pixel ``(row y, column x)`` has its centre
            at ``(x + 0.5, y + 0.5)``.
        conics: ``[B, N, 3]`` ``(A, B, C)``, the upper triangle of the inverse 2D covariance (pixels^-2):
            ``power = -0.5 * (A dx^2 + 2 B dx dy + C dy^2)``.
        depths: ``[B, N]`` camera-space z; composited front to back in ascending depth. No gradient.
        opacities: ``[B, N]`` in (0, 1).
        colors: ``[B, N, C]``, any number of channels ``C`` (RGB, RGB + depth + normal, features, ...).
        background: ``[B, C]`` colour behind the Gaussians.
        height, width: image size in pixels.
        radii: ``[B, N]`` footprint half-side in pixels (int or float; 0 = culled: its other inputs are never
            read, so they may be NaN or inf, and its gradients are 0). No gradient.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` (see the module docstring).
        chunk_elements: torch path: at most this many ``[B, pixels, N]`` entries per chunk of pixels.
        checkpoint: torch path: recompute each chunk in the backward (``None``: when gradients are needed and the
            image takes more than one chunk).
        cull: torch path: per chunk of pixels, evaluate only the Gaussians whose footprint comes within a pixel of
            the chunk's bounding box (exact: the others contribute exactly nothing there; ``False`` evaluates all).

    Returns:
        ``image [B, H, W, C]`` and ``alpha [B, H, W, 1]`` (``1 - T_final``), in the dtype of ``colors`` (the
        Triton path computes in float32).
    """
    b, n = _check_inputs(means2d, conics, depths, opacities, colors, background, height, width, radii, backend)
    if _use_triton(backend, means2d) and n > 0:
        return _TritonRasterize.apply(means2d, conics, depths, opacities, colors, background, int(height),
                                      int(width), radii)
    return _rasterize_dense(means2d, conics, depths, opacities, colors, background, int(height), int(width), radii,
                            chunk_elements, checkpoint, cull)


def _check_inputs(means2d, conics, depths, opacities, colors, background, height, width, radii, backend):
    """Shapes ``[B, N]`` and ``[B, C]`` of the inputs, or a one-line :class:`Zero123Error` naming the mismatch."""
    if backend not in BACKENDS:
        raise Zero123Error(f"unknown Gaussian rasteriser backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not (int(height) == height and int(width) == width and height > 0 and width > 0):
        raise Zero123Error(f"the Gaussian rasteriser needs a positive integer image size, got {height}x{width}")
    if depths.dim() != 2:
        raise Zero123Error(f"Gaussian depths must be [B, N], got shape {tuple(depths.shape)}")
    b, n = depths.shape
    c = colors.shape[-1] if colors.dim() == 3 else -1
    if c == 0:
        raise Zero123Error("Gaussian colors need at least one channel, got shape [B, N, 0]")
    expected = {"means2d": (means2d, (b, n, 2)), "conics": (conics, (b, n, 3)), "opacities": (opacities, (b, n)),
                "colors": (colors, (b, n, c)), "background": (background, (b, c)), "radii": (radii, (b, n))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            want = "x".join("C" if s == -1 else str(s) for s in shape)
            raise Zero123Error(f"Gaussian {name} must be [{want}] (B={b}, N={n}), got shape {tuple(t.shape)}")
    return b, n


def _use_triton(backend: str, like: torch.Tensor) -> bool:
    """Whether this call goes through the Triton tile kernels (``backend`` resolved for ``like``'s device)."""
    from ...fields.hash_grid import triton_available

    if backend == "triton":
        if not like.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise Zero123Error("Gaussian rasteriser backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
        return True
    return backend == "auto" and like.is_cuda and triton_available()


# ---------------------------------------------------------------------------------------------------- dense torch
def _sort_by_depth(depths: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` (``[B, N]`` or ``[B, N, K]``) reordered per view in ascending (stable) depth."""
    return _gather(torch.argsort(depths, dim=1, stable=True), *tensors)


def _gather(order: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` (``[B, N]`` or ``[B, N, K]``) at per-view indices ``order`` ``[B, M]``."""
    out = []
    for t in tensors:
        idx = order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[-1])
        out.append(torch.gather(t, 1, idx))
    return out


def _dense_chunk(pix, means2d, conics, opacities, colors, radii, background):
    """Composite depth-sorted Gaussians at pixel centres ``pix`` ``[P, 2]``: ``image [B, P, C]``, ``T_final [B, P, 1]``.

    Every ``[B, P, N]`` term is evaluated; the masks (footprint, ``power <= 0``, ``a >= 1/255``, the ``T >= 1e-4``
    stop) only zero alphas, so autograd's derivative is the exact one of the module docstring's formula.
    """
    dx = pix[None, :, None, 0] - means2d[:, None, :, 0]
    dy = pix[None, :, None, 1] - means2d[:, None, :, 1]
    ca, cb, cc = (conics[:, None, :, k] for k in range(3))
    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
    r = radii[:, None, :].to(dx.dtype)
    seen = (r > 0) & (dx.abs() <= r) & (dy.abs() <= r) & (power <= 0)
    alpha = (opacities[:, None, :] * torch.exp(power.clamp(max=0))).clamp(max=ALPHA_MAX)
    alpha = torch.where(seen & (alpha >= ALPHA_MIN), alpha, 0)
    alive = torch.cumprod(1 - alpha.detach(), dim=-1) >= T_MIN     # T_{i+1} >= 1e-4, else stop before i
    alpha = torch.where(alive, alpha, 0)
    trans = torch.cumprod(1 - alpha, dim=-1)                        # T_{i+1}
    t_excl = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    image = torch.einsum("bpn,bnc->bpc", alpha * t_excl, colors) + trans[..., -1:] * background[:, None, :]
    return image, trans[..., -1:]


def _cull_to_chunk(pix, means2d, conics, opacities, colors, radii):
    """The depth-sorted Gaussians whose footprint comes within one pixel of the bounding box of ``pix`` ``[P, 2]``,
    per view, still in depth order, padded with culled entries (radius 0) to the views' largest count ``M``:
    ``[B, M, ...]`` tensors (gathered, so gradients flow back to the inputs)."""
    lo, hi = pix.min(0).values, pix.max(0).values
    r = radii.to(means2d.dtype)[..., None] + 1.0           # a pixel of margin: rounding never drops a seen one
    near = (radii > 0) & ((means2d.detach() - r <= hi) & (means2d.detach() + r >= lo)).all(-1)
    m = max(1, int(near.sum(1).max()))
    if m == near.shape[1]:
        return means2d, conics, opacities, colors, radii
    idx = torch.argsort((~near).to(torch.uint8), dim=1, stable=True)[:, :m]   # near ones first, in depth order
    means2d, conics, opacities, colors, radii = _gather(idx, means2d, conics, opacities, colors, radii)
    return means2d, conics, opacities, colors, torch.where(torch.gather(near, 1, idx), radii, 0)


def _rasterize_dense(means2d, conics, depths, opacities, colors, background, height, width, radii, chunk_elements,
                     checkpoint, cull=True):
    b, n = depths.shape
    dtype, dev = colors.dtype, colors.device
    if n == 0:
        image = background[:, None, None, :].expand(b, height, width, -1).clone()
        return image, torch.zeros(b, height, width, 1, dtype=dtype, device=dev)
    means2d, conics, opacities, colors, radii = _sort_by_depth(depths, means2d, conics, opacities, colors, radii)
    culled = (radii <= 0)[..., None]         # projections may leave NaN/inf there: keep them out of the gradients
    means2d, conics = means2d.masked_fill(culled, 0.0), conics.masked_fill(culled, 0.0)
    ys, xs = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    pix = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(means2d.dtype) + 0.5
    per_chunk = max(1, int(chunk_elements) // (b * n))
    if checkpoint is None:
        needs_grad = any(t.requires_grad for t in (means2d, conics, opacities, colors, background))
        checkpoint = torch.is_grad_enabled() and needs_grad and per_chunk < pix.shape[0]
    images, trans = [], []
    for s in range(0, pix.shape[0], per_chunk):
        chunk = pix[s:s + per_chunk]
        gauss = (means2d, conics, opacities, colors, radii)
        args = (chunk, *(_cull_to_chunk(chunk, *gauss) if cull else gauss), background)
        img, t = _checkpoint(_dense_chunk, *args, use_reentrant=False) if checkpoint else _dense_chunk(*args)
        images.append(img)
        trans.append(t)
    image = torch.cat(images, dim=1).reshape(b, height, width, -1)
    alpha = 1 - torch.cat(trans, dim=1).reshape(b, height, width, 1)
    return image, alpha


# ---------------------------------------------------------------------------------------------------- triton tiles
def bin_gaussians(means2d: torch.Tensor, depths: torch.Tensor, radii: torch.Tensor, height: int, width: int,
                  tile: int = TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile lists of the Triton path: which Gaussians each ``tile x tile`` tile of each view sees, front to back.

    A Gaussian goes to every tile its square footprint (pixel centres within ``radii`` of its mean) may touch.
    Returns ``offsets`` ``[B * n_tiles + 1]`` int32 and ``ids`` ``[M]`` int32: tile ``t`` of view ``b``
    (row-major, ``t = ty * ceil(W / tile) + tx``) sees Gaussians ``ids[offsets[b*n_tiles+t]:offsets[b*n_tiles+t+1]]``
    (flat indices ``b * N + i``) in ascending depth (stable).
    """
    b, n = depths.shape
    dev = depths.device
    ntx, nty = -(-width // tile), -(-height // tile)
    n_tiles = ntx * nty
    r = radii.to(means2d.dtype)
    x, y = means2d[..., 0].detach(), means2d[..., 1].detach()
    # pixel centres c = j + 0.5 with |c - x| <= r  =>  j in [x - r - 0.5, x + r - 0.5]
    tx0, tx1 = torch.floor((x - r - 0.5) / tile), torch.floor((x + r - 0.5) / tile)
    ty0, ty1 = torch.floor((y - r - 0.5) / tile), torch.floor((y + r - 0.5) / tile)
    valid = (r > 0) & (tx1 >= 0) & (tx0 < ntx) & (ty1 >= 0) & (ty0 < nty) & torch.isfinite(x) & torch.isfinite(y)
    tx0, tx1 = tx0.clamp(0, ntx - 1).long(), tx1.clamp(0, ntx - 1).long()
    ty0, ty1 = ty0.clamp(0, nty - 1).long(), ty1.clamp(0, nty - 1).long()
    span_x = (tx1 - tx0 + 1).reshape(-1)
    counts = torch.where(valid, (tx1 - tx0 + 1) * (ty1 - ty0 + 1), 0).reshape(-1)
    order = torch.argsort(depths, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(b, n)).reshape(-1)
    gid = torch.repeat_interleave(torch.arange(b * n, device=dev), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(gid.shape[0], device=dev) - torch.repeat_interleave(first, counts)
    w = span_x[gid]
    tiles = (ty0.reshape(-1)[gid] + local // w) * ntx + tx0.reshape(-1)[gid] + local % w
    key = ((gid // n) * n_tiles + tiles) * n + rank[gid]
    key, perm = torch.sort(key)
    per_tile = torch.bincount(key // n, minlength=b * n_tiles)
    offsets = torch.cat([per_tile.new_zeros(1), torch.cumsum(per_tile, 0)])
    return offsets.to(torch.int32), gid[perm].to(torch.int32)


class _TritonRasterize(torch.autograd.Function):
    """Forward/backward through the Triton tile kernels (same outputs as the dense path, float32)."""

    @staticmethod
    def forward(ctx, means2d, conics, depths, opacities, colors, background, height, width, radii):
        from .rasterize_triton import rasterize_forward

        b, n, c = colors.shape
        offsets, ids = bin_gaussians(means2d, depths, radii, height, width)
        flat = [t.detach().float().reshape(b * n, -1).contiguous() for t in (means2d, conics, opacities, colors)]
        rad = radii.detach().float().reshape(b * n).contiguous()
        bg = background.detach().float().contiguous()
        image, t_final, last = rasterize_forward(*flat, rad, bg, offsets, ids, b, height, width)
        ctx.save_for_backward(*flat, rad, bg, offsets, ids, t_final, last)
        ctx.meta = (b, n, c, height, width, [t.dtype for t in (means2d, conics, opacities, colors, background)])
        out_dtype = colors.dtype
        return image.to(out_dtype), (1 - t_final[..., None]).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_image, grad_alpha):
        from .rasterize_triton import rasterize_backward

        b, n, c, height, width, dtypes = ctx.meta
        means, conics, opac, colors, rad, bg, offsets, ids, t_final, last = ctx.saved_tensors
        gi = grad_image.float().contiguous() if grad_image is not None else torch.zeros_like(t_final)[..., None]
        ga = (grad_alpha.float().reshape(b, height, width).contiguous() if grad_alpha is not None
              else torch.zeros_like(t_final))
        grads = rasterize_backward(means, conics, opac, colors, rad, bg, offsets, ids, t_final, last,
                                   gi.expand(b, height, width, c).contiguous(), ga, b, height, width)
        shapes = [(b, n, 2), (b, n, 3), (b, n), (b, n, c), (b, c)]
        gm, gq, go, gc, gbg = (g.reshape(s).to(d) for g, s, d in zip(grads, shapes, dtypes))
        return gm, gq, None, go, gc, gbg, None, None, None
