"""Gaussian rasteriser (``zero123.representations.gaussians.rasterize``): forward and forward+backward time per backend.

Scene per size: ``--batch`` views of N projected Gaussians, an object-like cloud around the image centre (normal,
std = size / 6), anisotropic and rotated, sigma 0.5..2.5 px at 128 px (scaled with the size), radius 3 sigma,
opacity 0.1..0.9, RGB colours. Loss = sum(image * g) + sum(alpha * g') with fixed random g, g'; gradients of
means, conics, opacities, colours and background.

Rows: ``torch`` (dense reference, chunked + checkpointed, culled per chunk), ``torch-nocull`` (every Gaussian at
every pixel) and ``triton`` (tile kernels); ``gsplat`` only where ``import gsplat`` works (reported as missing
otherwise). Time: CUDA events around each call after ``--warmup``
calls, median of ``--iters`` (wall clock on CPU). Also per size: peak CUDA memory of the call, and the triton vs
torch max abs difference of image and gradients (relative to the largest entry), measured at full size.

    bash bench/device/gaussian_raster.sh                                          # H200 (needs $OUT)
    TRITON_INTERPRET=1 python bench/bench_gaussian_raster.py --device cpu --n 60 --res 16 32 --batch 2 \
        --warmup 0 --iters 1 --out /tmp/gs.json --table /tmp/gs.md                # CPU smoke (interpreter)
    python bench/bench_gaussian_raster.py --device cpu --backends torch torch-nocull --n 5000 --res 64 \
        --warmup 0 --iters 1                                                      # CPU: what the culling saves
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zero123.representations.gaussians.rasterize import rasterize_gaussians  # noqa: E402

GRAD_INPUTS = ("means2d", "conics", "opacities", "colors", "background")
# rows: rasterize_gaussians keyword arguments ("torch" is the baseline of the speed-up and agreement columns)
BACKENDS = {"torch": dict(backend="torch"), "torch-nocull": dict(backend="torch", cull=False),
            "triton": dict(backend="triton")}


def make_scene(batch: int, n: int, res: int, device: str, seed: int = 0) -> dict:
    """Projected Gaussians of an object-like cloud (see the module docstring), float32 on ``device``."""
    g = torch.Generator().manual_seed(seed)
    means = res / 2 + torch.randn(batch, n, 2, generator=g) * (res / 6)
    sig = (0.5 + 2.0 * torch.rand(batch, n, 2, generator=g)) * (res / 128)
    th = torch.rand(batch, n, generator=g) * math.pi
    cos, sin = torch.cos(th), torch.sin(th)
    ia, ib = 1 / sig[..., 0] ** 2, 1 / sig[..., 1] ** 2
    conics = torch.stack([cos * cos * ia + sin * sin * ib, cos * sin * (ia - ib), sin * sin * ia + cos * cos * ib], -1)
    scene = dict(means2d=means, conics=conics, depths=1 + 3 * torch.rand(batch, n, generator=g),
                 opacities=0.1 + 0.8 * torch.rand(batch, n, generator=g), colors=torch.rand(batch, n, 3, generator=g),
                 background=torch.rand(batch, 3, generator=g), radii=torch.ceil(3 * sig.max(-1).values))
    scene = {k: v.to(device) for k, v in scene.items()}
    return dict(scene, height=res, width=res)


class Timer:
    """Milliseconds of a callable: CUDA events on a GPU, wall clock on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def run_backend(scene: dict, backend: str, grads: tuple, timer: Timer, warmup: int, iters: int) -> dict:
    """Median forward and forward+backward ms, peak CUDA memory, and the last call's outputs and gradients."""
    grad_image, grad_alpha = grads
    state = {}

    def forward():
        with torch.no_grad():
            rasterize_gaussians(**scene, **BACKENDS[backend])

    def forward_backward():
        inputs = {k: scene[k].detach().clone().requires_grad_(True) for k in GRAD_INPUTS}
        image, alpha = rasterize_gaussians(**dict(scene, **inputs), **BACKENDS[backend])
        ((image * grad_image).sum() + (alpha * grad_alpha).sum()).backward()
        state.update(image=image.detach(), alpha=alpha.detach(), **{k: inputs[k].grad for k in GRAD_INPUTS})

    for _ in range(warmup):
        forward()
        forward_backward()
    fwd = [timer(forward) for _ in range(iters)]
    if timer.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    fb = [timer(forward_backward) for _ in range(iters)]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if timer.cuda else None
    return dict(fwd_ms=statistics.median(fwd), fwd_bwd_ms=statistics.median(fb), peak_mib=peak, outputs=state)


def agreement(ref: dict, fast: dict) -> dict:
    """Max and mean abs difference per output/gradient, the max relative to the reference's largest entry, and the
    share of entries off by more than 1e-3 of it (a rounding-level change of power, alpha or T next to one of the
    3DGS thresholds moves single pixels by up to ~1/255 on the GPU, where the kernels fuse multiply-adds)."""
    out = {}
    for k, want in ref.items():
        diff = (fast[k].float() - want.float()).abs()
        scale = max(want.abs().max().item(), 1e-30)
        out[k] = dict(max_abs=diff.max().item(), mean_abs=diff.mean().item(), rel_to_max=diff.max().item() / scale,
                      frac_over_1e_3=(diff > 1e-3 * scale).float().mean().item())
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 50000])
    p.add_argument("--res", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backends", nargs="+", default=["torch", "triton", "gsplat"], choices=[*BACKENDS, "gsplat"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--triton-configs", nargs="+", default=None, metavar="GxW",
                   help="Triton launch configurations to time, BLOCK_G x num_warps (default: the module's CONFIG)")
    p.add_argument("--torch-iters", type=int, default=None, help="iterations of the (slow) dense path (--iters)")
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    p.add_argument("--table", type=Path, default=None, help="markdown table")
    args = p.parse_args(argv)

    timer = Timer(args.device)
    backends = list(args.backends)
    notes = []
    if "gsplat" in backends:
        backends.remove("gsplat")
        notes.append("gsplat: " + ("importable but not wired in (no backend='gsplat' yet)"
                                   if importlib.util.find_spec("gsplat") else "not importable here, skipped"))
    configs = [None]
    if "triton" in backends:
        from zero123.representations.gaussians import rasterize_triton

        configs = [dict(rasterize_triton.CONFIG)]
        if args.triton_configs:
            configs = [dict(BLOCK_G=int(c.split("x")[0]), num_warps=int(c.split("x")[1])) for c in args.triton_configs]
    # the Triton rows first (a time limit that cuts the slow dense rows of the largest size keeps theirs), the
    # "torch" baseline last (each row before it gets its agreement columns then)
    runs = [("triton", c) for c in configs if "triton" in backends]
    runs += [(be, None) for be in backends if be not in ("triton", "torch")] + [("torch", None)] * ("torch" in backends)
    rows = []
    for n in args.n:
        for res in args.res:
            scene = make_scene(args.batch, n, res, args.device)
            g = torch.Generator().manual_seed(1)
            grads = (torch.randn(args.batch, res, res, 3, generator=g).to(args.device),
                     torch.randn(args.batch, res, res, 1, generator=g).to(args.device))
            fast_rows = []
            for be, config in runs:
                dense = be.startswith("torch")
                iters = args.torch_iters or args.iters if dense else args.iters
                warmup = min(args.warmup, 1) if dense else args.warmup    # the dense path is slow and steady
                if config:
                    rasterize_triton.CONFIG.update(config)
                label = be if not config or len(configs) == 1 else f"{be} G{config['BLOCK_G']} w{config['num_warps']}"
                r = run_backend(scene, be, grads, timer, warmup, iters)
                row = dict(n=n, res=res, batch=args.batch, backend=label, config=config, fwd_ms=round(r["fwd_ms"], 3),
                           fwd_bwd_ms=round(r["fwd_bwd_ms"], 3),
                           peak_mib=None if r["peak_mib"] is None else round(r["peak_mib"], 1))
                rows.append(row)
                if be == "torch":
                    for fast_row, outputs in fast_rows:
                        fast_row["agreement_vs_torch"] = ag = agreement(r["outputs"], outputs)
                        fast_row["worst_rel_to_max"] = max(v["rel_to_max"] for v in ag.values())
                        fast_row["worst_frac_over_1e_3"] = max(v["frac_over_1e_3"] for v in ag.values())
                else:
                    fast_rows.append((row, r["outputs"]))
                print(json.dumps({k: v for k, v in row.items() if k != "agreement_vs_torch"}), flush=True)
                write_json(args, rows, notes)            # after every row: a time limit keeps what was measured
                if args.table:
                    args.table.write_text(markdown_table(rows, notes))
            del fast_rows, r
            if timer.cuda:
                torch.cuda.empty_cache()
    result = write_json(args, rows, notes)
    print(markdown_table(rows, notes))
    return result


def write_json(args, rows: list[dict], notes: list[str]) -> dict:
    """The results so far (environment, arguments, rows, notes), written to ``--out`` through a temporary name."""
    env = dict(torch=torch.__version__, python=platform.python_version(), device=args.device,
               gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
               triton_interpret=os.environ.get("TRITON_INTERPRET") == "1")
    result = dict(env=env, args={k: str(v) for k, v in vars(args).items()}, rows=rows, notes=notes)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
    return result


def markdown_table(rows: list[dict], notes: list[str]) -> str:
    """One line per (N, size, backend): times, speed-up over torch, peak memory, agreement with torch."""
    lines = ["| N | size | backend | fwd (ms) | fwd+bwd (ms) | fwd+bwd speed-up vs torch | peak (MiB) | "
             "max err vs torch (of largest) | entries off > 1e-3 of largest |", "|---|---|---|---|---|---|---|---|---|"]
    base = {(r["n"], r["res"]): r["fwd_bwd_ms"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        ref = base.get((r["n"], r["res"]))
        speed = f"{ref / r['fwd_bwd_ms']:.1f}x" if ref else "-"
        err = f"{r['worst_rel_to_max']:.1e}" if "worst_rel_to_max" in r else "-"
        off = f"{r['worst_frac_over_1e_3']:.1e}" if "worst_frac_over_1e_3" in r else "-"
        lines.append(f"| {r['n']} | {r['res']} | {r['backend']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
                     f"{speed} | {r['peak_mib'] if r['peak_mib'] is not None else '-'} | {err} | {off} |")
    return "\n".join(lines + [f"\n{note}" for note in notes]) + "\n"


if __name__ == "__main__":
    main()
