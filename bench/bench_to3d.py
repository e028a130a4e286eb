"""Benchmark of image-to-3D (``zero123.pipelines.image_to_3d``): naive vs fast path, side by side.

* **naive**: the diffusion model in float32 as built (diffusers' default attention processors) and the field's
  hash-grid encoding in plain PyTorch (``encoding_backend="torch"``).
* **fast**: float16 weights, channels_last, the single-token cross-attention shortcut
  (``zero123.models.optimizations``), and the hash grid's Triton kernels (``encoding_backend="auto"``, what
  ``zero123 to3d`` uses on a GPU); optionally the guided UNet pass replayed from a CUDA graph (``--graph``).

Renderer, MLPs and losses are the same code in both (float32). Reported:

1. time of one full training step (random views + SDS + reference view + backward + Adam) at each resolution
   stage of the recipe (64/128/256 px, batch 12/8/4; reference 128/256/512 px), and of the SDS part alone
   (VAE encode with gradient + guided UNet + backward into the renders), median of ``--iters`` after ``--warmup``;
2. peak GPU memory of each path;
3. wall time of the whole ``default`` recipe (600 steps + mesh/texture/video export) and of the ``fast`` preset,
   with the fast path (``--skip-full`` to omit); for the naive path the recipe time is estimated from the
   per-stage step times.

Full-size random weights (``full_size_config('stable_zero123')``): timings are those of the real networks.
``--tiny`` runs everything with the tiny model / tiny preset on CPU in seconds (smoke test).

    python bench/bench_to3d.py --out bench_to3d.json
    python bench/bench_to3d.py --tiny --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_image(size: int = 256) -> np.ndarray:
    """An RGBA test object: a two-colour ellipsoid-like blob with a stripe, transparent background."""
    yy, xx = np.mgrid[:size, :size] / size
    cx, cy = 0.5, 0.55
    body = ((xx - cx) / 0.28) ** 2 + ((yy - cy) / 0.33) ** 2 < 1
    head = ((xx - 0.5) / 0.15) ** 2 + ((yy - 0.22) / 0.13) ** 2 < 1
    mask = body | head
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = np.where(head, 230, 60)
    rgba[..., 1] = np.where(head, 180, 120 + (60 * (np.sin(xx * 30) > 0)).astype(np.uint8))
    rgba[..., 2] = np.where(head, 40, 200)
    rgba[..., 3] = mask * 255
    return rgba


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", flush=True)


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, warmup: int, iters: int) -> list:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return times


def build_model(args, device, fast: bool, unet_channels_last: bool = True, vae_channels_last: bool = True):
    from zero123.models.configs import full_size_config, tiny_config

    cfg = tiny_config("stable_zero123") if args.tiny else full_size_config("stable_zero123")
    t = time.perf_counter()
    with torch.device(device):  # initialise the random weights on the GPU directly (much faster than on CPU)
        model = cfg.build(seed=0, device=device, dtype=torch.float32).eval().requires_grad_(False)
    if fast:
        if device.type == "cuda":
            model = model.to(torch.float16)
        from zero123.models.optimizations import optimize_for_inference

        optimize_for_inference(model, channels_last=False)
        if device.type == "cuda" and unet_channels_last:
            model.unet.to(memory_format=torch.channels_last)
        if device.type == "cuda" and vae_channels_last:
            model.vae.to(memory_format=torch.channels_last)
    log(f"built the {'fast' if fast else 'naive'} model in {time.perf_counter() - t:.1f} s")
    return model


def stage_steps(cfg) -> list:
    """A training step inside each resolution stage (the step just after each milestone)."""
    out = [0]
    for m in cfg.cameras.milestones:
        out.append(int(np.ceil(m * cfg.steps / cfg.schedule_steps)))
    return out


def make_trainer(model, image, cfg, seed: int = 0):
    """An ``ImageTo3DTrainer`` of ``cfg`` on ``model``, with either trainer API: the parts built from the config
    keys (``zero123.representations`` present, after issue 17) or the one before it (``ImageTo3DTrainer(model,
    reference, cfg)``, commit 016885c), so that the same benchmark times both."""
    from zero123.pipelines.image_to_3d import ImageTo3DTrainer, prepare_reference

    try:
        from zero123.guidance import build_guidance
        from zero123.representations import build_representation
    except ImportError:  # the trainer before the Representation/Guidance interfaces
        ref = prepare_reference(image, cfg.reference_image_size, model.image_size)
        return ImageTo3DTrainer(model, ref, cfg, seed=seed)
    ref = prepare_reference(image, cfg.reference.image_size, model.image_size)
    rep = build_representation(cfg, model.device, seed=seed)
    return ImageTo3DTrainer(rep, build_guidance(cfg, model, ref), ref, cfg, seed=seed)


def guide(guidance, rgb, elevation, azimuth, radius, schedule_step, generator):
    """One guidance call with either API: ``Cameras`` (after issue 17) or elevation/azimuth/radius (before)."""
    if hasattr(guidance, "loss_name"):
        from zero123.rendering.cameras import orbit_cameras

        return guidance(rgb, orbit_cameras(elevation, azimuth, radius, 20.0), schedule_step, generator=generator)
    return guidance(rgb, elevation, azimuth, radius, schedule_step, generator=generator)


def primed_trainer(args, device, image, fast: bool, graph: bool = False):
    """An ``ImageTo3DTrainer`` of the default recipe (tiny with ``--tiny``) on a new naive/fast model, after
    ``--prime-steps`` steps that shape the field a little, so that sample counts resemble a real run."""
    from zero123.pipelines.image_to_3d_config import preset_config

    model = build_model(args, device, fast)
    cfg = preset_config("tiny" if args.tiny else "default")
    cfg.sds.cuda_graph = graph
    cfg.field.encoding_backend = "auto" if fast else "torch"
    trainer = make_trainer(model, image, cfg, seed=0)
    for _ in range(args.prime_steps):
        trainer.train_step()
    return trainer


def time_stage_step(trainer, state: dict, step: int, timer, warmup: int, iters: int) -> list:
    """Seconds of training step ``step`` (``warmup`` untimed, then ``iters`` timed), ``state`` restored first and
    every step taken from the same step number."""
    trainer.load_state_dict(copy.deepcopy(state))

    def one_step():
        trainer.step = step
        trainer.train_step()

    return timer(one_step, warmup, iters)


def bench_path(name, args, device, image, fast: bool, graph: bool = False) -> dict:
    timer = Timer(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = primed_trainer(args, device, image, fast, graph)
    cfg = trainer.cfg
    log(f"{name}: {args.prime_steps} priming steps done")
    base_state = copy.deepcopy(trainer.state_dict())
    res = {"path": name, "stages": []}
    for stage, step in enumerate(stage_steps(cfg)):
        step_times = time_stage_step(trainer, base_state, step, timer, args.warmup, args.iters)
        # SDS alone at this stage's batch/resolution
        cc = cfg.cameras
        B, r = cc.batch_sizes[stage], cc.resolutions[stage]
        g = torch.Generator(device=device).manual_seed(0)
        rgb = torch.rand(B, r, r, 3, device=device, requires_grad=True)
        elev = torch.full((B,), 20.0)
        azim = torch.linspace(-180, 180, B + 1)[:-1]
        rad = torch.full((B,), cc.distance)
        sched = cfg.schedule_step(step)

        def sds_step():
            out = guide(trainer.guidance, rgb, elev, azim, rad, sched, g)
            out.loss.backward()
            rgb.grad = None

        sds_times = timer(sds_step, args.warmup, args.iters)
        res["stages"].append({"stage": stage, "step": step, "batch": B, "resolution": r,
                              "reference_resolution": cc.reference_resolutions[stage],
                              "train_step_s": statistics.median(step_times),
                              "sds_s": statistics.median(sds_times),
                              "samples": trainer.last_losses.get("samples")})
        print(f"  {name}: stage {stage} ({B}x{r} px): step {1000 * res['stages'][-1]['train_step_s']:.1f} ms, "
              f"SDS {1000 * res['stages'][-1]['sds_s']:.1f} ms", flush=True)
    # estimated recipe time = sum over stages of (steps in stage) x (step time)
    bounds = stage_steps(cfg) + [cfg.steps]
    res["estimated_train_s"] = sum((bounds[i + 1] - bounds[i]) * s["train_step_s"]
                                   for i, s in enumerate(res["stages"]))
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    trainer.model = trainer.guidance = None  # free the model before the next path is built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def sds_variants(args, device, image) -> list:
    """SDS alone (VAE encode with gradient + guided UNet + backward) per stage, fp16 with and without
    channels_last on the UNet / VAE: which memory format the fast path should use."""
    from zero123.pipelines.image_to_3d_config import preset_config

    timer, rows = Timer(device), []
    cfg = preset_config("tiny" if args.tiny else "default")
    cc = cfg.cameras
    for unet_cl, vae_cl in ((True, True), (False, False), (True, False)):
        model = build_model(args, device, True, unet_cl, vae_cl)
        guidance = make_trainer(model, image, cfg).guidance
        fmt = {True: "channels_last", False: "contiguous"}
        name = f"fp16, UNet {fmt[unet_cl]}, VAE {fmt[vae_cl]}"
        for stage, (B, r) in enumerate(zip(cc.batch_sizes, cc.resolutions)):
            g = torch.Generator(device=device).manual_seed(0)
            rgb = torch.rand(B, r, r, 3, device=device, requires_grad=True)
            elev, azim, rad = torch.full((B,), 20.0), torch.linspace(-180, 180, B + 1)[:-1], torch.full((B,), 3.8)

            def step():
                guide(guidance, rgb, elev, azim, rad, 100.0, g).loss.backward()
                rgb.grad = None

            t = statistics.median(timer(step, args.warmup, args.iters))
            rows.append({"variant": name, "stage": stage, "batch": B, "resolution": r, "sds_s": t})
            log(f"SDS {name}: stage {stage} ({B}x{r} px): {1000 * t:.1f} ms")
        del model, guidance
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def profile_stages(args, device, image) -> list:
    """torch.profiler tables of one fast-path training step per resolution stage (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = primed_trainer(args, device, image, fast=True)
    cfg = trainer.cfg
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    tables = []
    for stage, step in enumerate(stage_steps(cfg)):
        trainer.step = step
        trainer.train_step()  # warm-up at this resolution
        trainer.step = step
        with profile(activities=acts) as prof:
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        tables.append({"stage": stage, "step": step, "samples": trainer.last_losses.get("samples"), "table": table})
        log(f"profile of one fast-path step at stage {stage} ({trainer.last_losses.get('samples')} samples):")
        print(table, flush=True)
    trainer.model = trainer.guidance = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return tables


def full_run(name, args, device, image, preset: str, graph: bool) -> dict:
    from zero123.pipelines.image_to_3d import to3d
    from zero123.pipelines.image_to_3d_config import preset_config

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(args, device, fast=True)
    cfg = preset_config("tiny" if args.tiny else preset)
    cfg.sds.cuda_graph = graph
    with tempfile.TemporaryDirectory() as d:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = to3d(image, out_dir=d, model=model, config=cfg, progress=not args.no_progress)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    out = {"run": name, "preset": cfg.preset, "steps": cfg.steps, "wall_s": wall,
           "timings": {k: round(v, 3) for k, v in result.timings.items()}, "faces": result.num_faces}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    del model
    gc.collect()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--tiny", action="store_true", help="tiny model + tiny preset (CPU smoke test)")
    p.add_argument("--device", default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--prime-steps", type=int, default=None, help="training steps before timing")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-full", action="store_true", help="skip the full default/fast preset runs")
    p.add_argument("--graph", action="store_true", help="also time the fast path with the CUDA-graph UNet")
    p.add_argument("--full-graph", action="store_true", help="use the CUDA-graph UNet in the full runs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="first print torch.profiler tables of one fast-path step per stage")
    p.add_argument("--sds-variants", action="store_true",
                   help="time SDS alone in fp16 with/without channels_last (UNet, VAE) first")
    p.add_argument("--dump-stacks", type=float, default=0,
                   help="print every thread's Python stack every this many seconds (find where a slow run is)")
    args = p.parse_args(argv)
    if args.dump_stacks > 0:
        import faulthandler

        faulthandler.dump_traceback_later(args.dump_stacks, repeat=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.iters = args.iters if args.iters is not None else (2 if args.tiny else 10)
    args.prime_steps = args.prime_steps if args.prime_steps is not None else (1 if args.tiny else 30)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from PIL import Image

    image = Image.fromarray(synthetic_image(64 if args.tiny else 256))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "tiny": args.tiny}
    from _no_ffmpeg import skip_mp4_if_no_ffmpeg

    info["mp4"] = skip_mp4_if_no_ffmpeg() or "H.264 via imageio-ffmpeg"
    paths, runs, profiles, sds_rows = [], [], [], []

    def save():  # after every measurement, so a run cut off by a time limit still leaves what it measured
        if args.out:
            from zero123.export.writers import atomic_write_bytes

            atomic_write_bytes(args.out, (json.dumps({"info": info, "paths": paths, "runs": runs, "profiles": profiles,
                                                      "sds_variants": sds_rows}, indent=2)
                                          + "\n").encode())

    if args.sds_variants:
        sds_rows.extend(sds_variants(args, device, image))
        save()
    if args.profile:
        profiles.extend(profile_stages(args, device, image))
        save()
    if not args.skip_naive:
        paths.append(bench_path("naive (fp32)", args, device, image, fast=False))
        save()
    paths.append(bench_path("fast (fp16, channels_last, 1-token attn)", args, device, image, fast=True))
    save()
    if args.graph and device.type == "cuda":
        try:
            paths.append(bench_path("fast + CUDA-graph UNet", args, device, image, fast=True, graph=True))
        except Exception as exc:  # report, keep going
            paths.append({"path": "fast + CUDA-graph UNet", "error": repr(exc)})
        save()
    if not args.skip_full:
        runs.append(full_run("default recipe, fast path", args, device, image, "default", args.full_graph))
        save()
        if not args.tiny:
            runs.append(full_run("fast preset, fast path", args, device, image, "fast", args.full_graph))
            save()

    # table
    print(f"\nimage-to-3D benchmark on {info['device']} (torch {info['torch']})")
    print(f"{'path':44s} {'stage':>5s} {'views':>9s} {'ref':>5s} {'step ms':>9s} {'SDS ms':>8s} {'samples':>9s}")
    for r in paths:
        if "error" in r:
            print(f"{r['path']:44s} error: {r['error']}")
            continue
        for s in r["stages"]:
            print(f"{r['path']:44s} {s['stage']:5d} {s['batch']:3d}x{s['resolution']:<5d} "
                  f"{s['reference_resolution']:5d} {1000 * s['train_step_s']:9.1f} {1000 * s['sds_s']:8.1f} "
                  f"{s['samples'] if s['samples'] is not None else 0:9d}")
        mem = f", peak {r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else ""
        print(f"{'':44s} estimated recipe training time {r['estimated_train_s']:.1f} s{mem}")
    for r in runs:
        mem = f", peak {r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else ""
        print(f"full run: {r['run']}: {r['steps']} steps, {r['wall_s']:.1f} s total{mem}; {r['timings']}")
    if args.out:
        save()
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
