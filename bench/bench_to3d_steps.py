"""Image-to-3D step time per resolution stage, the same command before and after a trainer change (issue 17
item 6): median ms of one full training step (random views + guidance + reference view + backward + optimiser
step) at the first step of each stage of the presets ``default`` and ``fast``, on the fast path ``zero123 to3d``
uses on a GPU (fp16 model, Triton hash grid), full-size random weights.

Works with either trainer API (``bench_to3d.make_trainer``): ``--src DIR`` imports ``zero123`` from ``DIR``
(e.g. a copy of ``src/`` at commit 016885c) instead of this checkout, so one script times both commits::

    python bench/bench_to3d_steps.py --out new.json
    python bench/bench_to3d_steps.py --src /tmp/old/src --out old.json
    python bench/bench_to3d_steps.py --tiny --out /tmp/s.json          # CPU smoke test, seconds
    python bench/bench_to3d_steps.py --bundled --device cpu --presets cpu   # the CPU preset, the bundled model
    python bench/bench_to3d_steps.py --set field.mlp_dtype=bfloat16      # a config switch (dotted key=value)

Each stage: the state after ``--prime-steps`` steps is restored, ``--warmup`` untimed steps, then ``--iters``
timed steps (CUDA events around each step; on CPU ``perf_counter``), every one from the same state and step, so
the numbers compare code, not training progress. The JSON also holds the sample count of the last timed step
(the same at both commits when behaviour is unchanged) and the zero123 source that was timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path


def bench_preset(preset: str, args, model, image, device) -> dict:
    from bench_to3d import Timer, make_trainer, stage_steps, time_stage_step

    from zero123.pipelines.image_to_3d_config import preset_config

    cfg = preset_config("tiny" if args.tiny else preset, overrides=args.set)
    trainer = make_trainer(model, image, cfg, seed=0)
    for _ in range(args.prime_steps):
        trainer.train_step()
    base = copy.deepcopy(trainer.state_dict())
    timer = Timer(device)
    rows = []
    for stage, step in enumerate(stage_steps(cfg)):
        times = time_stage_step(trainer, base, step, timer, args.warmup, args.iters)
        cc = cfg.cameras
        rows.append({"stage": stage, "step": step, "batch": cc.batch_sizes[stage], "resolution": cc.resolutions[stage],
                     "reference_resolution": cc.reference_resolutions[stage],
                     "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
                     "samples": trainer.last_losses.get("samples")})
        print(f"{preset}: stage {stage} ({rows[-1]['batch']}x{rows[-1]['resolution']} px, ref "
              f"{rows[-1]['reference_resolution']} px): {rows[-1]['median_ms']:.1f} ms/step "
              f"(min {rows[-1]['min_ms']:.1f}, {rows[-1]['samples']} samples)", flush=True)
        if args.profile:
            rows[-1]["profile"] = profile_stage_step(trainer, base, step, device, Path(args.profile),
                                                     f"{preset}_stage{stage}")
    return {"preset": preset if not args.tiny else "tiny", "stages": rows}


def profile_stage_step(trainer, state: dict, step: int, device, folder: Path, name: str, iters: int = 3) -> dict:
    """torch.profiler over ``iters`` steps of ``step`` (after one untimed): the op table by self device time
    (``folder/<name>.txt``) and how much of the wall time the device was busy (kernel time / wall; far under 1
    means the step waits on the host: launches, syncs)."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    trainer.load_state_dict(copy.deepcopy(state))
    trainer.step = step
    trainer.train_step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            trainer.step = step
            trainer.train_step()
        sync()
        wall = time.perf_counter() - t0
    ka = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # the kernels' own rows (an op's row repeats the time of the kernels it launched: count each kernel once)
    kernels = [e for e in ka if str(getattr(e, "device_type", "")).endswith("CUDA")]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(ka.table(sort_by=key, row_limit=40))
    out = {"wall_ms_per_step": 1000 * wall / iters, "kernels": sum(e.count for e in kernels) // iters}
    if device.type == "cuda":
        out["device_busy_fraction"] = sum(e.self_device_time_total for e in kernels) / 1e6 / wall
    print(f"  profile {name}: {out}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--src", default=None, help="import zero123 from this folder (another commit's src/)")
    p.add_argument("--presets", nargs="+", default=["default", "fast"])
    p.add_argument("--tiny", action="store_true", help="tiny model + tiny preset on CPU (smoke test)")
    p.add_argument("--bundled", action="store_true",
                   help="the bundled default model (what `zero123 to3d` uses; e.g. the cpu preset on a CPU) "
                        "instead of full-size random weights")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every preset timed (repeatable), e.g. field.mlp_dtype=bfloat16")
    p.add_argument("--device", default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--prime-steps", type=int, default=3, help="training steps before timing")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also torch.profiler each stage's step: op tables under DIR, the device-busy fraction")
    args = p.parse_args(argv)
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_to3d
    import torch

    import zero123
    from bench_to3d import build_model, synthetic_image

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    source = str(Path(zero123.__file__).resolve().parent)
    print(f"zero123 from {source} on {device}", flush=True)
    if args.bundled:
        from zero123.pipelines.image_to_3d import load_guidance_model

        # this checkout's bundled weights (an --src tree extracted without them times its code on the same model)
        bundled = Path(__file__).resolve().parents[1] / "src" / "zero123" / "assets" / "default_model"
        model = load_guidance_model(bundled if bundled.is_dir() else None, device=device)
    else:
        model = build_model(args, device, fast=True)
    image = synthetic_image(256)
    results = [bench_preset(name, args, model, image, device) for name in (["tiny"] if args.tiny else args.presets)]
    doc = {"zero123_source": source, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "warmup": args.warmup, "iters": args.iters, "prime_steps": args.prime_steps, "set": args.set,
           "model": "bundled" if args.bundled else ("tiny" if args.tiny else "full-size random"), "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
