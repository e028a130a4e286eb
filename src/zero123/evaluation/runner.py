"""Novel-view evaluation against held-out renders, with trivial baselines so that the numbers mean something.

A model is any callable::

    predict(input_image, delta_elevation_deg, delta_azimuth_deg, delta_radius, input_elevation_deg) -> image

with ``input_image`` ``[1,3,H,W]`` in [-1,1] (composited on white, at the evaluation size) and the returned image
``[1,3,H,W]`` in [-1,1]. Camera changes follow :mod:`zero123.camera` (target minus input; degrees; azimuth
wrapped to (-180, 180]). :func:`pipeline_predictor` wraps a ``Zero123Pipeline``.

Pairs: for every object of the split (the dataset's held-out ``test`` objects by default), ``pairs_per_object``
(input view, target view) pairs with distinct views, drawn from a generator seeded by (seed, object id), so the
same dataset and seed always give the same pairs.

Baselines (computed on the same pairs):
    * ``input``: return the input view unchanged (what a model that ignores the camera would score);
    * ``mean_train``: the mean image of the training-split views (needs a ``train`` split): all of them, or a
      seeded sample of ``MEAN_TRAIN_MAX_VIEWS`` when there are more (reading 20 000 PNGs took minutes; the mean of
      4096 random views differs from the full mean by well under one 8-bit level per pixel);
    * ``mean_target``: the mean of all target images of the evaluated pairs (an oracle constant image).

With a model, ``zero123 eval`` also scores ``vae_target``: the TARGET view encoded and decoded by the model's own
VAE (an oracle, :func:`vae_roundtrip`). No sample can be more faithful than its decoder allows, so this row is the
share of the error that belongs to the autoencoder rather than to the diffusion model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..camera import spherical_from_rt, world_to_camera_rt
from ..data import layout
from ..errors import Zero123Error
from .metrics import psnr, ssim

Predictor = Callable[[torch.Tensor, float, float, float, float], torch.Tensor]

BASELINES = ("input", "mean_train", "mean_target")
VAE_TARGET = "vae_target"


@dataclass(frozen=True)
class EvalPair:
    """One (input view -> target view) task. Angles in degrees, radius in world units."""

    object_id: str
    input_view: int
    target_view: int
    input_elevation: float
    delta_elevation: float
    delta_azimuth: float
    delta_radius: float


def _wrap180(deg: float) -> float:
    """Angle in degrees wrapped to (-180, 180]."""
    d = math.fmod(deg, 360.0)
    if d <= -180.0:
        d += 360.0
    elif d > 180.0:
        d -= 360.0
    return d


def pair_from_cameras(object_id: str, input_view: int, target_view: int, input_c2w: torch.Tensor,
                      target_c2w: torch.Tensor) -> EvalPair:
    """The camera change between two stored views (4x4 camera-to-world each)."""
    ie, ia, ir = (float(v) for v in spherical_from_rt(world_to_camera_rt(input_c2w.double())))
    te, ta, tr = (float(v) for v in spherical_from_rt(world_to_camera_rt(target_c2w.double())))
    return EvalPair(object_id, input_view, target_view, ie, te - ie, _wrap180(ta - ia), tr - ir)


def select_pairs(root, split: str = "test", pairs_per_object: int = 4, seed: int = 0,
                 max_objects: Optional[int] = None, manifest: Optional[layout.Manifest] = None) -> List[EvalPair]:
    """Deterministic (input, target) pairs for the objects of ``split`` (see the module docstring)."""
    manifest = manifest or layout.read_manifest(root)
    objects = manifest.objects_in(split)
    if max_objects is not None:
        objects = objects[:max_objects]
    if not objects:
        raise Zero123Error(f"{root}: no {split!r} objects in the manifest (render with --test-fraction > 0)")
    if pairs_per_object < 1:
        raise Zero123Error(f"pairs per object must be >= 1, got {pairs_per_object}")
    pairs = []
    for o in objects:
        if o.num_views < 2:
            raise Zero123Error(f"object {o.id!r} has {o.num_views} view(s); evaluation needs at least 2")
        h = int.from_bytes(hashlib.sha256(f"pairs:{seed}:{o.id}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(h)
        all_pairs = [(i, j) for i in range(o.num_views) for j in range(o.num_views) if i != j]
        chosen = rng.choice(len(all_pairs), size=min(pairs_per_object, len(all_pairs)), replace=False)
        cams = {}
        for k in sorted(int(c) for c in chosen):
            i, j = all_pairs[k]
            for v in (i, j):
                if v not in cams:
                    cams[v] = layout.read_view_camera(root, o.id, v)
            pairs.append(pair_from_cameras(o.id, i, j, cams[i], cams[j]))
    return pairs


@dataclass
class EvalResult:
    """Per-method mean metrics, per-pair rows and notes (e.g. why LPIPS is missing)."""

    methods: Dict[str, Dict[str, float]]
    pairs: List[dict]
    notes: List[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"methods": self.methods, "notes": self.notes, "settings": self.settings, "pairs": self.pairs}

    def write_json(self, path) -> Path:
        """Write atomically (:mod:`zero123.utils.atomic`)."""
        from ..utils.atomic import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def table(self) -> str:
        """A plain-text table: one row per method, mean (and std) of each metric."""
        metrics = [m for m in ("psnr", "ssim", "lpips") if any(m in v for v in self.methods.values())]
        w = max([14] + [len(name) + 1 for name in self.methods])  # the name column fits the longest name
        header = f"{'method':<{w}}" + "".join(f"{m.upper() + (' (dB)' if m == 'psnr' else ''):>20}" for m in metrics)
        lines = [header, "-" * len(header)]
        for name, vals in self.methods.items():
            row = f"{name:<{w}}"
            for m in metrics:
                if m in vals:
                    row += f"{vals[m]:>12.4f} ± {vals[m + '_std']:<6.4f}"
                else:
                    row += f"{'-':>20}"
            lines.append(row)
        n = len(self.pairs)
        lines.append(f"({n} pairs; higher PSNR/SSIM and lower LPIPS are better)")
        lines += [f"note: {s}" for s in self.notes]
        return "\n".join(lines)


MEAN_TRAIN_MAX_VIEWS = 4096


def _mean_image(root, entries, size: int, max_views: int = MEAN_TRAIN_MAX_VIEWS, seed: int = 0) -> torch.Tensor:
    """Mean ``[3,S,S]`` (in [-1,1], composited on white) of the views of ``entries``; of a seeded sample of
    ``max_views`` of them when there are more. Images are decoded on a thread pool (PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    views = [(o.id, v) for o in entries for v in range(o.num_views)]
    if len(views) > max_views:
        keep = np.sort(np.random.default_rng(seed).choice(len(views), size=max_views, replace=False))
        views = [views[i] for i in keep]

    acc = None
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for img in pool.map(lambda view: layout.load_view_image(root, *view, size), views, chunksize=64):
            acc = img.double() if acc is None else acc.add_(img)
    return (acc / len(views)).float()


def evaluate(predict: Optional[Predictor], root, pairs: Sequence[EvalPair], image_size: Optional[int] = None,
             baselines: Sequence[str] = BASELINES, lpips=None, method_name: str = "model",
             progress: bool = True, manifest: Optional[layout.Manifest] = None,
             autoencode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> EvalResult:
    """Score ``predict`` (or only the baselines when ``None``) on ``pairs`` of the dataset at ``root``.

    Images are composited on white and resized to ``image_size`` (default: the dataset's). ``lpips``: an
    :class:`~zero123.evaluation.metrics.LPIPS` module or ``None`` (then LPIPS is skipped with a note).
    ``autoencode``: ``[1,3,S,S] -> [1,3,S,S]`` in [-1,1] (e.g. :func:`vae_roundtrip`); scores the method
    ``vae_target``, each target passed through it.
    """
    from tqdm.auto import tqdm

    manifest = manifest or layout.read_manifest(root)
    size = int(image_size or manifest.image_size)
    if not pairs:
        raise Zero123Error("no evaluation pairs")
    for b in baselines:
        if b not in BASELINES:
            raise Zero123Error(f"unknown baseline {b!r}: use {', '.join(BASELINES)}")
    notes = []
    if lpips is None:
        notes.append("LPIPS skipped: no LPIPS weights given (--lpips-weights PATH; nothing is downloaded)")
    cache: Dict[tuple, torch.Tensor] = {}

    def view(oid, v):
        key = (oid, v)
        if key not in cache:
            cache[key] = layout.load_view_image(root, oid, v, size)
        return cache[key]

    constant: Dict[str, torch.Tensor] = {}
    baselines = list(baselines)
    if "mean_train" in baselines:
        train = manifest.objects_in("train")
        if train:
            constant["mean_train"] = _mean_image(root, train, size)
        else:
            baselines.remove("mean_train")
            notes.append("baseline mean_train skipped: the dataset has no train split")
    if "mean_target" in baselines:
        all_targets = torch.stack([view(p.object_id, p.target_view) for p in pairs])
        constant["mean_target"] = all_targets.double().mean(0).float()

    oracles = [VAE_TARGET] if autoencode is not None else []
    methods = ([method_name] if predict is not None else []) + oracles + baselines
    preds: Dict[str, List[torch.Tensor]] = {m: [] for m in methods}
    targets = []
    for p in tqdm(pairs, desc="evaluating", unit="pair", disable=not progress):
        x, y = view(p.object_id, p.input_view), view(p.object_id, p.target_view)
        targets.append(y)
        if predict is not None:
            out = predict(x[None].clone(), p.delta_elevation, p.delta_azimuth, p.delta_radius, p.input_elevation)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 3, size, size):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise Zero123Error(f"predict returned {shape}; expected a [1,3,{size},{size}] tensor in [-1,1]")
            preds[method_name].append(out[0].detach().float().cpu().clamp(-1, 1))
        if autoencode is not None:
            preds[VAE_TARGET].append(autoencode(y[None].clone())[0].detach().float().cpu().clamp(-1, 1))
        for b in baselines:
            preds[b].append(x if b == "input" else constant[b])
    tgt01 = (torch.stack(targets) + 1) / 2
    results: Dict[str, Dict[str, float]] = {}
    per_pair = [asdict(p) for p in pairs]
    for m in methods:
        pr01 = (torch.stack(preds[m]) + 1) / 2
        scores = {"psnr": psnr(pr01, tgt01), "ssim": ssim(pr01, tgt01)}
        if lpips is not None:
            scores["lpips"] = torch.cat([lpips(pr01[i:i + 16], tgt01[i:i + 16]) for i in range(0, len(pr01), 16)])
        results[m] = {}
        for k, v in scores.items():
            results[m][k] = float(v.mean())
            results[m][k + "_std"] = float(v.std(unbiased=False))
            for row, val in zip(per_pair, v.tolist()):
                row.setdefault(m, {})[k] = val
    settings = {"root": str(root), "image_size": size, "num_pairs": len(pairs),
                "num_objects": len({p.object_id for p in pairs})}
    return EvalResult(methods=results, pairs=per_pair, notes=notes, settings=settings)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B,3,H,W]`` in [-1,1] -> ``[B,3,size,size]`` (bicubic, antialiased, clamped); unchanged at that size."""
    if x.shape[-1] == size:
        return x
    x = torch.nn.functional.interpolate((x + 1) / 2, size=(size, size), mode="bicubic", antialias=True,
                                       align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def pipeline_predictor(pipe, num_inference_steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
                       eta: float = 0.0, num_samples: int = 1) -> Predictor:
    """A :data:`Predictor` around ``Zero123Pipeline``: samples one view per call with a generator re-seeded from
    ``seed`` and a call counter (reproducible for a fixed pair order). Output resized to the input's size.

    ``num_samples`` > 1 draws that many samples of the same view (start noise ``[K,4,h,w]`` from the same
    generator) and returns their pixel mean: a Monte Carlo estimate of the model's expected view. It scores higher
    on PSNR than one sample (PSNR rewards the mean of what the model finds plausible) but is blurrier where the
    model is unsure; ``zero123 views`` returns single samples."""
    k = int(num_samples)
    if k < 1:
        raise Zero123Error(f"num_samples must be >= 1, got {num_samples}")
    counter = {"n": 0}

    def predict(image, d_elev, d_azim, d_radius, input_elev):
        g = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + counter["n"])
        counter["n"] += 1
        x = _resize(image, pipe.model.image_size)
        out = pipe(x, elevations=[float(d_elev)] * k, azimuths=[float(d_azim)] * k, radii=[float(d_radius)] * k,
                   input_elevation=float(input_elev), num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, eta=eta, generator=g, output_type="pt", progress=False)
        y = out.images.float().cpu().mean(0, keepdim=True)  # [1,3,S,S] in [0,1]
        return _resize(y * 2 - 1, image.shape[-1])

    return predict


def vae_roundtrip(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """``image [1,3,S,S] in [-1,1] -> decode(encode(image))`` with ``model``'s VAE (posterior mean, at the
    model's image size, back to S): what the decoder makes of a perfect latent."""

    @torch.no_grad()
    def autoencode(image: torch.Tensor) -> torch.Tensor:
        x = _resize(image, model.image_size).to(model.device)
        y = model.decode_latents(model.encode_latents(x, sample=False)).float().cpu().clamp(-1, 1)
        return _resize(y, image.shape[-1])

    return autoencode
