"""``zero123 text-to-3d "PROMPT" --t2i-model SDXL --out DIR``: text -> SDXL image -> background removal -> 3D."""

from __future__ import annotations

import argparse

from ._common import add_foreground_options, add_original_config_option, foreground_kwargs

EPILOG = """examples:
  zero123 text-to-3d "a friendly dog" --t2i-model ~/models/sdxl-turbo --checkpoint stable_zero123.ckpt --out dog/
  zero123 text-to-3d "a red teapot" --t2i-model sd_xl_base_1.0.safetensors --t2i-config ~/models/sdxl-base-config \\
      --num-candidates 4 --matting-model isnet-general-use.onnx --cpu-offload --out teapot/

stages: (1) SDXL draws --num-candidates images of --prompt-template (candidate i uses seed --seed + i), kept in
DIR/candidates/NN.png; (2) each gets a foreground mask (--mask, --matting-model, else --segmentation)
and a quality score (one connected object, sensible size, not touching the frame, crisp mask) in
DIR/candidates/scores.json; the best one (or --pick K) is recentred and saved as DIR/input_rgba.png;
(3) image-to-3D on it (the same as `zero123 to3d DIR/input_rgba.png`), mesh and video in DIR.
Nothing is downloaded: --t2i-model is a local SDXL / SDXL-Turbo diffusers folder or single file
(a single file also needs --t2i-config, its diffusers config folder). A "turbo" model name selects
SDXL-Turbo's sampling (4 steps, guidance 0, 512 px)."""


def add_parser(sub, name, summary):
    from ..pipelines.text2image import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_TEMPLATE

    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help='the object to make, e.g. "a friendly dog"')
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first candidate image and of the 3D stage")

    g = p.add_argument_group("text-to-image (SDXL)")
    g.add_argument("--t2i-model", required=True, metavar="PATH",
                   help="SDXL base or SDXL-Turbo: a diffusers folder (model_index.json) or a single "
                        ".safetensors/.ckpt file")
    g.add_argument("--t2i-config", metavar="DIR", default=None,
                   help="diffusers config folder for a single-file --t2i-model (configs + tokenizers; default: "
                        "the file's folder if it has model_index.json)")
    g.add_argument("--t2i-preset", choices=["auto", "sdxl", "turbo"], default="auto",
                   help="sampling defaults: sdxl = 30 steps, guidance 5, 1024 px; turbo = 4 steps, guidance 0, "
                        "512 px (default auto: turbo when the model name contains 'turbo')")
    g.add_argument("--t2i-steps", type=int, default=None, metavar="N", help="denoising steps (default: from the preset)")
    g.add_argument("--t2i-guidance", type=float, default=None, metavar="G",
                   help="classifier-free guidance scale (default: from the preset)")
    g.add_argument("--t2i-size", type=int, default=None, metavar="PX", help="image side in pixels (default: from the preset)")
    g.add_argument("--t2i-dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="SDXL precision (default: fp16 on CUDA, fp32 on CPU)")
    g.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE, metavar="TEXT",
                   help=f"text sent to SDXL; {{prompt}} is replaced by PROMPT (default: {DEFAULT_PROMPT_TEMPLATE!r})")
    g.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT, metavar="TEXT",
                   help="what to avoid (unused when guidance <= 1, e.g. with Turbo; '' for none)")
    g.add_argument("--num-candidates", "-n", type=int, default=1, metavar="N",
                   help="images to generate; the one with the best foreground score is used (default 1)")
    g.add_argument("--pick", type=int, default=None, metavar="K",
                   help="use candidate K (0-based) instead of the best-scoring one")
    g.add_argument("--cpu-offload", action="store_true",
                   help="move SDXL's networks to the GPU one at a time (for GPUs with less than ~12 GB)")

    add_foreground_options(p)
    g = p.add_argument_group("input image")
    g.add_argument("--rgba-size", type=int, default=512, metavar="PX", help="side of DIR/input_rgba.png in pixels (default 512)")

    g = p.add_argument_group("image-to-3D")
    g.add_argument("--checkpoint", "-c", metavar="PATH", default=None,
                   help="Zero123-family model (stable_zero123.ckpt, ...; .ckpt/.safetensors or diffusers folder). "
                        "Default: the small model bundled with zero123")
    add_original_config_option(g)
    g.add_argument("--preset", default="auto", metavar="NAME",
                   help="image-to-3D preset of `zero123 to3d`: auto (on a GPU bundled for the bundled model, "
                        "default for a --checkpoint; cpu on a CPU), default (the recipe, 600 steps), fast, bundled, "
                        "cpu, tiny")
    g.add_argument("--steps", type=int, default=None, metavar="N", help="SDS optimisation steps (default: from --preset)")
    g.add_argument("--input-elevation", type=float, default=None, metavar="DEG",
                   help="elevation of the generated image's viewpoint in degrees (default: to3d's, 5)")
    g.add_argument("--elevation", type=float, default=None, dest="renamed_elevation", help=argparse.SUPPRESS)
    g.add_argument("--variant", choices=["zero123", "stable_zero123"], default=None,
                   help="camera conditioning of --checkpoint (default: from the folder's config or the file name)")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue an interrupted 3D stage from DIR/checkpoints/state.pt (the images are made again, "
                        "identically; `zero123 to3d DIR/input_rgba.png --resume DIR` skips them)")
    g.add_argument("--no-3d", action="store_true",
                   help="stop after DIR/input_rgba.png (run `zero123 to3d` on it later)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... for both stages (default: cuda if available)")
    g.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="precision of the 3D stage (default: to3d's default)")
    return p


def run(args) -> int:
    import sys

    import torch

    from ..errors import Zero123Error
    from ..pipelines.image_to_3d import Interrupted
    from ..pipelines.text_to_3d import INPUT_RGBA_NAME, text_to_3d
    from .to3d import interrupted_message, renamed_elevation_error, resume_command

    renamed_elevation_error(args)
    if args.device and str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise Zero123Error(f"--device {args.device} requested but CUDA is not available on this machine")
    foreground = foreground_kwargs(args)
    try:
        result = text_to_3d(
            args.prompt, args.t2i_model, args.checkpoint, args.out,
            t2i_config=args.t2i_config, t2i_preset=None if args.t2i_preset == "auto" else args.t2i_preset,
            t2i_steps=args.t2i_steps, t2i_guidance=args.t2i_guidance, t2i_size=args.t2i_size,
            t2i_dtype=args.t2i_dtype, prompt_template=args.prompt_template,
            negative_prompt=args.negative_prompt or None, num_candidates=args.num_candidates, pick=args.pick,
            **foreground,
            cpu_offload=args.cpu_offload, rgba_size=args.rgba_size, preset=args.preset, steps=args.steps,
            seed=args.seed, device=args.device, dtype=args.dtype, input_elevation=args.input_elevation,
            resume=args.resume, skip_3d=args.no_3d, progress=True, variant=args.variant,
            original_config=args.original_config,
        )
    except Interrupted as exc:
        # the 3D stage continues from the cut-out input_rgba.png: the photo's mask options do not apply to it
        command = resume_command(exc.out_dir / INPUT_RGBA_NAME, exc.out_dir, args, foreground=False)
        print(interrupted_message(exc, command), file=sys.stderr)
        return 130
    print(f"candidates: {result.scores_path.parent}  (chosen {result.chosen:02d} by {result.chosen_by}, "
          f"score {result.scores[result.chosen]['score']:.3f})")
    print(f"input image: {result.input_rgba}")
    for name, value in _result_files(result.result_3d):
        print(f"{name}: {value}")
    print(f"rerun only the 3D stage: {result.rerun_command}")
    return 0


def _result_files(result_3d):
    """(field, path) pairs of ``to3d``'s result dataclass that name files, in field order."""
    import dataclasses
    from pathlib import Path

    if result_3d is None or not dataclasses.is_dataclass(result_3d):
        return []
    pairs = []
    for f in dataclasses.fields(result_3d):
        v = getattr(result_3d, f.name)
        if isinstance(v, Path) or (isinstance(v, str) and f.name.endswith(("path", "mesh", "video", "file"))):
            pairs.append((f.name, v))
    return pairs
