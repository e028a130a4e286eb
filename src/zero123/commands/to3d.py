"""``zero123 to3d IMAGE --out DIR``: one object photo -> textured mesh (OBJ/GLB/PLY) + turntable video.

Examples::

    zero123 to3d chair.png --out chair3d                      # the bundled model (cpu preset on a CPU)
    zero123 to3d chair.png --checkpoint stable_zero123.ckpt --out chair3d
    zero123 to3d chair.png --checkpoint ckpt --out chair3d --preset fast --steps 200 --seed 1
    zero123 to3d chair.png --checkpoint ckpt --out chair3d --resume chair3d     # continue after Ctrl-C
"""

from __future__ import annotations

import argparse

from ._common import add_original_config_option


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=summary + ". Follows threestudio's stable-zero123 "
                              "recipe (SDS + reference-view losses on a hash-grid NeRF), then marching cubes, a "
                              "baked UV texture and a turntable video. Ctrl-C saves a checkpoint; --resume continues.",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("image", help="object photo: RGBA with transparency, or on a plain background")
    p.add_argument("--checkpoint", "-c", default=None,
                   help="Zero123 / Stable Zero123 checkpoint (.ckpt/.safetensors or a diffusers folder); "
                        "default: the bundled model")
    add_original_config_option(p)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--preset", choices=["auto", "default", "fast", "cpu", "tiny"], default="auto",
                   help="auto (default): 'default' on a GPU, 'cpu' on a CPU; default: the recipe (600 steps); "
                        "fast: 300 steps at lower resolution; cpu: 200 small steps, minutes on a CPU; tiny: smoke tests")
    p.add_argument("--steps", type=int, default=None, help="number of optimisation steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elevation", type=float, default=None, dest="input_elevation",
                   help="elevation of the photo's viewpoint in degrees (default 5)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue a previous run from DIR/checkpoints/state.pt (its settings are reused)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="diffusion-model precision (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args) -> int:
    from ..errors import Zero123Error
    from ..pipelines.image_to_3d import to3d

    if args.steps is not None and args.steps < 1:
        raise Zero123Error(f"--steps must be >= 1, got {args.steps}")
    result = to3d(args.image, args.checkpoint, args.out, preset=args.preset, steps=args.steps, seed=args.seed,
                  device=args.device, dtype=args.dtype, resume=args.resume, input_elevation=args.input_elevation,
                  progress=not args.no_progress, original_config=args.original_config)
    print(f"mesh: {result.obj} ({result.num_vertices} vertices, {result.num_faces} faces)")
    print(f"      {result.glb}")
    print(f"      {result.ply}")
    print(f"video: {result.mp4}")
    print(f"       {result.gif}")
    print(f"preview: {result.preview}")
    print(f"done in {result.timings.get('total_s', 0.0):.1f} s ({result.steps} steps)")
    return 0
