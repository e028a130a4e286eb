"""Input-elevation estimate (``zero123.elevation``): error in degrees on renders of known elevation, time, memory.

Held-out set: procedural objects that no bundled-model training render used (``procedural_object(seed)`` for seeds
from ``--first-seed`` = 500000; the training renders used seeds 0..1999 and 1000003..1006002), normalised to the
unit cube and rendered by the project's rasteriser at the model's size (128 px) from a random azimuth, distance
1.8, fov 49.1 (the training renders' lens), at each elevation of ``--elevations``, on a transparent background.

Rows:
* ``constant 5``: threestudio's default guess; ``constant mean``: the held-out set's mean elevation (an oracle
  constant, the best any constant can do in mean absolute error is the median);
* ``parallax, exact renders``: the estimator's scoring fed with the true views at +-da (how well the geometry
  works when the views are right);
* ``parallax, model views``: ``estimate_input_elevation`` itself (the model samples the views), per ``--steps``.

Time: wall time per estimate (median), with the model already loaded. Memory: peak RSS growth during the
estimates on CPU (``resource``), peak CUDA memory above the loaded model on GPU.

    python bench/bench_elevation.py --objects 2 --elevations -10 20 50 --out bench/results/elevation_bundled_cpu.json
    python bench/bench_elevation.py --skip-model --objects 7 --out bench/results/elevation_exact_cpu.json
    python bench/bench_elevation.py --random full --device cuda --dtype fp16 --time-only --objects 3   # H200 time
    python bench/bench_elevation.py --random tiny --time-only --objects 1 --elevations 5                # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zero123.camera import camera_to_world  # noqa: E402
from zero123.elevation import (DEFAULT_DELTA_AZIMUTH, DEFAULT_STEPS, estimate_elevation_from_views,  # noqa: E402
                               estimate_input_elevation)


def render_case(seed: int, elevation: float, delta_azimuth: float, size: int):
    """(input RGBA uint8 [S,S,4], exact views at +-da RGB uint8 [2,S,S,3]) of procedural object ``seed``."""
    from zero123.data.objects import procedural_object
    from zero123.data.render import normalize_to_unit_cube
    from zero123.rendering.mesh_rasterizer import render_mesh

    pm = normalize_to_unit_cube(procedural_object(seed))
    rng = np.random.default_rng(seed)
    az0 = float(rng.uniform(-180, 180))
    azs = torch.tensor([az0, az0 + delta_azimuth, az0 - delta_azimuth], dtype=torch.float64)
    c2w = camera_to_world(torch.full((3,), float(elevation)), azs, torch.full((3,), 1.8)).float()
    out = render_mesh(pm, c2w, 49.1, size, light_dir=np.array([0.4, 0.3, 0.87]), ambient=0.4, samples=2)
    rgba = out["rgba"].clamp(0, 1).numpy()
    rgb_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    return (rgba[0] * 255 + 0.5).astype(np.uint8), (rgb_white[1:] * 255 + 0.5).astype(np.uint8)


def load_pipe(args):
    from zero123.pipelines.zero123_pipeline import Zero123Pipeline

    if args.random:  # random weights of the released sizes (speed and memory do not depend on the values)
        from zero123.models.configs import full_size_config, tiny_config

        cfg = (full_size_config if args.random == "full" else tiny_config)("stable_zero123")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype, torch.float32)
        with torch.device(args.device):
            model = cfg.build(seed=0, device=args.device, dtype=torch.float32).eval().requires_grad_(False)
        return Zero123Pipeline(model.to(dtype))
    if args.checkpoint is None or Path(args.checkpoint).is_dir():
        return Zero123Pipeline.from_pretrained(args.checkpoint, dtype=args.dtype, device=args.device)
    return Zero123Pipeline.from_single_file(args.checkpoint, dtype=args.dtype, device=args.device)


def summarise(errors, methods=None):
    e = np.abs(np.asarray(errors, dtype=np.float64))
    row = {"mae_deg": round(float(e.mean()), 2), "median_abs_deg": round(float(np.median(e)), 2),
           "within_10_deg": round(float((e <= 10).mean()), 3), "n": int(e.size)}
    if methods is not None:
        row["prior_fallbacks"] = sum(m == "prior" for m in methods)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="model folder / .ckpt (default: the bundled model)")
    ap.add_argument("--random", choices=["full", "tiny"], default=None,
                    help="random-weight Stable Zero123 of the released (full) or test (tiny) sizes, for timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--objects", type=int, default=12)
    ap.add_argument("--first-seed", type=int, default=500000)
    ap.add_argument("--elevations", type=float, nargs="+", default=[-10.0, 5.0, 20.0, 35.0, 50.0])
    ap.add_argument("--delta-azimuth", type=float, default=DEFAULT_DELTA_AZIMUTH)
    ap.add_argument("--steps", type=int, nargs="+", default=[DEFAULT_STEPS])
    ap.add_argument("--time-only", action="store_true", help="skip the error table (full-size random weights)")
    ap.add_argument("--skip-model", action="store_true", help="only the constant and exact-render rows")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = None if args.skip_model else load_pipe(args)
    size = 128 if pipe is None else pipe.model.image_size
    device = torch.device(args.device)
    cases = [(args.first_seed + i, e) for i in range(args.objects) for e in args.elevations]
    truth = [e for _, e in cases]
    rows, per_case = {}, {"truth": truth, "seeds": [s for s, _ in cases]}
    if not args.time_only:
        rows["constant 5"] = summarise([5.0 - t for t in truth])
        mean = float(np.mean(truth))
        rows[f"constant mean ({mean:.1f})"] = summarise([mean - t for t in truth])
    rendered = [render_case(s, e, args.delta_azimuth, size) for s, e in cases]
    if not args.time_only:
        exact = []
        for (rgba, views) in rendered:
            rgb = (rgba[..., :3] * (rgba[..., 3:] / 255.0) + 255 * (1 - rgba[..., 3:] / 255.0)).astype(np.uint8)
            est = estimate_elevation_from_views(rgb, rgba[..., 3] > 127, list(views),
                                                [args.delta_azimuth, -args.delta_azimuth])
            exact.append(est)
        rows["parallax, exact renders"] = summarise([a.degrees - t for a, t in zip(exact, truth)],
                                                    [a.method for a in exact])
        per_case["parallax, exact renders"] = [[a.degrees, a.method, round(a.turn, 3)] for a in exact]
    timing = {}
    for steps in ([] if pipe is None else args.steps):
        from PIL import Image

        estimates, times = [], []
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        for i, (rgba, _) in enumerate(rendered):
            image = Image.fromarray(rgba, "RGBA")
            t0 = time.perf_counter()
            est = estimate_input_elevation(pipe, image, num_inference_steps=steps, delta_azimuth=args.delta_azimuth)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            estimates.append(est)
            print(f"  steps {steps} case {i}: true {truth[i]:g} est {est.degrees:g} {est.method} turn "
                  f"{est.turn:.3f} ({times[-1]:.2f} s)", flush=True)
        name = f"parallax, model views ({steps} steps)"
        mem = {"cpu_peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1)}
        if device.type == "cuda":
            mem["cuda_peak_above_model_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        timing[name] = {"median_s": round(statistics.median(times), 3), "first_s": round(times[0], 3),
                        "max_s": round(max(times), 3), **mem}
        if not args.time_only:
            rows[name] = summarise([a.degrees - t for a, t in zip(estimates, truth)], [a.method for a in estimates])
        per_case[name] = [[a.degrees, a.method, round(a.turn, 3)] for a in estimates]
    result = {"rows": rows, "timing": timing, "per_case": per_case,
              "settings": {"checkpoint": f"random {args.random}" if args.random else (args.checkpoint or "bundled"),
                           "device": args.device, "dtype": args.dtype,
                           "objects": args.objects, "first_seed": args.first_seed, "elevations": args.elevations,
                           "delta_azimuth": args.delta_azimuth, "image_size": size,
                           "threads": torch.get_num_threads()},
              "platform": {"python": platform.python_version(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}}
    print("| estimator | MAE (deg) | median abs (deg) | within 10 deg | n | fell back to 5 deg |")
    print("|---|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['mae_deg']} | {r['median_abs_deg']} | {r['within_10_deg']} | {r['n']} | "
              f"{r.get('prior_fallbacks', '-')} |")
    for k, t in timing.items():
        print(f"{k}: {json.dumps(t)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
