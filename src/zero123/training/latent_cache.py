"""Frozen-VAE latents of every training view, encoded once per run instead of twice per pair per step.

With a frozen VAE (``model.freeze_vae``, Zero123's setting) the VAE posterior of a view never changes, yet the
objective encodes both views of every pair at every step: on the bundled small model that is about a third of an
H200 training step (``bench/bench_train.py --cache-latents`` measures it). ``data.cache_latents: true`` encodes
each view of the training split once at set-up and the objective then looks the posteriors up:

* ``mean``, ``std``: ``[num_views_total, C, h, w]`` in the frozen VAE's dtype, on the training device, the
  posterior ``N(mean, std^2)`` of each view (what ``vae.encode(image).latent_dist`` gives), so the target latent
  is still a fresh posterior SAMPLE per draw (``mean + std x posterior_noise``) and the concat latent the mode;
* view ``v`` of object ``i`` is row ``offsets[i] + v``.

The values are those of the live path (same VAE, dtype and autocast; the VAE's GroupNorm is per sample, so the
batch it is encoded in changes nothing beyond floating-point summation order). Memory: ``2 x C h w`` numbers per
view, 16 KiB in bf16 for the small model's 4x32x32 latents (24 000 views: 0.4 GiB); every process holds the whole
cache (each encodes all views: seconds for the small model).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data import layout
from ..errors import Zero123Error


class _ViewImages(torch.utils.data.Dataset):
    """Every view of a ``ViewPairDataset``'s objects, in cache row order: ``[3,S,S]`` in [-1,1]."""

    def __init__(self, pairs):
        self.pairs = pairs
        self.index = [(i, v) for i, o in enumerate(pairs.objects) for v in range(o.num_views)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> torch.Tensor:
        i, v = self.index[k]
        return layout.load_view_image(self.pairs.root, self.pairs.objects[i].id, v, self.pairs.image_size)


class LatentCache:
    """VAE posteriors of all views of a dataset's objects (see the module docstring).

    ``lookup(object_index, view)`` (long ``[B]`` each) -> ``(mean, std)`` ``[B,C,h,w]``.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, offsets: torch.Tensor, num_views: torch.Tensor):
        if mean.shape != std.shape:
            raise Zero123Error(f"latent cache: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ")
        self.mean, self.std = mean, std
        # row arithmetic and range checks on the CPU: no device synchronisation per training step
        self.offsets = offsets.to("cpu", torch.long)
        self.num_views = num_views.to("cpu", torch.long)

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    @torch.no_grad()
    def build(cls, vae, dataset, device, batch_size: int = 256, num_workers: int = 0, autocast=None,
              progress: bool = False) -> "LatentCache":
        """Encode every view of ``dataset`` (a ``ViewPairDataset``) with ``vae`` on ``device``.

        ``autocast``: the context manager the training step runs the VAE under (``accelerator.autocast``).
        """
        views = _ViewImages(dataset)
        if not len(views):
            raise Zero123Error(f"latent cache: dataset {dataset.root} split {dataset.split!r} has no views")
        loader = torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=num_workers,
                                             pin_memory=torch.device(device).type == "cuda")
        means, stds = [], []
        from tqdm.auto import tqdm

        for images in tqdm(loader, desc="encoding views (latent cache)", unit="batch", disable=not progress,
                           leave=False):
            with (autocast() if autocast is not None else nullcontext()):
                dist = vae.encode(images.to(device, vae.dtype, non_blocking=True)).latent_dist
            means.append(dist.mean.to(vae.dtype))
            stds.append(dist.std.to(vae.dtype))
        counts = torch.tensor([o.num_views for o in dataset.objects], dtype=torch.long)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(torch.cat(means), torch.cat(stds), offsets, counts)

    def rows(self, object_index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Cache rows ``[B]`` (on the cache's device) of (object, view) pairs given as CPU tensors; an
        out-of-range pair is an error, not a wrong latent."""
        object_index = object_index.to("cpu", torch.long).reshape(-1)
        view = view.to("cpu", torch.long).reshape(-1)
        n_obj = self.offsets.shape[0]
        if bool(((object_index < 0) | (object_index >= n_obj)).any()):
            raise Zero123Error(f"latent cache: object index out of range [0, {n_obj})")
        if bool(((view < 0) | (view >= self.num_views[object_index])).any()):
            raise Zero123Error("latent cache: view index beyond the object's number of views")
        return (self.offsets[object_index] + view).to(self.mean.device, non_blocking=True)

    def lookup(self, object_index: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows(object_index, view)
        return self.mean[r], self.std[r]
