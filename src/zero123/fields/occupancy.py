"""Occupancy grid for empty-space skipping (nerfacc ``OccGridEstimator`` semantics, one level, pure PyTorch).

A ``resolution^3`` grid over the field's cube ``[-radius, radius]^3`` keeps, per cell, an exponential moving
maximum of the opacity a render step would get there, ``occ = density * step_size`` (first-order
``1 - exp(-density * step)``), from one jittered point per cell. Every ``update_every`` steps:
``occ = max(occ * ema_decay, new)``; a cell is occupied when ``occ > min(threshold, mean(occ))``.
Ray samples that fall in unoccupied cells are never evaluated with gradients.
"""

from __future__ import annotations

import torch
from torch import nn


class OccupancyGrid(nn.Module):
    """Binary occupancy of ``resolution^3`` cells over ``[-radius, radius]^3`` (state in buffers, so it is saved
    with ``state_dict``)."""

    def __init__(self, radius: float, resolution: int = 32, update_every: int = 16, ema_decay: float = 0.95,
                 threshold: float = 0.01):
        super().__init__()
        self.radius, self.resolution = float(radius), int(resolution)
        self.update_every, self.ema_decay, self.threshold = int(update_every), float(ema_decay), float(threshold)
        n = self.resolution ** 3
        self.register_buffer("occs", torch.full((n,), -1.0))      # -1: never evaluated
        self.register_buffer("binary", torch.ones(n, dtype=torch.bool))

    # ----- geometry ---------------------------------------------------------------------------------------
    def cell_size(self) -> float:
        return 2 * self.radius / self.resolution

    def cell_index(self, x: torch.Tensor) -> torch.Tensor:
        """Flat cell index [N] of world points x [N,3] (clamped into the grid)."""
        r = self.resolution
        ijk = ((x + self.radius) / (2 * self.radius) * r).floor().long().clamp(0, r - 1)
        return ijk[..., 0] * (r * r) + ijk[..., 1] * r + ijk[..., 2]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Bool [N]: whether each world point lies in an occupied cell (False outside the cube)."""
        inside = (x.abs() <= self.radius).all(-1)
        return self.binary[self.cell_index(x)] & inside

    def cell_centers(self) -> torch.Tensor:
        r = self.resolution
        ar = torch.arange(r, device=self.occs.device, dtype=torch.float32)
        g = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)
        return (g + 0.5) / r * 2 * self.radius - self.radius

    def occupied_bounds(self):
        """(lo [3], hi [3]) world-space AABB of the occupied cells, or None when nothing is occupied."""
        idx = torch.nonzero(self.binary).squeeze(1)
        if idx.numel() == 0:
            return None
        r = self.resolution
        ijk = torch.stack([idx // (r * r), (idx // r) % r, idx % r], -1)
        cs = self.cell_size()
        lo = ijk.min(0).values.float() * cs - self.radius
        hi = (ijk.max(0).values.float() + 1) * cs - self.radius
        return lo, hi

    # ----- update -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, density_fn, step_size: float, generator: torch.Generator | None = None,
               chunk: int = 1 << 18) -> None:
        """Re-evaluate every cell at one jittered point and refresh ``binary`` (call every ``update_every`` steps).

        ``density_fn``: world points [N,3] -> density [N]. ``generator`` makes the jitter reproducible (its
        device must match the grid's device).
        """
        r = self.resolution
        dev = self.occs.device
        jitter = torch.rand(r ** 3, 3, device=dev, generator=generator)
        x = (self.cell_centers() - self.cell_size() / 2) + jitter * self.cell_size()
        occ = torch.cat([density_fn(x[s:s + chunk]).float().reshape(-1) * step_size
                         for s in range(0, x.shape[0], chunk)])
        occ = torch.nan_to_num(occ, nan=0.0, posinf=1e6)
        self.occs.copy_(torch.maximum(self.occs * self.ema_decay, occ))
        valid = self.occs[self.occs >= 0]
        thre = min(self.threshold, float(valid.mean())) if valid.numel() else self.threshold
        self.binary.copy_(self.occs > thre)

    def maybe_update(self, step: int, density_fn, step_size: float, generator=None) -> bool:
        """Update when ``step % update_every == 0``; returns whether it did."""
        if step % self.update_every == 0:
            self.update(density_fn, step_size, generator)
            return True
        return False

    def fill(self, value: bool = True) -> None:
        self.binary.fill_(bool(value))
