"""Pairs of views of one object for training, read from an Objaverse-style render folder.

Layout (what ``zero123 render-dataset`` writes)::

    ROOT/manifest.json     {"version": 1, "image_size": 256, "fov_deg": F, "views_per_object": N,
                            "objects": [{"id": "...", "split": "train"|"val"|"test", "num_views": N,
                                         "source": "..."}], "skipped": [...]}
    ROOT/<object_id>/000.png ...   RGBA 8-bit renders
    ROOT/<object_id>/000.npy ...   3x4 float32 world-to-camera RT (``zero123.camera.save_zero123_rt``)

Each item is two distinct views of one object, as Zero123's ``ObjaverseData``: the *target* view and the *input*
(conditioning) view, both composited on white, resized to the model image size (bicubic, antialiased) and mapped
to [-1, 1], plus the camera embedding ``T = zero123.camera.embedding_from_rt(variant, target_rt, input_rt)``
(Zero123's ``get_T``).

Reproducibility: items are addressed by a *draw number* ``d`` (0, 1, 2, ... over the whole run). ``DrawStream``
maps draw ``d`` to an object (epoch ``d // n`` is a seeded permutation of the ``n`` objects) and the dataset picks
the view pair from a generator seeded by ``(seed, d)``; the trainer draws the per-sample noise the same way. So a
run's data and randomness depend only on the seed and the draw numbers, not on the number of processes, the
gradient accumulation or where a run was resumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..camera import ConditioningVariant, embedding_from_rt
from ..data import layout
from ..errors import Zero123Error


# ---------------------------------------------------------------------------------------------------------------
# reading the layout (``zero123.data.layout`` owns the format; this adds the stored 3x4 RT, read as is)


def load_view_rt(root, object_id: str, view: int) -> torch.Tensor:
    """A view's 3x4 world-to-camera ``RT`` (float32), exactly as stored (no inversion round trip)."""
    path = layout.camera_path(root, object_id, view)
    try:
        rt = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise Zero123Error(f"missing camera matrix {path}") from None
    except (OSError, ValueError) as exc:
        raise Zero123Error(f"cannot read camera matrix {path}: {exc}") from None
    if rt.shape != (3, 4) or not np.all(np.isfinite(rt)):
        raise Zero123Error(f"{path}: expected a finite 3x4 world-to-camera matrix, got shape {rt.shape}")
    return torch.from_numpy(rt.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# draw numbers -> objects


def _seeded_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


class DrawStream:
    """Draw ``d`` -> object index: epoch ``e = d // n`` visits the ``n`` objects in a permutation seeded by
    ``(seed, e)``. Pure function of its arguments (no state besides a cache)."""

    def __init__(self, num_items: int, seed: int):
        if num_items < 1:
            raise Zero123Error("the dataset split has no objects")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm, self._epoch = _seeded_rng(self.seed, 1, epoch).permutation(self.num_items), epoch
        return self._perm

    def item(self, draw: int) -> int:
        return int(self.permutation(draw // self.num_items)[draw % self.num_items])


class DrawSampler(torch.utils.data.Sampler):
    """This process's share of the draw stream, as ``(draw, object_index)`` keys for ``ViewPairDataset``.

    A micro-step consumes ``micro_batch x num_processes`` consecutive draws; process ``p`` takes its slice
    ``[p x micro_batch, (p + 1) x micro_batch)``. An optimizer step (``accumulation`` micro-steps) therefore sees
    the draws ``[start + s G, start + (s + 1) G)`` with ``G = micro_batch x num_processes x accumulation`` whatever
    the split between processes and accumulation. ``num_micro_steps`` bounds the length (``None``: endless).
    """

    def __init__(self, stream: DrawStream, micro_batch: int, start_draw: int = 0, num_processes: int = 1,
                 process_index: int = 0, num_micro_steps: int | None = None):
        self.stream = stream
        self.micro_batch = int(micro_batch)
        self.start_draw = int(start_draw)
        self.num_processes = int(num_processes)
        self.process_index = int(process_index)
        self.num_micro_steps = num_micro_steps

    def __len__(self):
        if self.num_micro_steps is None:
            raise TypeError("endless DrawSampler has no length")
        return self.num_micro_steps * self.micro_batch

    def __iter__(self):
        m = 0
        while self.num_micro_steps is None or m < self.num_micro_steps:
            base = self.start_draw + m * self.micro_batch * self.num_processes + self.process_index * self.micro_batch
            for d in range(base, base + self.micro_batch):
                yield d, self.stream.item(d)
            m += 1


# ---------------------------------------------------------------------------------------------------------------
# the dataset


class ViewPairDataset(torch.utils.data.Dataset):
    """Pairs (target view, input view) of the objects of one split.

    ``dataset[i]`` (``i`` an int object index, draw number ``i``) or ``dataset[(draw, i)]`` returns a dict:

    * ``target``, ``cond``: float32 ``[3,S,S]`` in [-1, 1] (composited on white, ``S = image_size``);
    * ``camera``: float32 ``[4]``, ``embedding_from_rt(variant, target_rt, cond_rt)``;
    * ``draw``, ``object_index``, ``target_view``, ``cond_view``: int64 scalars.

    ``with_cond=False`` (VAE training) leaves out ``cond`` and ``camera`` (only the target view is read);
    ``with_target=False`` leaves out the ``target`` image (its latent comes from a ``LatentCache``).

    The two views are distinct (when the object has more than one), chosen by a generator seeded by
    ``(seed, draw)`` like ``random.sample(range(num_views), 2)`` in Zero123.
    """

    def __init__(self, root, split: str = "train", image_size: int | None = None, variant: str = "zero123",
                 seed: int = 0, max_objects: int | None = None, check_files: bool = True, with_cond: bool = True,
                 same_view_prob: float = 0.0, with_target: bool = True):
        self.root = Path(root)
        self.manifest = layout.read_manifest(self.root)
        self.split = split
        self.objects = self.manifest.objects_in(split)
        if max_objects is not None:
            self.objects = self.objects[: int(max_objects)]
        self.image_size = int(image_size or self.manifest.image_size)
        self.variant = ConditioningVariant.parse(variant)
        self.seed = int(seed)
        self.with_cond = bool(with_cond)
        self.with_target = bool(with_target)
        if not (self.with_cond or self.with_target):
            raise Zero123Error("a view-pair dataset needs the target view, the input view, or both")
        if not 0.0 <= float(same_view_prob) <= 1.0:
            raise Zero123Error(f"same_view_prob must be in [0, 1], got {same_view_prob}")
        self.same_view_prob = float(same_view_prob)
        self._rt_cache: dict[tuple[int, int], torch.Tensor] = {}  # filled lazily (per loader worker)
        if check_files and self.objects:  # fail early, with a clear message, on a half-written dataset
            oid = self.objects[0].id
            for p in (layout.image_path(self.root, oid, 0), layout.camera_path(self.root, oid, 0)):
                if not p.is_file():
                    raise Zero123Error(f"dataset {self.root}: missing {p.relative_to(self.root)} "
                                       f"(object {self.objects[0].id!r} of the manifest)")

    def __len__(self) -> int:
        return len(self.objects)

    def view_pair(self, draw: int, object_index: int) -> tuple[int, int]:
        """``(target_view, cond_view)`` of a draw: two distinct views, or with probability ``same_view_prob``
        (its own random stream, so the distinct pairs are the same as without it) one view twice."""
        n = self.objects[object_index].num_views
        if n == 1:
            return 0, 0
        target, cond = _seeded_rng(self.seed, 0, draw).choice(n, size=2, replace=False)
        if self.same_view_prob > 0 and _seeded_rng(self.seed, 2, draw).random() < self.same_view_prob:
            cond = target
        return int(target), int(cond)

    def load_rt(self, object_index: int, view: int) -> torch.Tensor:
        """The stored 3x4 world-to-camera ``RT`` of one view (cached per worker)."""
        obj = self.objects[object_index]
        if not 0 <= view < obj.num_views:
            raise Zero123Error(f"object {obj.id!r} has {obj.num_views} views, asked for view {view}")
        key = (object_index, view)
        rt = self._rt_cache.get(key)
        if rt is None:  # 48 bytes each; np.load's header parsing costs more than the PNG decode at 128 px
            rt = self._rt_cache[key] = load_view_rt(self.root, obj.id, view)
        return rt.clone()

    def load_view(self, object_index: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [3,S,S] in [-1,1], RT [3,4])`` of one view."""
        rt = self.load_rt(object_index, view)
        obj = self.objects[object_index]
        return layout.load_view_image(self.root, obj.id, view, self.image_size), rt

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            draw, index = int(key[0]), int(key[1])
        else:
            draw = index = int(key)
        if not 0 <= index < len(self.objects):
            raise IndexError(index)
        tv, cv = self.view_pair(draw, index)
        item = {"draw": torch.tensor(draw), "object_index": torch.tensor(index),
                "target_view": torch.tensor(tv), "cond_view": torch.tensor(cv)}
        if self.with_target:
            item["target"], target_rt = self.load_view(index, tv)
        else:
            target_rt = self.load_rt(index, tv)
        if self.with_cond:
            item["cond"], cond_rt = self.load_view(index, cv)
            item["camera"] = embedding_from_rt(self.variant, target_rt, cond_rt).reshape(4)
        return item
