"""Novel-view sampling speed: naive (diffusers fp32 as-is) vs the fast paths, side by side in one run.

Full-size random-weight Zero123 networks (speed does not depend on weight values). Times one guided UNet forward
(4 views x CFG = batch 8) and a whole 4-view, 50-step (49 UNet evaluations, as zero123's DDIMSampler), 256 px
sample including the CLIP/VAE encoders and the VAE decode. CUDA events, warm-up, medians.

    python bench/bench_novel_views.py --out bench/results/novel_views.json          # on a GPU
    python bench/bench_novel_views.py --tiny --out /tmp/nv.json                      # CPU smoke test

``--sampler dpmpp --sampler-steps 15`` adds the fast variants again with that sampler (``--scheduler``); their
``mean |diff|`` is against the first variant of the same sampler (the samplers give different images).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zero123.models.configs import full_size_config, tiny_config  # noqa: E402
from zero123.models.optimizations import compile_for_inference, fuse_qkv, optimize_for_inference  # noqa: E402
from zero123.pipelines.zero123_pipeline import Zero123Pipeline  # noqa: E402


def timed(fn, warmup: int, reps: int, device) -> list[float]:
    """Milliseconds per call (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of the whole sample")
    ap.add_argument("--unet-reps", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (slow to build)")
    ap.add_argument("--skip", nargs="*", default=[], help="skip variants whose name contains one of these (the "
                    "naive reference row only when 'naive' is given)")
    ap.add_argument("--sampler", default=None, choices=["dpmpp", "unipc"], help="also time this sampler")
    ap.add_argument("--sampler-steps", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("bench/results/novel_views.json"))
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cfg = tiny_config("stable_zero123") if args.tiny else full_size_config("stable_zero123")
    torch.backends.cudnn.benchmark = True
    with torch.device(device):
        base = cfg.build(seed=0).eval().requires_grad_(False)
    size, lat = base.image_size, base.unet.config.sample_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    image = (torch.rand(1, 3, size, size, generator=gen) * 2 - 1).to(device)
    x_t = torch.randn(args.views, 4, lat, lat, generator=gen).to(device)
    elev, azim = [10.0] * args.views, [360.0 * i / args.views for i in range(args.views)]

    variants = {}
    if device.type == "cuda":
        variants["naive: fp32 as-is"] = dict(dtype=torch.float32, opt=False, graph=False)
        variants["fp16 (SDPA)"] = dict(dtype=torch.float16, opt=False, graph=False)
        variants["fp16 + channels-last + 1-token attn"] = dict(dtype=torch.float16, opt=True, graph=False)
        variants["fp16 + channels-last + 1-token attn + CUDA graph"] = dict(dtype=torch.float16, opt=True, graph=True)
        variants["bf16 + channels-last + 1-token attn + CUDA graph"] = dict(dtype=torch.bfloat16, opt=True, graph=True)
        if args.compile:
            variants["fp16 + 1-token attn + torch.compile(UNet) + CUDA graph"] = dict(
                dtype=torch.float16, opt=True, graph=True, compile="unet")
            variants["fp16 + 1-token attn + fused QKV + compile(UNet, VAE dec) + CUDA graph"] = dict(
                dtype=torch.float16, opt=True, graph=True, compile="all", fuse=True)
        variants["fp16 + channels-last + 1-token attn + fused QKV + CUDA graph (--fast: no compile)"] = dict(
            dtype=torch.float16, opt=True, graph=True, fuse=True)
    else:
        variants["naive: fp32 as-is"] = dict(dtype=torch.float32, opt=False, graph=False)
        variants["fp32 + 1-token attn"] = dict(dtype=torch.float32, opt=True, graph=False)
    if args.sampler:
        tag = f", {args.sampler} {args.sampler_steps} steps"
        extra = {}
        for name, v in variants.items():
            if v.get("opt") and (device.type != "cuda" or v["dtype"] == torch.float16):
                extra[name + tag] = dict(v, sched=args.sampler, steps=args.sampler_steps)
        variants.update(extra)

    # the naive row (the speed-up's reference) stays unless --skip names it ("naive")
    variants = {k: v for k, v in variants.items()
                if not any(s in k for s in args.skip) or (k.startswith("naive") and "naive" not in args.skip)}
    rows, ref_images = [], {}
    for name, v in variants.items():
        model = copy.deepcopy(base).to(dtype=v["dtype"])
        if v["opt"]:
            optimize_for_inference(model, channels_last=device.type == "cuda")
        build_s = 0.0
        if v.get("fuse"):
            fuse_qkv(model)
        if v.get("compile"):
            t0 = time.perf_counter()
            compile_for_inference(model, decoder=v["compile"] == "all")
            build_s = time.perf_counter() - t0
        pipe = Zero123Pipeline(model)
        if v["graph"]:
            pipe.enable_cuda_graph()

        def sample():
            return pipe(image.to(v["dtype"]), elev, azim, num_inference_steps=v.get("steps", args.steps),
                        guidance_scale=3.0, latents=x_t, output_type="pt", progress=False,
                        scheduler=v.get("sched", "ddim")).images

        try:
            t0 = time.perf_counter()
            first = sample()  # includes graph capture / compilation
            if device.type == "cuda":
                torch.cuda.synchronize()
            first_s = time.perf_counter() - t0 + build_s
            sample_ms = timed(sample, 1, args.reps, device)
            tok = torch.randn(2 * args.views, 1, 768, device=device, dtype=v["dtype"])
            xin = torch.randn(2 * args.views, 4, lat, lat, device=device, dtype=v["dtype"])
            tt = torch.full((2 * args.views,), 500, device=device)
            unet_fn = (lambda: model.predict_noise(xin, tt, tok, xin))
            unet_ms = timed(lambda: torch.no_grad()(unet_fn)(), 3, args.unet_reps, device)
            ref = ref_images.setdefault(v.get("sched", "ddim"), first.float())
            err = ((first.float() - ref).abs().mean()).item()
            sched, steps = v.get("sched", "ddim"), v.get("steps", args.steps)
            rows.append(dict(variant=name, scheduler=sched, steps=steps,
                             unet_evaluations=steps - 1 if sched == "ddim" else steps, sample_ms_median=statistics.median(sample_ms), sample_ms=sample_ms,
                             unet_forward_ms_median=statistics.median(unet_ms), first_call_s=first_s,
                             mean_abs_diff_vs_naive=err,
                             peak_mem_gib=(torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)))
        except Exception as exc:  # report and continue with the other variants
            rows.append(dict(variant=name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))
        del pipe, model
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(partial=True, rows=rows), indent=2))
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    info = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, views=args.views, steps=args.steps,
                unet_evaluations=args.steps - 1, image_size=size, params=base.num_parameters(), rows=rows,
                command=" ".join(sys.argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    naive = next((r for r in rows if r["variant"].startswith("naive") and "error" not in r), None)
    print(f"\n{info['device']}, torch {info['torch']}: {args.views} views x {args.steps} steps "
          f"({args.steps - 1} UNet evals, CFG batch {2 * args.views}), {size}px")
    print(f"| variant | {args.views}-view sample (ms, median) | speed-up | UNet fwd batch {2 * args.views} (ms) "
          "| first call (s) | mean |diff| vs naive |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error']} | | | | |")
            continue
        sp = naive["sample_ms_median"] / r["sample_ms_median"] if naive else float("nan")
        print(f"| {r['variant']} | {r['sample_ms_median']:.1f} | {sp:.2f}x | {r['unet_forward_ms_median']:.2f} "
              f"| {r['first_call_s']:.1f} | {r['mean_abs_diff_vs_naive']:.4f} |")


if __name__ == "__main__":
    main()
