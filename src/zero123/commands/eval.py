"""``zero123 eval --data ROOT``: novel-view PSNR / SSIM / LPIPS on held-out renders, next to trivial baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_options, add_sampling_options, load_pipeline, resolve_device_dtype

EPILOG = """examples:
  zero123 eval --data data/proc --out eval.json                       # the bundled model
  zero123 eval --data data/proc -c stable_zero123.ckpt --steps 50 --lpips-weights lpips_alex.pth
  zero123 eval --data data/proc --baselines-only
  zero123 eval --data data/proc --samples 4 --steps 25                # the mean of 4 samples per view
Pairs (input view -> target view) are drawn per held-out object, deterministically from --seed. Images are
composited on white at the model's image size. Baselines: 'input' (return the input view), 'mean_train'
(mean training image), 'mean_target' (mean of the targets); with a model also 'vae_target' (the target through
the model's own VAE: the most a sample can be, given the decoder). LPIPS needs local weights: a state dict saved from
the lpips package, e.g. torch.save(lpips.LPIPS(net='alex').state_dict(), 'lpips_alex.pth')."""


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", "-d", required=True, metavar="ROOT", help="dataset from `zero123 render-dataset`")
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="objects to evaluate (default test)")
    p.add_argument("--pairs-per-object", type=int, default=4, help="(input, target) pairs per object (default 4)")
    p.add_argument("--max-objects", type=int, default=None, metavar="N", help="evaluate only the first N objects")
    p.add_argument("--out", "-o", default=None, metavar="JSON", help="write the results here (default: print only)")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed for the pairs and the sampling noise")
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="score the pixel mean of K samples per view: the model's expected view (higher PSNR, "
                        "blurrier); default 1, a single sample as `zero123 views` gives")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="evaluation size (default: the model's; with --baselines-only the dataset's)")
    p.add_argument("--lpips-weights", default=None, metavar="PATH",
                   help="local LPIPS state dict (.pth/.safetensors, alex or vgg); without it LPIPS is skipped")
    p.add_argument("--baselines-only", action="store_true", help="score only the trivial baselines (no model)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(p)
    return p


def run(args) -> int:
    from ..data import layout
    from ..errors import Zero123Error
    from ..evaluation.metrics import load_lpips
    from ..evaluation.runner import evaluate, pipeline_predictor, select_pairs, vae_roundtrip
    from ..pipelines.zero123_pipeline import check_noise_scale

    from ..schedulers import make_sampler

    if args.steps < 2:
        raise Zero123Error(f"--steps must be >= 2, got {args.steps}")
    make_sampler(args.scheduler, args.steps, args.eta)  # one-line error for --eta with dpmpp / unipc
    if args.samples < 1:
        raise Zero123Error(f"--samples must be >= 1, got {args.samples}")
    if args.noise_scale is not None:
        check_noise_scale(args.noise_scale)
    if args.out:
        from ..utils.outputs import check_output_file

        check_output_file(args.out)
    manifest = layout.read_manifest(args.data)
    pairs = select_pairs(args.data, args.split, args.pairs_per_object, args.seed, args.max_objects, manifest)
    lpips = load_lpips(args.lpips_weights) if args.lpips_weights else None
    predict, size, name, autoencode = None, args.image_size or manifest.image_size, "model", None
    settings = {}
    if not args.baselines_only:
        device, dtype = resolve_device_dtype(args)
        ckpt = args.checkpoint
        pipe = load_pipeline(ckpt, args.variant, dtype, device, weights_variant=args.weights_variant,
                             original_config=args.original_config)
        size = args.image_size or pipe.model.image_size
        if args.noise_scale is not None:
            pipe.noise_scale = args.noise_scale
        pipe.timestep_spacing, pipe.scheduler = args.timestep_spacing, args.scheduler
        predict = pipeline_predictor(pipe, args.steps, args.guidance_scale, args.seed, args.eta, args.samples)
        autoencode = vae_roundtrip(pipe.model)
        name = Path(ckpt).name if ckpt else "bundled"
        if args.samples > 1:
            name += f" (mean of {args.samples} samples)"
        settings = {"checkpoint": ckpt or "bundled", "variant": pipe.model.variant.value,
                    "scheduler": pipe.scheduler, "steps": args.steps,
                    "guidance_scale": args.guidance_scale, "eta": args.eta, "noise_scale": pipe.noise_scale,
                    "timestep_spacing": pipe.timestep_spacing,
                    "samples_per_view": args.samples,
                    "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
        if lpips is not None:
            lpips.to(device)
    result = evaluate(predict, args.data, pairs, size, lpips=lpips, method_name=name, progress=not args.quiet,
                      manifest=manifest, autoencode=autoencode)
    result.settings.update(settings, split=args.split, seed=args.seed, pairs_per_object=args.pairs_per_object)
    print(result.table())
    if args.out:
        print(f"wrote {result.write_json(args.out)}")
    return 0
