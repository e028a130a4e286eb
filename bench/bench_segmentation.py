"""Benchmark of background removal for real photos: mask IoU, boundary F-score, time and memory per method.

Cases (exact masks): the textured / coloured real meshes shipped in pybullet_data (duck, soccer ball, mug, teddy,
lego brick, traffic cone, ...; ``zero123.data.objects.pybullet_sources``) rendered by the project's rasteriser
(``zero123.data.render``, 2 views each, elevation 0..40 degrees) and alpha-composited at a random size (45-75%
of the shorter side) and position near the centre over 1024 x 768 backgrounds:

* ``clutter``: real photographs shipped by scikit-image (``skimage.data``: brick, grass, gravel, chelsea, coffee,
  astronaut, rocket), resized and cropped to fill the frame;
* ``graded``: a linear gradient between two random colours with a vignette and sensor-like noise.

The ground truth is the render's alpha > 0.5. Per method: mean mask IoU, mean boundary F-score (DAVIS-style:
precision/recall of boundary pixels matched within 0.8% of the image diagonal), the share of photos refused
(a refusal counts as IoU 0 and F 0), median time per 1024 px photo and the added peak memory (max RSS of a fresh
process during the call minus before it, on one 1024 x 768 photo: Linux ``VmHWM`` reset through
``/proc/self/clear_refs``). Methods:

* ``plain``: ``zero123.preprocessing.segment_foreground`` (the plain-background rule, refuses busy borders);
* ``prior``: the built-in's seed alone (``zero123.segmentation.foreground_prior`` > Otsu), no GrabCut;
* ``builtin``: ``zero123.segmentation.builtin_foreground`` (what ``--segmentation auto`` uses when the border
  is not plain);
* ``onnx:FILE``: ``--onnx FILE`` (repeatable), a salient-object ONNX model through ``zero123.matting``.

    python bench/bench_segmentation.py --out bench/results/segmentation_cpu.json
    python bench/bench_segmentation.py --quick --out /tmp/seg.json          # 4 objects x 1 view, seconds
    python bench/bench_segmentation.py --save-masks /tmp/masks              # also write the masks as PNG

The large-photo rows time ``prepare_input_image`` (downscale to 1024 px + segmentation + recentring) on a
4000 x 3000 and an 8000 x 6000 photo and measure its added peak memory the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

OBJECTS = ["duck", "soccerball", "checker_sphere", "torus", "mug", "teddy", "lego", "traffic_cone", "bunny",
           "shape_sorter"]
CLUTTER = ["brick", "grass", "gravel", "chelsea", "coffee", "astronaut", "rocket"]
PHOTO_SIZE = (1024, 768)


# ----- cases -------------------------------------------------------------------------------------------------------
def render_objects(names, views: int = 2, size: int = 384):
    """{(name, view): RGBA uint8 [size,size,4]} of pybullet_data meshes (needs pybullet)."""
    from zero123.data.objects import pybullet_sources
    from zero123.data.render import DatasetRenderSettings, render_object_views

    sources = {s.id: s for s in pybullet_sources(random_urdfs=False)}
    settings = DatasetRenderSettings(image_size=size, views_per_object=views, elevation_range=(0.0, 40.0),
                                     distance_range=(1.6, 1.9), samples=2)
    out = {}
    for name in names:
        rgba, _ = render_object_views(sources[f"pybullet_{name}"].load(), name, settings)
        for i, a in enumerate(rgba):
            out[(name, i)] = a
    return out


def clutter_background(name: str, size=PHOTO_SIZE) -> np.ndarray:
    """A scikit-image photograph resized (cover) and centre-cropped to ``size`` (W, H); uint8 RGB."""
    from skimage import data

    im = Image.fromarray(getattr(data, name)()).convert("RGB")
    s = max(size[0] / im.width, size[1] / im.height)
    im = im.resize((round(im.width * s + 0.5), round(im.height * s + 0.5)), Image.Resampling.LANCZOS)
    x0, y0 = (im.width - size[0]) // 2, (im.height - size[1]) // 2
    return np.asarray(im.crop((x0, y0, x0 + size[0], y0 + size[1])))


def graded_background(rng: np.random.Generator, size=PHOTO_SIZE) -> np.ndarray:
    """Linear gradient between two random colours at a random angle, a vignette and Gaussian noise; uint8 RGB."""
    w, h = size
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a)) + 0.5
    img = c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)[..., None]
    img = img * (1.0 - rng.uniform(0.2, 0.5) * r2 / 0.5) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_photo(size=PHOTO_SIZE) -> Image.Image:
    """A graded-background photo with a red box in the middle, ``size`` (W, H) (upsampled from 1024 x 768 when
    larger, so that making it needs little memory)."""
    im = Image.fromarray(graded_background(np.random.default_rng(0)))
    im.paste((200, 40, 40), (400, 250, 650, 550))
    return im if tuple(size) == PHOTO_SIZE else im.resize(tuple(size), Image.Resampling.BILINEAR)


def composite(rgba: np.ndarray, background: np.ndarray, rng: np.random.Generator):
    """Place an object render over ``background`` at 45-75% of its shorter side near the centre.
    Returns (RGB uint8 [H,W,3], exact mask bool [H,W])."""
    h, w, _ = background.shape
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha > 0)
    crop = Image.fromarray(rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1], "RGBA")
    scale = rng.uniform(0.45, 0.75) * min(h, w) / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.Resampling.LANCZOS)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w - crop.width / 2
    cy = h / 2 + rng.uniform(-0.1, 0.1) * h - crop.height / 2
    x0, y0 = int(np.clip(cx, 0, w - crop.width)), int(np.clip(cy, 0, h - crop.height))
    canvas = Image.fromarray(background).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    layer.paste(crop, (x0, y0))
    out = Image.alpha_composite(canvas, layer).convert("RGB")
    return np.asarray(out), np.asarray(layer)[..., 3] > 127


def make_cases(objects=OBJECTS, views: int = 2, seed: int = 0):
    """List of dicts {id, kind, image (uint8 RGB), mask (bool)}: each render over every clutter photo's turn and a
    graded background (objects x views x 2 cases)."""
    renders = render_objects(objects, views)
    rng = np.random.default_rng(seed)
    cases = []
    for i, ((name, v), rgba) in enumerate(sorted(renders.items())):
        bg_name = CLUTTER[i % len(CLUTTER)]
        img, mask = composite(rgba, clutter_background(bg_name), rng)
        cases.append({"id": f"{name}{v}_on_{bg_name}", "kind": "clutter", "image": img, "mask": mask})
        img, mask = composite(rgba, graded_background(rng), rng)
        cases.append({"id": f"{name}{v}_on_gradient", "kind": "graded", "image": img, "mask": mask})
    return cases


# ----- metrics -----------------------------------------------------------------------------------------------------
def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = 0.008) -> float:
    """Boundary F-measure (DAVIS): boundary pixels of each mask matched to the other's within ``tolerance`` x the
    image diagonal; F = 2PR / (P + R)."""
    from scipy import ndimage

    d = max(1.0, tolerance * float(np.hypot(*gt.shape)))
    bp, bg = _boundary(pred), _boundary(gt)
    if not bp.any() or not bg.any():
        return float(bp.any() == bg.any())
    dist_to_gt = ndimage.distance_transform_edt(~bg)
    dist_to_pred = ndimage.distance_transform_edt(~bp)
    precision = float((dist_to_gt[bp] <= d).mean())
    recall = float((dist_to_pred[bg] <= d).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ----- methods -----------------------------------------------------------------------------------------------------
def method_fn(name: str):
    """``PIL image -> bool mask`` for a method name (raises ``Zero123Error`` when the method refuses)."""
    if name == "plain":
        from zero123.preprocessing import segment_foreground

        return lambda im: segment_foreground(im) > 0.5
    if name == "prior":
        from zero123.segmentation import foreground_prior_mask

        return lambda im: foreground_prior_mask(im)
    if name == "builtin":
        from zero123.segmentation import builtin_foreground

        return lambda im: builtin_foreground(im) > 0.5
    if name == "prepare":  # the whole input preparation (downscale if large, auto segmentation, recentre)
        from zero123.preprocessing import prepare_input_image

        return lambda im: prepare_input_image(im, size=256).mask > 0.5
    if name.startswith("onnx:"):
        from zero123.matting import OnnxMattingModel

        model = OnnxMattingModel(name[5:])
        return lambda im: model(im) > 0.5
    raise SystemExit(f"unknown method {name!r}")


def evaluate(cases, methods, save_masks: Path | None = None):
    from zero123.errors import Zero123Error

    rows = {}
    for m in methods:
        fn = method_fn(m)
        per_case, times = [], []
        for c in cases:
            im = Image.fromarray(c["image"])
            t0 = time.perf_counter()
            try:
                pred, refused = fn(im), False
            except Zero123Error:
                pred, refused = np.zeros_like(c["mask"]), True
            times.append(time.perf_counter() - t0)
            per_case.append({"id": c["id"], "kind": c["kind"], "refused": refused,
                             "iou": round(iou(pred, c["mask"]), 4), "boundary_f": round(boundary_f(pred, c["mask"]), 4)})
            if save_masks is not None:
                save_masks.mkdir(parents=True, exist_ok=True)
                vis = np.concatenate([c["image"], np.repeat((pred * 255).astype(np.uint8)[..., None], 3, 2)], 1)
                Image.fromarray(vis).resize((1024, 384)).save(save_masks / f"{c['id']}_{m.replace(':', '_')[:40]}.png")
        summary = {}
        for kind in ("all", "clutter", "graded"):
            sel = [r for r in per_case if kind == "all" or r["kind"] == kind]
            summary[kind] = {"n": len(sel), "iou": round(statistics.fmean(r["iou"] for r in sel), 4),
                             "boundary_f": round(statistics.fmean(r["boundary_f"] for r in sel), 4),
                             "refused": round(sum(r["refused"] for r in sel) / len(sel), 4)}
        rows[m] = {"summary": summary, "median_s_per_photo": round(statistics.median(times), 4), "cases": per_case}
        s = summary["all"]
        print(f"{m:10s} IoU {s['iou']:.3f}  boundary F {s['boundary_f']:.3f}  refused {s['refused']:.0%}  "
              f"median {statistics.median(times) * 1000:.0f} ms", flush=True)
    return rows


_MEMORY_CHILD = r"""
import sys, numpy as np
from PIL import Image
sys.path.insert(0, {bench!r})
import bench_segmentation as b


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0  # kB -> MB
    raise SystemExit(key + " not in /proc/self/status")


im = b.test_photo({size!r})
fn = b.method_fn({method!r})
try:
    fn(im.resize((64, 48)))  # import and initialise lazily loaded libraries before the baseline
except Exception:
    pass
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set size (VmHWM) to the current one
before = status("VmRSS:")
try:
    fn(im)
except Exception:
    pass
print(status("VmHWM:") - before)
"""


def added_memory_mb(method: str, size=PHOTO_SIZE) -> float:
    """Peak resident memory added by one call on a ``size`` (W, H) photo, in a fresh process (MB; Linux)."""
    code = _MEMORY_CHILD.format(bench=str(Path(__file__).resolve().parent), method=method, size=tuple(size))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--quick", action="store_true", help="4 objects x 1 view (smoke test)")
    ap.add_argument("--onnx", action="append", default=[], metavar="FILE", help="also an ONNX matting model")
    ap.add_argument("--save-masks", type=Path, default=None, metavar="DIR", help="write photo|mask PNGs here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    cases = make_cases(OBJECTS[:4], views=1) if args.quick else make_cases()
    print(f"{len(cases)} photos ({PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}) in {time.perf_counter() - t0:.1f} s", flush=True)
    methods = ["plain", "prior", "builtin"] + [f"onnx:{p}" for p in args.onnx]
    rows = evaluate(cases, methods, args.save_masks)
    for m in methods:
        rows[m]["added_peak_rss_mb"] = added_memory_mb(m)
        print(f"{m:10s} added peak memory {rows[m]['added_peak_rss_mb']:.1f} MB", flush=True)
    large = {}
    for side in (4000, 8000):  # a large photo through the whole preparation: downscaled before segmentation
        size = (side, side * 3 // 4)
        im = test_photo(size)
        fn = method_fn("prepare")
        t0 = time.perf_counter()
        fn(im)
        large[f"{size[0]}x{size[1]}"] = {"prepare_s": round(time.perf_counter() - t0, 3),
                                         "added_peak_rss_mb": added_memory_mb("prepare", size)}
        print(f"prepare_input_image on {size[0]}x{size[1]}: {large[f'{size[0]}x{size[1]}']}", flush=True)
    import cv2

    result = {"large_photos": large, "photo_size": list(PHOTO_SIZE), "num_photos": len(cases), "objects": OBJECTS[:4] if args.quick else
              OBJECTS, "clutter_backgrounds": CLUTTER, "python": platform.python_version(),
              "opencv": cv2.__version__, "cpu_threads": 2, "onnx_models": args.onnx or "none available offline",
              "methods": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
