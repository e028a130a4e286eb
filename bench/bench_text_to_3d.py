"""Text-to-3D speed: the SDXL text-to-image stage (fp32 vs fp16, SDXL vs Turbo settings, with / without CPU
offload), background removal, and one whole text-to-3D run (SDXL + mask + ``to3d``), side by side.

Full-size random-weight networks built from the SDXL base 1.0 configs written below (UNet 2.57 B parameters, CLIP
ViT-L/14 text 123 M + OpenCLIP ViT-bigG text 695 M, VAE 83.7 M) and a full-size random Stable Zero123; speed does
not depend on weight values, and nothing is downloaded. The tokenizer is a byte-level stand-in (the prompt is
padded to 77 tokens either way, so the text encoders do the same work). CUDA events, warm-up, medians.

    python bench/bench_text_to_3d.py --out bench/results/text_to_3d.json          # on a GPU (~5 min)
    python bench/bench_text_to_3d.py --tiny --out /tmp/t23d.json                   # CPU smoke test, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zero123.errors import Zero123Error  # noqa: E402
from zero123.pipelines.text2image import PRESETS, TextToImage  # noqa: E402

# ----- SDXL base 1.0 sizes (stabilityai/stable-diffusion-xl-base-1.0 configs, written out) ---------------------------
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True,
    freq_shift=0, act_fn="silu", mid_block_type="UNetMidBlock2DCrossAttn", upcast_attention=None)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
    act_fn="silu", sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_ENCODER = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SDXL_TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14 text tower, with projection
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                      timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear")

# ----- tiny sizes for --tiny (64 px images, 8x8 latents) -------------------------------------------------------------
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[16, 32],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[2, 4], cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 16, 16],
                layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025,
                force_upcast=True)
TINY_TEXT_ENCODER = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=32)


def byte_level_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over the 256 byte-level characters (+ end-of-word forms), no merges: no download."""
    from transformers import CLIPTokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def build_random_sdxl(tiny: bool, device, dtype, tmp: Path, seed: int = 0):
    """A ``StableDiffusionXLPipeline`` with random weights, created directly on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = byte_level_tokenizer(tmp / "tokenizer")
    ids = dict(bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"),
               eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    ids["pad_token_id"] = ids["eos_token_id"]
    te1, te2 = (TINY_TEXT_ENCODER, TINY_TEXT_ENCODER) if tiny else (SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2)
    te1 = {**te1, "vocab_size": max(te1["vocab_size"], len(tok)), **ids}
    te2 = {**te2, "vocab_size": max(te2["vocab_size"], len(tok)), **ids}
    torch.manual_seed(seed)
    with torch.device(device):  # random initialisation directly on the device (seconds on a GPU)
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SDXL_UNET))
        vae = AutoencoderKL(**(TINY_VAE if tiny else SDXL_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(**te1))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER))
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup: int, reps: int, device) -> list[float]:
    """Seconds per call (CUDA events on GPU, perf_counter on CPU) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def peak_gb(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def disc_matting(image):
    """Stand-in mask for random-weight images (they have no plain background to segment): a centred disc."""
    w, h = image.size
    yy, xx = np.mgrid[0:h, 0:w]
    return ((((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2) <= 0.3 ** 2).astype(np.float32)


def plain_background_image(size: int):
    from PIL import Image

    img = np.full((size, size, 3), 250, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    img[(xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (0.3 * size) ** 2] = (180, 70, 40)
    return Image.fromarray(img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny networks on the CPU (smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="SDXL steps (default 30; tiny: 2)")
    ap.add_argument("--size", type=int, default=None, help="SDXL image side (default 1024; tiny: 64)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 text-to-image baseline")
    ap.add_argument("--no-offload", action="store_true", help="skip the enable_model_cpu_offload row")
    ap.add_argument("--to3d-preset", default=None, help="to3d preset for the whole run (default fast; tiny: tiny)")
    ap.add_argument("--to3d-steps", type=int, default=None, help="override the to3d preset's steps (tiny: 2)")
    ap.add_argument("--skip-3d", action="store_true", help="time only the image stages")
    ap.add_argument("--matting-model", type=Path, default=None, help="also time this ONNX matting model")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/text_to_3d.json"))
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    half = torch.float16 if device.type == "cuda" else torch.float32
    steps = args.steps or (2 if args.tiny else PRESETS["sdxl"].steps)
    size = args.size or (64 if args.tiny else PRESETS["sdxl"].size)
    turbo = PRESETS["turbo"]
    turbo_size = 64 if args.tiny else turbo.size
    reps, warmup = (1, 0) if args.tiny else (args.reps, args.warmup)
    to3d_preset = args.to3d_preset or ("tiny" if args.tiny else "fast")
    rows: list[dict] = []
    info: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                  or "cpu", "torch": torch.__version__, "tiny": args.tiny, "steps": steps, "size": size}
    from _no_ffmpeg import skip_mp4_if_no_ffmpeg

    info["mp4"] = skip_mp4_if_no_ffmpeg() or "H.264 via imageio-ffmpeg"

    def save():  # after every row, so a run cut off by a time limit still leaves what it measured
        from zero123.export.writers import atomic_write_bytes

        atomic_write_bytes(args.out, (json.dumps({"info": info, "rows": rows}, indent=2) + "\n").encode())

    def add(name, times, unit_steps=None, **extra):
        med = statistics.median(times)
        row = {"name": name, "median_s": round(med, 4), "times_s": [round(t, 4) for t in times]}
        if unit_steps:
            row["s_per_step"] = round(med / unit_steps, 4)
        row.update(extra)
        rows.append(row)
        save()
        print(f"  {name}: {med:.3f} s", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_t23d_"))
    prompt = "a friendly dog"
    # ----- text-to-image ---------------------------------------------------------------------------------------
    print(f"building random SDXL on {device} ...", flush=True)
    t0 = time.perf_counter()
    dtype0 = torch.float32 if (device.type == "cuda" and not args.no_fp32) else half
    pipe = build_random_sdxl(args.tiny, device, dtype0, tmp)
    info["build_s"] = round(time.perf_counter() - t0, 1)
    info["params_M"] = {k: round(n_params(getattr(pipe, k)) / 1e6, 1)
                        for k in ("unet", "vae", "text_encoder", "text_encoder_2")}
    print(f"  params (M): {info['params_M']}", flush=True)
    t2i = TextToImage(pipe, "sdxl", check_finite=False)
    nan_seen = {}

    def run_t2i(n_steps, side, guidance):
        def fn():
            im = t2i.generate(prompt, seed=0, steps=n_steps, size=side, guidance_scale=guidance)[0]
            nan_seen[(n_steps, side)] = bool(np.asarray(im).max() == 0)
        return fn

    if device.type == "cuda" and not args.no_fp32:
        reset_peak(device)
        add(f"t2i SDXL fp32 {steps} steps {size}px (naive)", timed(run_t2i(steps, size, 5.0), warmup, reps, device),
            steps, peak_gb=peak_gb(device))
        pipe.to(dtype=half)
        t2i.pipeline = pipe
    reset_peak(device)
    label = "fp16" if half == torch.float16 else "fp32"
    add(f"t2i SDXL {label} {steps} steps {size}px", timed(run_t2i(steps, size, 5.0), warmup, reps, device), steps,
        peak_gb=peak_gb(device))
    reset_peak(device)
    add(f"t2i Turbo settings {label} {turbo.steps} steps {turbo_size}px guidance 0",
        timed(run_t2i(turbo.steps, turbo_size, 0.0), warmup, reps, device), turbo.steps, peak_gb=peak_gb(device))
    if device.type == "cuda" and not args.no_offload:
        pipe.to("cpu")
        reset_peak(device)
        pipe.enable_model_cpu_offload(device=device)
        add(f"t2i SDXL {label} {steps} steps {size}px + cpu offload",
            timed(run_t2i(steps, size, 5.0), warmup, reps, device), steps, peak_gb=peak_gb(device))
        pipe.remove_all_hooks()
        pipe.to(device)
    info["t2i_black_output_random_weights"] = any(nan_seen.values())

    # ----- background removal ----------------------------------------------------------------------------------
    from zero123.preprocessing import recenter, segment_foreground

    img = plain_background_image(size)
    add(f"plain-background segmentation + recentre {size}px",
        timed(lambda: recenter(img, segment_foreground(img), size=512), 1, 5, torch.device("cpu")))
    if args.matting_model is not None:
        from zero123.matting import OnnxMattingModel

        mm = OnnxMattingModel(args.matting_model)
        add(f"ONNX matting {args.matting_model.name} ({mm.input_hw[0]}px)", timed(lambda: mm(img), 1, 5,
                                                                                   torch.device("cpu")))

    # ----- whole text-to-3D run --------------------------------------------------------------------------------
    if not args.skip_3d:
        from zero123.models.configs import full_size_config, tiny_config
        from zero123.pipelines.text_to_3d import text_to_3d

        print("building random Stable Zero123 ...", flush=True)
        model = (tiny_config if args.tiny else full_size_config)("stable_zero123").build(
            device=device, dtype=half, seed=0).eval()
        if device.type == "cuda":  # what to3d does to a model it loads itself
            from zero123.models.optimizations import optimize_for_inference

            optimize_for_inference(model)
        info["zero123_params_M"] = {k: round(v / 1e6, 1) for k, v in model.num_parameters().items()}
        to3d_steps = args.to3d_steps or (2 if args.tiny else None)
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        name = (f"text-to-3D total (SDXL {steps} steps + mask + to3d {to3d_preset}"
                f"{'' if to3d_steps is None else f' {to3d_steps} steps'})")
        try:
            res = text_to_3d(prompt, t2i, out_dir=tmp / "run", t2i_steps=steps, t2i_size=size,
                             matting_model=disc_matting, preset=to3d_preset, steps=to3d_steps, seed=0, device=device,
                             model=model, progress=False)
        except Zero123Error as exc:  # e.g. random weights reconstructing nothing: keep the other rows
            info["text_to_3d_error"] = str(exc)
            print(f"  text-to-3D run failed: {exc}", flush=True)
        else:
            sync(device)
            total = time.perf_counter() - t0
            tm = {k: round(v, 3) for k, v in res.timings.items()}
            tm.update({f"to3d.{k}": round(v, 3) for k, v in getattr(res.result_3d, "timings", {}).items()})
            rows.append({"name": name, "median_s": round(total, 3), "times_s": [round(total, 3)], "stages_s": tm,
                         "peak_gb": peak_gb(device)})
            save()
            print(f"  text-to-3D total: {total:.1f} s  stages: {tm}", flush=True)

    # ----- report ----------------------------------------------------------------------------------------------
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'stage':<{width}}  {'median s':>9}  {'s/step':>7}  {'peak GB':>7}")
    for r in rows:
        sps = f"{r['s_per_step']:.4f}" if "s_per_step" in r else "-"
        pk = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "-"
        print(f"{r['name']:<{width}}  {r['median_s']:>9.3f}  {sps:>7}  {pk:>7}")
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
