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

At scale the cache is built once, on many GPUs, and kept in a file (``data.latent_cache_file``): each of N jobs
encodes the views of one shard of the objects (:mod:`zero123.data.shards`, ``zero123 cache-latents --shard K/N``)
and writes a safetensors file; ``merge_latent_caches`` joins the N files into the cache of the whole split, rows
in the dataset's order, equal to ``LatentCache.build`` of the whole split up to the float summation order of other
batch compositions (bit-equal at the same ones, e.g. ``batch_size=1``). A file records the frozen VAE's
``vae_fingerprint``, the image size and the object ids, and is refused for another VAE or dataset.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data import layout
from ..data.shards import Shard, check_complete
from ..errors import Zero123Error

_FORMAT = "zero123-latent-cache-1"


class _ViewImages(torch.utils.data.Dataset):
    """Every view of a ``ViewPairDataset``'s objects, in cache row order: ``[3,S,S]`` in [-1,1]."""

    def __init__(self, pairs, objects: Optional[Sequence[int]] = None):
        self.pairs = pairs
        objects = range(len(pairs.objects)) if objects is None else objects
        self.index = [(i, v) for i in objects for v in range(pairs.objects[i].num_views)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> torch.Tensor:
        i, v = self.index[k]
        return layout.load_view_image(self.pairs.root, self.pairs.objects[i].id, v, self.pairs.image_size)


class LatentCache:
    """VAE posteriors of all views of a dataset's objects (see the module docstring).

    ``lookup(object_index, view)`` (long ``[B]`` each) -> ``(mean, std)`` ``[B,C,h,w]``.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, offsets: torch.Tensor, num_views: torch.Tensor,
                 meta: Optional[dict] = None):
        #: what the cache was built from: ``object_ids``, ``image_size``, ``vae_sha256``, ``shard``,
        #: ``object_positions`` (index of each cached object in the dataset split), ``num_dataset_objects``
        self.meta = dict(meta or {})
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
              progress: bool = False, shard: Optional[Shard] = None, vae_sha256: Optional[str] = None
              ) -> "LatentCache":
        """Encode every view of ``dataset`` (a ``ViewPairDataset``) with ``vae`` on ``device``.

        ``autocast``: the context manager the training step runs the VAE under (``accelerator.autocast``).
        ``shard``: only the objects of that shard (their rows in dataset order; ``merge_latent_caches`` joins
        the shards). ``vae_sha256``: the VAE's ``trainer.vae_fingerprint``, recorded for ``save``.
        """
        positions = [i for i, o in enumerate(dataset.objects) if shard is None or shard.contains(o.id)]
        views = _ViewImages(dataset, positions)
        if not len(views) and shard is None:
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
        if not means:  # a shard without objects (more shards than objects): empty rows of the latent shape
            f = 2 ** (len(vae.config.block_out_channels) - 1)
            means = stds = [torch.zeros(0, vae.config.latent_channels, dataset.image_size // f,
                                        dataset.image_size // f, dtype=vae.dtype, device=device)]
        counts = torch.tensor([dataset.objects[i].num_views for i in positions], dtype=torch.long)
        offsets = torch.cumsum(counts, 0) - counts
        meta = {"object_ids": [dataset.objects[i].id for i in positions], "object_positions": positions,
                "num_dataset_objects": len(dataset.objects), "image_size": int(dataset.image_size),
                "vae_sha256": vae_sha256, "shard": None if shard is None else str(shard)}
        return cls(torch.cat(means), torch.cat(stds), offsets, counts, meta)

    def save(self, path) -> Path:
        """Write the cache as one safetensors file (tensors on the CPU; ``meta`` in its header), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tensors = {"mean": self.mean.detach().cpu().contiguous(), "std": self.std.detach().cpu().contiguous(),
                   "num_views": self.num_views.contiguous()}
        try:
            save_file(tensors, str(tmp), metadata={"format": _FORMAT, "meta": json.dumps(self.meta)})
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path, device="cpu") -> "LatentCache":
        """Read a file written by ``save`` (safetensors: no code is unpickled)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise Zero123Error(f"latent cache file {path} not found (make it with `zero123 cache-latents`)")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                if header.get("format") != _FORMAT:
                    raise Zero123Error(f"{path}: not a zero123 latent cache file")
                t = {k: f.get_tensor(k) for k in ("mean", "std", "num_views")}
            meta = json.loads(header["meta"])
        except Zero123Error:
            raise
        except Exception as exc:  # a truncated or foreign file
            raise Zero123Error(f"{path}: cannot read latent cache ({type(exc).__name__}: {exc})") from None
        counts = t["num_views"].long()
        if int(counts.sum()) != t["mean"].shape[0] or len(meta.get("object_ids", ())) != counts.shape[0]:
            raise Zero123Error(f"{path}: latent cache is inconsistent (rows vs views per object)")
        return cls(t["mean"].to(device), t["std"].to(device), torch.cumsum(counts, 0) - counts, counts, meta)

    def check_matches(self, dataset, vae_sha256: Optional[str], where: str = "latent cache") -> None:
        """``Zero123Error`` unless this is the whole-split cache of ``dataset`` for the VAE ``vae_sha256``."""
        if self.meta.get("shard") is not None:
            raise Zero123Error(f"{where} is shard {self.meta['shard']} only: merge all shards first "
                               "(zero123 cache-latents --merge)")
        if None not in (vae_sha256, self.meta.get("vae_sha256")) and self.meta["vae_sha256"] != vae_sha256:
            raise Zero123Error(f"{where} was encoded by another VAE (sha256 {self.meta['vae_sha256'][:12]}..., "
                               f"this run's is {vae_sha256[:12]}...)")
        if self.meta.get("image_size") != dataset.image_size:
            raise Zero123Error(f"{where} holds {self.meta.get('image_size')} px views, the run uses "
                               f"{dataset.image_size} px")
        ids = [o.id for o in dataset.objects]
        if self.meta.get("object_ids") != ids or self.num_views.tolist() != [o.num_views for o in dataset.objects]:
            raise Zero123Error(f"{where} is of other objects than {dataset.root} split {dataset.split!r} "
                               f"({len(self.meta.get('object_ids', []))} cached, {len(ids)} in the split)")


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


def merge_latent_caches(paths: Sequence, out=None) -> LatentCache:
    """Join the shard files of one split (all N shards, same VAE and image size) into the whole-split cache,
    rows in the dataset's order; written to ``out`` when given."""
    parts = [LatentCache.load(p) for p in paths]
    if not parts:
        raise Zero123Error("latent cache merge: give the shard files")
    for p, c in zip(paths, parts):
        if c.meta.get("shard") is None:
            raise Zero123Error(f"{p} is a whole latent cache, not a shard")
    check_complete([Shard.parse(c.meta["shard"]) for c in parts], "latent cache")
    first = parts[0].meta
    for p, c in zip(paths, parts):
        for key in ("vae_sha256", "image_size", "num_dataset_objects"):
            if c.meta.get(key) != first.get(key):
                raise Zero123Error(f"{p}: {key} {c.meta.get(key)!r} differs from {paths[0]}'s {first.get(key)!r}")
    rows = []  # (dataset position, object id, mean, std) per object
    for c in parts:
        for j, (pos, oid) in enumerate(zip(c.meta["object_positions"], c.meta["object_ids"])):
            r = slice(int(c.offsets[j]), int(c.offsets[j] + c.num_views[j]))
            rows.append((pos, oid, c.mean[r], c.std[r]))
    rows.sort(key=lambda r: r[0])
    n = first["num_dataset_objects"]
    if [r[0] for r in rows] != list(range(n)):
        raise Zero123Error(f"latent cache shards hold {len(rows)} objects at inconsistent positions, "
                           f"the split has {n}")
    counts = torch.tensor([r[2].shape[0] for r in rows], dtype=torch.long)
    meta = dict(first, shard=None, object_ids=[r[1] for r in rows], object_positions=list(range(n)))
    merged = LatentCache(torch.cat([r[2] for r in rows]), torch.cat([r[3] for r in rows]),
                         torch.cumsum(counts, 0) - counts, counts, meta)
    if out is not None:
        merged.save(out)
    return merged
