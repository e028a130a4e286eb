"""The package's one triangle-coverage kernel (pure PyTorch, float64): which sample points of a regular 2D grid
each triangle covers, with their barycentric coordinates.

Used by the mesh rasteriser (screen-space triangles -> pixel centres, then a z-buffer), the texture baker (UV
triangles -> texel centres) and the validation tool's voxeliser (xy-projected triangles -> ray columns).

Convention: the grid's sample points are the integer coordinates ``(x, y)``, ``0 <= x < width``, ``0 <= y <
height``; callers shift their triangles so that their sample points land there (pixel centres at ``j + 0.5``: pass
``x - 0.5``). Every triangle is expanded into the sample points of its bounding box; a point is covered when all
three barycentrics are ``>= -eps`` (both windings; triangles of doubled area ``<= min_area`` cover nothing). The
candidate pairs are processed in chunks of about ``chunk`` pairs (peak memory ~200 bytes per pair), so the kernel
is a generator: a caller that only needs the union concatenates the chunks, the rasteriser reduces each chunk into
its z-buffer.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

__all__ = ["Coverage", "triangle_coverage", "covered_points"]


class Coverage(NamedTuple):
    """One chunk of covered (triangle, sample point) pairs, ``M`` of them, in triangle order (row-major within a
    triangle): ``tri`` [M] int64 index into the triangles given, ``x`` / ``y`` [M] int64 grid coordinates,
    ``bary`` [M,3] float64 barycentrics w.r.t. the triangle's three vertices (they sum to 1)."""

    tri: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    bary: torch.Tensor


def triangle_coverage(triangles: torch.Tensor, width: int, height: int, *, eps: float = 1e-6,
                      min_area: float = 1e-12, chunk: int = 1 << 21) -> Iterator[Coverage]:
    """Yield the sample points covered by each of ``triangles`` [T,3,2] (``(x, y)`` per vertex, grid units; computed
    in float64) as :class:`Coverage` chunks (empty chunks are skipped)."""
    tri = torch.as_tensor(triangles).to(torch.float64)
    if tri.ndim != 3 or tri.shape[1:] != (3, 2):
        raise ValueError(f"triangles must be [T,3,2], got {tuple(tri.shape)}")
    sx, sy = tri[..., 0], tri[..., 1]
    x0 = torch.ceil(sx.amin(1)).clamp(0, width).to(torch.int64)
    x1 = torch.floor(sx.amax(1)).clamp(-1, width - 1).to(torch.int64)
    y0 = torch.ceil(sy.amin(1)).clamp(0, height).to(torch.int64)
    y1 = torch.floor(sy.amax(1)).clamp(-1, height - 1).to(torch.int64)
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    X0, X1, X2 = sx.unbind(1)
    Y0, Y1, Y2 = sy.unbind(1)
    area = (X1 - X0) * (Y2 - Y0) - (X2 - X0) * (Y1 - Y0)  # signed doubled area
    count = torch.where(area.abs() > min_area, bw * bh, torch.zeros_like(bw))
    keep = torch.nonzero(count > 0).squeeze(1)
    if len(keep) == 0:
        return
    count, bw, x0, y0, area = count[keep], bw[keep], x0[keep], y0[keep], area[keep]
    X0, X1, X2, Y0, Y1, Y2 = X0[keep], X1[keep], X2[keep], Y0[keep], Y1[keep], Y2[keep]
    # barycentrics l0, l1 as affine forms over the sample point (x, y), sign-normalised by the area
    coef = torch.stack([(Y1 - Y2) / area, (X2 - X1) / area, (X1 * Y2 - X2 * Y1) / area,
                        (Y2 - Y0) / area, (X0 - X2) / area, (X2 * Y0 - X0 * Y2) / area], 1)  # [K,6]

    csum = torch.cumsum(count, 0)
    lo = 0
    while lo < len(count):
        done = int(csum[lo - 1]) if lo else 0
        hi = int(torch.searchsorted(csum, torch.tensor(done + chunk, dtype=csum.dtype), right=True))
        hi = min(max(hi, lo + 1), len(count))
        cnt = count[lo:hi]
        t = torch.repeat_interleave(torch.arange(lo, hi), cnt)
        offs = torch.arange(len(t)) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        bwt = bw[t]
        py = torch.div(offs, bwt, rounding_mode="floor")
        px = x0[t] + (offs - py * bwt)
        py = py + y0[t]
        cx, cy = px.to(torch.float64), py.to(torch.float64)
        c = coef[t]
        l0 = c[:, 0] * cx + c[:, 1] * cy + c[:, 2]
        l1 = c[:, 3] * cx + c[:, 4] * cy + c[:, 5]
        l2 = 1.0 - l0 - l1
        inside = torch.nonzero((l0 >= -eps) & (l1 >= -eps) & (l2 >= -eps)).squeeze(1)
        if len(inside):
            yield Coverage(keep[t[inside]], px[inside], py[inside],
                           torch.stack([l0[inside], l1[inside], l2[inside]], 1))
        lo = hi


def covered_points(triangles: torch.Tensor, width: int, height: int, **kwargs) -> Coverage:
    """All of :func:`triangle_coverage`'s chunks concatenated into one :class:`Coverage` (``M`` may be 0)."""
    parts = list(triangle_coverage(triangles, width, height, **kwargs))
    if not parts:
        e = torch.zeros(0, dtype=torch.int64)
        return Coverage(e, e, e, torch.zeros(0, 3, dtype=torch.float64))
    return Coverage(*(torch.cat(p) for p in zip(*parts)))
