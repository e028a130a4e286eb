"""Benchmark: image-to-3D with 3D Gaussians (``--representation gaussians``, its ``default`` preset: DreamGaussian's
schedule) beside the NeRF ``fast`` preset, in one process with the same full-size random-weight Stable Zero123.

For each run (``--runs``, ``representation:preset`` pairs): the whole ``to3d`` call (training, mesh, texture,
files, turntable, preview) timed in-process (its ``result.timings`` and the wall time around it) and
``torch.cuda.max_memory_allocated`` over the call (peak memory stats reset before it; the model's weights, which
stay allocated, are reported apart as ``model_gib``). With ``--cli`` the model is also saved (diffusers folder,
fp16 on CUDA) and each run repeated as a ``zero123 to3d`` process (``bench/cli_no_ffmpeg.py``): its wall time
includes interpreter start, imports and model loading.

Full-size random weights (``full_size_config('stable_zero123')``): timings are those of the real networks, the
reconstruction itself is meaningless. ``--tiny`` runs the tiny model and the ``tiny`` presets on CPU (smoke test).

    python bench/bench_gaussians.py --cli --out gaussians_h200.json
    python bench/bench_gaussians.py --tiny --cli --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_to3d import build_model, log, synthetic_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def in_process(model, image, device, representation: str, preset: str, steps=None) -> dict:
    from zero123.pipelines.image_to_3d import to3d
    from zero123.pipelines.image_to_3d_config import preset_config

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = preset_config(preset, steps, device=device, representation=representation)
    with tempfile.TemporaryDirectory() as d:
        _sync(device)
        t = time.perf_counter()
        result = to3d(image, out_dir=d, model=model, config=cfg, input_elevation=5.0, progress=False)
        _sync(device)
        wall = time.perf_counter() - t
    out = {"representation": representation, "preset": preset, "steps": cfg.steps, "wall_s": round(wall, 3),
           "timings": {k: round(v, 3) for k, v in result.timings.items()}, "faces": result.num_faces}
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    return out


def cli_run(folder, image_path, device, representation: str, preset: str, steps=None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, str(REPO / "bench" / "cli_no_ffmpeg.py"), "to3d", str(image_path), "--checkpoint",
               str(folder), "--out", str(Path(d) / "out"), "--representation", representation, "--preset", preset,
               "--input-elevation", "5", "--device", str(device), "--no-progress"]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        summary = Path(d) / "out" / "result.json"
        timings = json.loads(summary.read_text()).get("timings", {}) if summary.is_file() else {}
    out = {"representation": representation, "preset": preset, "cli_wall_s": round(wall, 3), "rc": proc.returncode,
           "timings": {k: round(v, 3) for k, v in timings.items()}}
    if proc.returncode:
        out["stderr_tail"] = proc.stderr[-1500:]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--tiny", action="store_true", help="tiny model + tiny presets on CPU (smoke test)")
    p.add_argument("--device", default=None)
    p.add_argument("--runs", default="gaussians:default,nerf:fast",
                   help="comma-separated representation:preset pairs (default: gaussians:default,nerf:fast)")
    p.add_argument("--steps", type=int, default=None, help="override every run's steps")
    p.add_argument("--cli", action="store_true", help="also run each as a `zero123 to3d` process (CLI wall)")
    args = p.parse_args(argv)
    from _no_ffmpeg import skip_mp4_if_no_ffmpeg

    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "mp4": skip_mp4_if_no_ffmpeg() or "H.264 via imageio-ffmpeg",
            "model": "tiny_config" if args.tiny else "full_size_config('stable_zero123'), random weights"}
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    if args.tiny:
        runs = [(rep, "tiny") for rep, _ in runs]
    results = {"info": info, "in_process": [], "cli": []}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    image = synthetic_image(256)
    model = build_model(args, device, fast=True)
    if device.type == "cuda":
        info["model_gib"] = round(torch.cuda.memory_allocated() / 2 ** 30, 3)
    for rep, preset in runs:
        r = in_process(model, image, device, rep, preset, args.steps)
        log(f"in-process {rep}/{preset}: {r}")
        results["in_process"].append(r)
        save()
    if args.cli:
        from PIL import Image

        from zero123.loading import save_pretrained

        work = Path(tempfile.mkdtemp(prefix="bench_gs_"))
        Image.fromarray(image, "RGBA").save(work / "input.png")
        folder = save_pretrained(model, work / "model", half=device.type == "cuda")
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for rep, preset in runs:
            r = cli_run(folder, work / "input.png", device, rep, preset, args.steps)
            log(f"cli {rep}/{preset}: {r}")
            results["cli"].append(r)
            save()
    save()
    failed = [r for r in results["cli"] if r["rc"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
