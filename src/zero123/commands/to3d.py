"""``zero123 to3d IMAGE --out DIR``: one object photo -> textured mesh (OBJ/GLB/PLY) + turntable video.

Examples::

    zero123 to3d chair.png --out chair3d                      # the bundled model (cpu preset on a CPU)
    zero123 to3d chair.png --checkpoint stable_zero123.ckpt --out chair3d
    zero123 to3d chair.png --checkpoint ckpt --out chair3d --preset fast --steps 200 --seed 1
    zero123 to3d chair.png --out chair3d --preset fast --config my.yaml --set render.num_samples_per_ray=128
    zero123 to3d chair.png --checkpoint ckpt --out chair3d --resume chair3d     # continue after Ctrl-C
    zero123 to3d toy.png --checkpoint my_model.ckpt --variant stable_zero123 --input-elevation 15 --out toy3d
    zero123 to3d chair.png --out chair3d --representation gaussians            # 3D Gaussians (DreamGaussian)

An earlier to3d output in --out is replaced whole; a folder holding other files is refused. --input-elevation is
the photo's own elevation, as in `views` and `text-to-3d` (views' --elevation is a change of elevation).
"""

from __future__ import annotations

import argparse

from ._common import add_foreground_options, add_original_config_option, foreground_kwargs


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=summary + ". Follows threestudio's stable-zero123 "
                              "recipe (SDS + reference-view losses on a hash-grid NeRF), then marching cubes, a "
                              "baked UV texture and a turntable video. Ctrl-C saves a checkpoint; --resume continues.",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("image", help="object photo: RGBA with transparency, or any RGB photo (its background is "
                   "removed: see --segmentation; the mask is written as mask.png)")
    p.add_argument("--checkpoint", "-c", default=None,
                   help="Zero123 / Stable Zero123 checkpoint (.ckpt/.safetensors or a diffusers folder); "
                        "default: the bundled model")
    add_original_config_option(p)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--preset", choices=["auto", "default", "fast", "bundled", "cpu", "tiny"], default="auto",
                   help="auto (default): on a GPU 'bundled' for the bundled model, 'default' for a --checkpoint; "
                        "'cpu' on a CPU; default: the recipe (600 steps); fast: 300 steps at lower resolution; "
                        "bundled: the bundled 128 px model on a GPU; cpu: 200 small steps, minutes on a CPU; "
                        "tiny: smoke tests")
    p.add_argument("--representation", choices=["nerf", "gaussians"], default=None,
                   help="the 3D representation: nerf (default; the hash-grid NeRF of the recipe) or gaussians (3D "
                        "Gaussian splatting on DreamGaussian's schedule, presets/gaussians/<preset>.yaml)")
    p.add_argument("--steps", type=int, default=None, help="number of optimisation steps (default: the preset's)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML/JSON of to3d config keys (any subset, e.g. a copy of zero123/assets/presets/"
                        "default.yaml) applied on top of --preset")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", dest="overrides",
                   help="override one config key on top of --preset and --config, value parsed as YAML, as "
                        "`zero123 train` takes them (repeatable), e.g. --set render.num_samples_per_ray=128")
    p.add_argument("--print-config", action="store_true",
                   help="print the config a new run would use (YAML, the --config schema) and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-elevation", type=float, default=None, metavar="DEG",
                   help="elevation of the photo's viewpoint in degrees (default: reference.elevation when --config "
                        "or --set gives it, else estimated from the photo with the model, printed; see "
                        "zero123.elevation)")
    p.add_argument("--elevation", type=float, default=None, dest="renamed_elevation", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=["zero123", "stable_zero123"], default=None,
                   help="camera conditioning of the checkpoint (default: from the folder's config or the file "
                        "name: names with 'stable' or '123c' mean stable_zero123)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue a previous run from DIR/checkpoints/state.pt (its settings are reused)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="diffusion-model precision (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help="GPU memory the run may use, in GiB (default: the GPU's free memory): renders are "
                        "back-propagated in parts that fit (the same result); 'inf': no bound")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_foreground_options(p)
    return p


def renamed_elevation_error(args):
    """The one-line error for the old spelling ``--elevation`` of the photo's elevation (to3d, text-to-3d)."""
    from ..errors import Zero123Error

    if getattr(args, "renamed_elevation", None) is not None:
        raise Zero123Error(f"the photo's elevation is --input-elevation {args.renamed_elevation:g} (in every command; "
                           "--elevation is views' change of elevation)")


def resume_command(image, out_dir, args, foreground: bool = True) -> str:
    """The exact ``zero123 to3d`` command line that continues an interrupted run into ``out_dir``; with
    ``foreground``, the photo's mask / matting options too (not for an ``input_rgba.png`` already cut out)."""
    import shlex

    cmd = ["zero123", "to3d", str(image), "--out", str(out_dir), "--resume", str(out_dir)]
    for flag, value in (("--checkpoint", args.checkpoint), ("--variant", args.variant), ("--steps", args.steps),
                        ("--device", args.device), ("--dtype", args.dtype),
                        ("--max-memory", getattr(args, "max_memory", None)),
                        ("--original-config", getattr(args, "original_config", None)),
                        *(_foreground_flags(args) if foreground else ())):
        if value is not None:
            cmd += [flag, str(value)]
    return " ".join(shlex.quote(c) for c in cmd)


def _unless(value, default):
    return None if value == default else value


def _foreground_flags(args):
    return (("--segmentation", _unless(getattr(args, "segmentation", None), "auto")),
            ("--mask", getattr(args, "mask", None)),
            ("--matting-model", getattr(args, "matting_model", None)),
            ("--matting-kind", _unless(getattr(args, "matting_kind", None), "auto")))


def interrupted_message(exc, command: str) -> str:
    """What Ctrl-C prints: the saved state and the command that continues (``exc``: ``image_to_3d.Interrupted``)."""
    return (f"zero123: interrupted at step {exc.step} of {exc.steps}; the state is saved in {exc.checkpoint}\n"
            f"resume with: {command}")


def resolved_config(args):
    """The run's ``ImageTo3DConfig``: --preset, then --config, --set and --steps (checked before any model work)."""
    from ..errors import Zero123Error
    from ..loading import is_bundled_model
    from ..pipelines.image_to_3d_config import preset_config

    if args.resume is not None and (args.config or args.overrides):
        raise Zero123Error("--config and --set do not apply with --resume: a resumed run keeps its saved config "
                           "(only --steps may extend it)")
    return preset_config(args.preset, args.steps, device=args.device, config_file=args.config,
                         overrides=args.overrides or (), representation=getattr(args, "representation", None),
                         bundled=is_bundled_model(args.checkpoint))


def config_sets_input_elevation(args) -> bool:
    """Whether --config or --set gives ``reference.elevation`` (then it is used instead of the estimate)."""
    from ..utils.dataclass_config import read_config_file

    if any(o.partition("=")[0].strip() == "reference.elevation" for o in (args.overrides or ())):
        return True
    data = read_config_file(args.config) if args.config else {}
    return isinstance(data.get("reference"), dict) and "elevation" in data["reference"]


def run(args) -> int:
    import sys

    from ..errors import Zero123Error
    from ..pipelines.image_to_3d import Interrupted, to3d

    renamed_elevation_error(args)
    if args.steps is not None and args.steps < 1:
        raise Zero123Error(f"--steps must be >= 1, got {args.steps}")
    config = resolved_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    foreground = foreground_kwargs(args, args.image)  # checked before the model is loaded
    try:
        result = to3d(args.image, args.checkpoint, args.out, preset=args.preset, steps=args.steps, seed=args.seed,
                      config=config if (args.config or args.overrides) else None,
                      device=args.device, dtype=args.dtype, resume=args.resume,
                      input_elevation=args.input_elevation if args.input_elevation is not None else
                      (None if config_sets_input_elevation(args) else "auto"),
                      progress=not args.no_progress, variant=args.variant,
                      original_config=args.original_config, max_memory=args.max_memory,
                      representation=None if args.resume is not None else args.representation, **foreground)
    except Interrupted as exc:
        print(interrupted_message(exc, resume_command(args.image, exc.out_dir, args)), file=sys.stderr)
        return 130
    print(f"mesh: {result.obj} ({result.num_vertices} vertices, {result.num_faces} faces)")
    print(f"      {result.glb}")
    print(f"      {result.ply}")
    print(f"video: {result.mp4}")
    print(f"       {result.gif}")
    print(f"preview: {result.preview}")
    if result.elevation_estimate is not None and args.no_progress:  # with progress, to3d() printed it at the start
        from ..elevation import describe

        print(describe(result.elevation_estimate))
    print(f"done in {result.timings.get('total_s', 0.0):.1f} s ({result.steps} steps)")
    return 0
