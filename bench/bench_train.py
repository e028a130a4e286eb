"""Training throughput, memory and multi-GPU scaling of ``zero123 train``, and 1-vs-N-GPU loss curves.

Throughput mode (default): for each model (``small``: configs/small_default.yaml sizes at 128 px; ``full``: the
released Stable Zero123 sizes at 256 px, random weights) it builds the real ``Trainer`` (same objective, frozen
encoders in the mixed-precision dtype, AdamW, EMA, ``accelerate`` DDP) and times whole optimizer steps on a fixed
in-memory batch (VAE + CLIP encoding of both views, UNet forward/backward, AdamW, EMA; data loading excluded):
CUDA events, warm-up, medians. Under ``accelerate launch --num_processes N`` it times the N-process DDP step and
then, on rank 0 alone with the others waiting, the same step without DDP (= a 1-GPU run, same per-GPU batch), so

    scaling efficiency = throughput_N / (N x throughput_1)

    python bench/bench_train.py --out bench/results/train_1gpu.json                       # one GPU
    accelerate launch --multi_gpu --num_processes 4 bench/bench_train.py --out bench/results/train_4gpu.json
    python bench/bench_train.py --tiny --out /tmp/train.json                               # CPU smoke test

Loss-curve mode: a real training run (data loader included) on a synthetic box dataset (or ``--data ROOT``) with
a fixed GLOBAL batch; every step's loss goes to the JSON. Because data and noise depend only on the draw numbers,
a 1-GPU and an N-GPU run of the same global batch should give the same curve up to float rounding:

    python bench/bench_train.py --loss-curve --model small --global-batch 64 --steps 200 --out curve_1.json
    accelerate launch --multi_gpu --num_processes 4 bench/bench_train.py --loss-curve --model small \\
        --global-batch 64 --steps 200 --out curve_4.json
    python bench/bench_train.py --compare curve_1.json curve_4.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from zero123.training.config import config_from_dict, read_config_file  # noqa: E402
from zero123.training.synthetic import write_synthetic_dataset  # noqa: E402
from zero123.training.trainer import Trainer, draw_noise  # noqa: E402

DEFAULT_BATCH = {"tiny": 4, "small": 64, "full": 24}


def model_section(name: str) -> dict:
    """The ``model:`` config of a benchmark model (random weights)."""
    if name == "tiny":
        return {"preset": "tiny", "variant": "stable_zero123"}
    if name == "full":
        return {"preset": "full", "variant": "stable_zero123"}
    if name == "small":
        section = copy.deepcopy(read_config_file(REPO / "configs" / "small_default.yaml")["model"])
        section["vae_from"] = None  # a random VAE of the same sizes
        return section
    raise SystemExit(f"unknown model {name!r}: tiny, small or full")


def image_size_of(name: str) -> int:
    return {"tiny": 32, "full": 256}.get(name) or int(model_section(name).get("image_size", 256))


def make_config(args, name: str, data_root: str, out_dir: str, batch: int, grad_ckpt: bool, **extra) -> dict:
    model = model_section(name)
    model["gradient_checkpointing"] = grad_ckpt
    cfg = {"output_dir": out_dir, "batch_size": batch, "mixed_precision": args.mixed_precision,
           "log_every": 1, "checkpoint_every": 0, "export": False, "sample": {"every": 0},
           "data": {"root": data_root, "num_workers": args.num_workers}, "model": model,
           "optim": {"warmup_steps": 0}, "ema": {"enabled": not args.no_ema}}
    cfg.update(extra)
    return cfg


def fixed_batch(trainer: Trainer, batch: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = trainer.image_size
    b = {"target": torch.rand(batch, 3, s, s, generator=g) * 2 - 1,
         "cond": torch.rand(batch, 3, s, s, generator=g) * 2 - 1,
         "camera": torch.randn(batch, 4, generator=g)}
    b.update(draw_noise(range(seed * batch, (seed + 1) * batch), 0, trainer.latent_shape))
    b["dropout_u"] = torch.ones(batch)  # no CFG dropout: every sample pays the full cost
    return trainer._to_device(b)


@torch.no_grad()
def cached_latent_batch(trainer: Trainer, batch: dict) -> dict:
    """``batch`` as a ``data.cache_latents`` run feeds it: no target images, the VAE posteriors given (what
    ``LatentCache.lookup`` returns: the frozen VAE's dtype, computed as the live step does)."""
    acc = trainer.accelerator
    vae = acc.unwrap_model(trainer.objective).model.vae
    with acc.autocast():
        t = vae.encode(batch["target"].to(vae.dtype)).latent_dist
        c = vae.encode(batch["cond"].to(vae.dtype)).latent_dist
    out = {k: v for k, v in batch.items() if k != "target"}
    out.update(target_mean=t.mean.to(vae.dtype), target_std=t.std.to(vae.dtype), cond_mean=c.mean.to(vae.dtype))
    return out


def timed_steps(trainer: Trainer, batch: dict, steps: int, warmup: int) -> list[float]:
    """Milliseconds per optimizer step (``gradient_accumulation_steps`` is 1 here)."""
    dev = trainer.accelerator.device
    times = []
    for i in range(warmup + steps):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)
            start.record()
            trainer.micro_step(batch, step=10**6)
            end.record()
            torch.cuda.synchronize(dev)
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            trainer.micro_step(batch, step=10**6)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    return times


@torch.no_grad()
def encoder_ms(trainer: Trainer, batch: dict, reps: int) -> float:
    """Median time of the frozen encoders alone (VAE encode of both views + CLIP of the input view)."""
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.objective).model
    dev = acc.device

    def run():
        with acc.autocast():
            model.vae.encode(torch.cat([batch["target"], batch["cond"]]).to(model.vae.dtype))
            model.clip_embedding(batch["cond"])

    times = []
    for i in range(reps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_model(args, acc, name: str, batch: int, grad_ckpt: bool, data_root: str, work: str) -> dict:
    dev = acc.device
    trainer = Trainer(config_from_dict(make_config(args, name, data_root, work, batch, grad_ckpt)), accelerator=acc)
    trainer.setup()
    inner = acc.unwrap_model(trainer.objective)
    params = {k: v / 1e6 for k, v in inner.model.num_parameters().items()}
    data = fixed_batch(trainer, batch, seed=acc.process_index)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    row = {"model": name, "batch_per_process": batch, "num_processes": acc.num_processes,
           "mixed_precision": acc.mixed_precision, "gradient_checkpointing": grad_ckpt,
           "image_size": trainer.image_size, "params_m": {k: round(v, 1) for k, v in params.items()},
           "ema": not args.no_ema}
    times = timed_steps(trainer, data, args.steps, args.warmup)
    # the slowest rank sets the pace of a synchronous DDP step
    med = acc.gather(torch.tensor([statistics.median(times)], device=dev)).max().item()
    row["step_ms"] = med
    row["samples_per_s"] = batch * acc.num_processes / (med / 1e3)
    if dev.type == "cuda":
        peaks = acc.gather(torch.tensor([torch.cuda.max_memory_allocated(dev) / 2**30], device=dev))
        row["peak_mem_gib_per_process"] = [round(x, 2) for x in peaks.tolist()]
    row["encoders_ms"] = encoder_ms(trainer, data, max(3, args.steps // 4))
    if args.cache_latents:  # the same step with the frozen VAE's posteriors given (data.cache_latents)
        cached = cached_latent_batch(trainer, data)
        ctimes = timed_steps(trainer, cached, args.steps, args.warmup)
        cmed = acc.gather(torch.tensor([statistics.median(ctimes)], device=dev)).max().item()
        row["cached_step_ms"] = cmed
        row["cached_samples_per_s"] = batch * acc.num_processes / (cmed / 1e3)
        del cached
    if acc.num_processes > 1 and not args.no_single_baseline:
        # rank 0 alone, no DDP wrapper (no gradient all-reduce), the others wait: a 1-GPU step
        acc.wait_for_everyone()
        if acc.is_main_process:
            ddp = trainer.objective
            trainer.objective = acc.unwrap_model(ddp)
            try:
                single = statistics.median(timed_steps(trainer, data, args.steps, args.warmup))
            finally:
                trainer.objective = ddp
            box = torch.tensor([single], device=dev)
        else:
            box = torch.zeros(1, device=dev)
        acc.wait_for_everyone()
        single = acc.reduce(box, reduction="sum").item()
        row["single_step_ms"] = single
        row["single_samples_per_s"] = batch / (single / 1e3)
        row["scaling_efficiency"] = row["samples_per_s"] / (acc.num_processes * row["single_samples_per_s"])
    elif acc.num_processes == 1:
        row["single_step_ms"], row["single_samples_per_s"] = med, row["samples_per_s"]
    acc.free_memory(trainer.objective, trainer.optimizer)
    del trainer, inner, data
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_throughput(args, acc) -> list[dict]:
    rows = []
    models = ["tiny"] if args.tiny else args.models
    for name in models:
        batch = args.batch_size or DEFAULT_BATCH[name]
        with tempfile.TemporaryDirectory() as tmp:
            data = write_synthetic_dataset(Path(tmp) / "data", num_objects=2, views_per_object=2,
                                           image_size=image_size_of(name), val_objects=0)
            ckpt_options = [False, True] if args.grad_ckpt == "auto" else [args.grad_ckpt == "on"]
            for gc_on in ckpt_options:
                try:
                    rows.append(bench_model(args, acc, name, batch, gc_on, str(data), str(Path(tmp) / "run")))
                    break
                except torch.cuda.OutOfMemoryError:
                    acc.free_memory()
                    gc.collect()
                    torch.cuda.empty_cache()
                    if gc_on == ckpt_options[-1]:
                        rows.append({"model": name, "batch_per_process": batch, "num_processes": acc.num_processes,
                                     "gradient_checkpointing": gc_on, "error": "CUDA out of memory"})
    return rows


def print_table(rows: list[dict]) -> None:
    head = ("model", "GPUs", "batch/GPU", "prec", "ckpt", "step ms", "samples/s", "1-GPU samples/s", "scaling",
            "peak GiB", "encoders ms", "cached-latents step ms", "cached samples/s")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        if "error" in r:
            print(f"{r['model']} | {r['num_processes']} | {r['batch_per_process']} | | {r['gradient_checkpointing']}"
                  f" | {r['error']}")
            continue
        peak = max(r["peak_mem_gib_per_process"]) if "peak_mem_gib_per_process" in r else float("nan")
        eff = r.get("scaling_efficiency")
        print(f"{r['model']} | {r['num_processes']} | {r['batch_per_process']} | {r['mixed_precision']} | "
              f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | "
              f"{r.get('single_samples_per_s', float('nan')):.1f} | {'' if eff is None else f'{eff:.3f}'} | "
              f"{peak:.1f} | {r['encoders_ms']:.1f} | {r.get('cached_step_ms', float('nan')):.1f} | "
              f"{r.get('cached_samples_per_s', float('nan')):.1f}")


def run_loss_curve(args, acc) -> dict:
    name = "tiny" if args.tiny else args.model
    if args.global_batch % acc.num_processes:
        raise SystemExit(f"--global-batch {args.global_batch} is not divisible by {acc.num_processes} processes")
    work = Path(args.work_dir)
    data = Path(args.data) if args.data else work / f"data_{name}"
    if not args.data and acc.is_main_process and not (data / "manifest.json").is_file():
        write_synthetic_dataset(data, num_objects=args.objects, views_per_object=6, image_size=image_size_of(name),
                                val_objects=1, seed=0)
    out_dir = work / f"curve_{name}_{acc.num_processes}p"
    if acc.is_main_process and out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    acc.wait_for_everyone()
    per = args.global_batch // acc.num_processes
    cfg = make_config(args, name, str(data), str(out_dir), per, args.grad_ckpt == "on", max_steps=args.steps,
                      optim={"warmup_steps": 10, "lr": args.lr})
    trainer = Trainer(config_from_dict(cfg), accelerator=acc)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()] if acc.is_main_process else []
    return {"mode": "loss_curve", "model": name, "num_processes": acc.num_processes, "global_batch": args.global_batch,
            "batch_per_process": per, "mixed_precision": acc.mixed_precision, "steps": args.steps,
            "wall_s": wall, "losses": [r["loss"] for r in log if "loss" in r],
            "samples_per_s_last": log[-1]["samples_per_s"] if log else None}


def compare(a_path: str, b_path: str) -> dict:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    la, lb = a["losses"], b["losses"]
    n = min(len(la), len(lb))
    diffs = [abs(x - y) for x, y in zip(la[:n], lb[:n])]
    rel = [d / max(abs(x), 1e-12) for d, x in zip(diffs, la)]
    res = {"steps": n, "a": {k: a[k] for k in ("num_processes", "global_batch", "batch_per_process")},
           "b": {k: b[k] for k in ("num_processes", "global_batch", "batch_per_process")},
           "max_abs_diff": max(diffs), "max_rel_diff": max(rel), "mean_abs_diff": sum(diffs) / n,
           "final_loss_a": la[n - 1], "final_loss_b": lb[n - 1],
           "mean_loss_last10_a": sum(la[n - 10:n]) / len(la[n - 10:n]),
           "mean_loss_last10_b": sum(lb[n - 10:n]) / len(lb[n - 10:n])}
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke test, seconds)")
    ap.add_argument("--models", nargs="+", default=["small", "full"], choices=["tiny", "small", "full"])
    ap.add_argument("--batch-size", type=int, default=None,
                    help="per-process batch (default: tiny 4, small 64, full 24 = Zero123's 192 over 8 GPUs)")
    ap.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                    help="default: bf16 on CUDA, no on CPU")
    ap.add_argument("--grad-ckpt", default="auto", choices=["auto", "on", "off"],
                    help="gradient checkpointing; auto: off, on after an out-of-memory")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps (loss curve: training steps)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training objective (inductor)")
    ap.add_argument("--cache-latents", action="store_true",
                    help="also time the step on cached VAE posteriors (data.cache_latents), same run")
    ap.add_argument("--no-single-baseline", action="store_true", help="skip the rank-0 1-GPU timing")
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--loss-curve", action="store_true", help="loss-curve mode")
    ap.add_argument("--model", default="small", choices=["tiny", "small", "full"], help="loss-curve model")
    ap.add_argument("--global-batch", type=int, default=64, help="loss-curve global batch")
    ap.add_argument("--lr", type=float, default=1e-4, help="loss-curve learning rate")
    ap.add_argument("--objects", type=int, default=64, help="loss-curve synthetic objects")
    ap.add_argument("--data", default=None, help="loss-curve dataset (default: synthetic boxes)")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "zero123_bench_train"))
    ap.add_argument("--compare", nargs=2, metavar="JSON", help="compare two loss-curve JSON files")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()

    if args.compare:
        res = compare(*args.compare)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1))
        return
    if args.mixed_precision is None:
        args.mixed_precision = "bf16" if torch.cuda.is_available() and not args.tiny else "no"
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
        args.num_workers = 0
        torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy CPU
    from accelerate import Accelerator

    # --compile: the trainer's `compile: true` (accelerate's dynamo_backend); the warm-up steps absorb compilation
    acc = Accelerator(mixed_precision=args.mixed_precision, dynamo_backend="inductor" if args.compile else "no")
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(acc.device),
           "compile": bool(args.compile),
           "gpu": torch.cuda.get_device_name(acc.device) if acc.device.type == "cuda" else None,
           "num_processes": acc.num_processes}
    if args.loss_curve:
        result = {"env": env, **run_loss_curve(args, acc)}
        if acc.is_main_process:
            print(f"{result['model']}: {result['steps']} steps, global batch {result['global_batch']} on "
                  f"{result['num_processes']} process(es): loss {result['losses'][0]:.4f} -> "
                  f"{result['losses'][-1]:.4f}, {result['wall_s']:.1f} s")
    else:
        rows = run_throughput(args, acc)
        result = {"env": env, "mode": "throughput", "steps": args.steps, "warmup": args.warmup, "rows": rows}
        if acc.is_main_process:
            print_table(rows)
    if acc.is_main_process and args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    acc.end_training()


if __name__ == "__main__":
    main()
