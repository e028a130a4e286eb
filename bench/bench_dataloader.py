"""Data loading at scale: the training data loader's pairs/s from a folder of PNG renders, against the GPU.

What is timed is the trainer's own input pipeline (``zero123.training``: ``ViewPairDataset`` + ``DrawSampler`` +
``PairCollate`` in a ``torch.utils.data.DataLoader``, as ``Trainer._loader`` builds it): PNG decode, composite on
white, resize, camera matrices and embedding, per-draw noise; batches of ``--batch-size`` pairs with ``W`` worker
processes. Two modes:

* ``live``: both views of a pair are read (2 PNGs a pair), as a run without the latent cache;
* ``cached``: ``data.cache_latents`` (the target view's latent comes from the cache; only the input view's PNG is
  read, for the image encoder): 1 PNG a pair.

The files are in the page cache after the first pass (the benchmark reads the same objects again), so this is
the CPU side (decode and transforms); the storage's read rate is a separate limit (a 256 px view is ~60-100 KB).

Also (``--render N``, without ``--data``): the N objects are first rendered with ``zero123 render-dataset``'s
renderer on ``--render-workers`` processes, which gives the renderer's objects/s per core; and ``--encode MODEL``
times the VAE encode of 256 px views on the device (``tiny`` or ``full``, random weights, bf16 on CUDA), the rate
at which a latent cache is built. The GPU's training rate to compare with is read from
``bench/results/train_h200_1gpu.json`` (``bench/bench_train.py``; full-size model, batch 24).

    python bench/bench_dataloader.py --render 96 --workers 0 1 2 4 8 16 --encode full --out dataloader.json
    python bench/bench_dataloader.py --render 6 --views 4 --image-size 64 --workers 0 1 --batches 4 --encode tiny \\
        --out /tmp/dl.json                                                               # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from zero123.data import layout  # noqa: E402
from zero123.data.objects import procedural_sources  # noqa: E402
from zero123.data.render import RENDER_STATS_NAME, DatasetRenderSettings, render_dataset  # noqa: E402
from zero123.training.dataset import DrawSampler, DrawStream, ViewPairDataset  # noqa: E402
from zero123.training.trainer import PairCollate  # noqa: E402

GPU_RESULTS = REPO / "bench" / "results" / "train_h200_1gpu.json"


def gpu_rates() -> dict:
    """{model: samples/s} of the 1-GPU training step (data loading excluded), from bench_train.py's JSON."""
    if not GPU_RESULTS.is_file():
        return {}
    rows = json.loads(GPU_RESULTS.read_text()).get("rows", [])
    return {r["model"]: {"samples_per_s": r["samples_per_s"], "batch": r["batch_per_process"]}
            for r in rows if "samples_per_s" in r}


def loader_rate(root: Path, mode: str, workers: int, batch: int, image_size: int, batches: int, warmup: int) -> dict:
    """Pairs/s of the training loader (``mode`` live or cached) with ``workers`` processes."""
    ds = ViewPairDataset(root, "train", image_size=image_size, variant="stable_zero123", seed=0,
                         with_target=(mode == "live"))
    sampler = DrawSampler(DrawStream(len(ds), ds.seed), batch, num_micro_steps=warmup + batches)
    collate = PairCollate(0, (4, image_size // 8, image_size // 8))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, collate_fn=collate,
                                         num_workers=workers, persistent_workers=False,
                                         prefetch_factor=4 if workers else None)
    t0 = t_start = time.perf_counter()
    n = 0
    for i, b in enumerate(loader):
        if i < warmup:  # worker start-up and the first batches left out
            t_start = time.perf_counter()
            continue
        n += int(b["draw"].shape[0])
    elapsed = time.perf_counter() - t_start
    pairs_s = n / max(elapsed, 1e-9)
    per_pair = 2 if mode == "live" else 1
    return {"mode": mode, "workers": workers, "batch": batch, "pairs": n, "elapsed_s": round(elapsed, 3),
            "pairs_per_s": round(pairs_s, 1), "images_per_s": round(pairs_s * per_pair, 1),
            "startup_s": round(t_start - t0, 2)}


@torch.no_grad()
def encode_rate(model: str, image_size: int, batch: int, reps: int) -> dict:
    """VAE encode images/s (random weights of ``model``'s sizes): what building a latent cache costs per view."""
    from diffusers import AutoencoderKL

    from zero123.models.configs import full_size_config, tiny_config

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = (full_size_config() if model == "full" else tiny_config()).vae
    vae = AutoencoderKL(**cfg).to(dev, dtype).eval()
    x = torch.rand(batch, 3, image_size, image_size, device=dev, dtype=dtype) * 2 - 1
    times = []
    for i in range(reps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        d = vae.encode(x).latent_dist
        d.mean.float().sum().item()
        if i:
            times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return {"model": model, "device": str(dev), "dtype": str(dtype), "batch": batch, "image_size": image_size,
            "batch_s": round(med, 4), "images_per_s": round(batch / med, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="an existing render folder (else --render N objects)")
    ap.add_argument("--render", type=int, default=96, metavar="N", help="procedural objects to render (no --data)")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--render-workers", type=int, default=None, help="renderer processes (default all cores)")
    ap.add_argument("--image-size", type=int, default=256, help="render and model image size (full model: 256)")
    ap.add_argument("--batch-size", type=int, default=24, help="pairs per batch (full model on one H200: 24)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    ap.add_argument("--modes", nargs="+", default=["live", "cached"], choices=["live", "cached"])
    ap.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    ap.add_argument("--warmup-batches", type=int, default=4)
    ap.add_argument("--encode", default=None, choices=["tiny", "full"], help="also time the VAE encode")
    ap.add_argument("--encode-batch", type=int, default=64)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as a loader worker; the main process only collates

    result = {"env": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                      "machine": platform.machine(),
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "args": vars(args)}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "renders"
        if not args.data:
            settings = DatasetRenderSettings(image_size=args.image_size, views_per_object=args.views, seed=0,
                                             test_fraction=0.0)
            render_dataset(procedural_sources(args.render, seed=0), root, settings, workers=args.render_workers,
                           progress=False)
            st = json.loads((root / RENDER_STATS_NAME).read_text())
            st["objects_per_s_per_worker"] = round(st["objects_per_s"] / st["workers"], 4)
            result["render"] = st
            print(f"render: {st['objects']} objects x {args.views} views at {args.image_size} px in "
                  f"{st['elapsed_s']:.1f} s on {st['workers']} workers: {st['objects_per_s']:.2f} objects/s "
                  f"({st['objects_per_s_per_worker']:.3f} per worker)", flush=True)
        m = layout.read_manifest(root)
        png = sum(layout.image_path(root, o.id, 0).stat().st_size for o in m.objects) / max(len(m.objects), 1)
        result["dataset"] = {"objects": len(m.objects), "image_size": m.image_size, "mean_png_bytes": round(png)}
        rows = []
        for mode in args.modes:
            for w in args.workers:
                r = loader_rate(root, mode, w, args.batch_size, args.image_size, args.batches, args.warmup_batches)
                rows.append(r)
                print(f"loader {mode:6s} workers {w:3d}: {r['pairs_per_s']:8.1f} pairs/s "
                      f"({r['images_per_s']:.1f} PNG/s)", flush=True)
        result["loader"] = rows
    if args.encode:
        e = encode_rate(args.encode, args.image_size, args.encode_batch, reps=5)
        result["encode"] = e
        print(f"VAE encode ({e['model']}, {e['device']}, {e['dtype']}): {e['images_per_s']:.1f} images/s", flush=True)
    gpu = gpu_rates()
    result["gpu_training"] = gpu
    if "full" in gpu:
        need = gpu["full"]["samples_per_s"]
        print(f"GPU step, full model, batch {gpu['full']['batch']} ({GPU_RESULTS.name}): {need:.1f} samples/s")
        for r in rows:
            r["vs_full_model_gpu"] = round(r["pairs_per_s"] / need, 2)
        print("loader / GPU rate: " + ", ".join(f"{r['mode']} w{r['workers']} {r['vs_full_model_gpu']:.2f}x"
                                              for r in rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
