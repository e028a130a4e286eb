"""``zero123 views IMAGE --elevation .. --azimuth .. --out DIR``: novel views of one object photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import (add_foreground_options, add_model_options, add_number_list, add_sampling_options,
                      allow_negative_lists, atomic_save_image, foreground_kwargs, load_pipeline, resolve_device_dtype,
                      save_image_grid)

EPILOG = """examples:
  zero123 views mug.png --azimuth 90 180 270 --out views/
  zero123 views toy_rgba.png --checkpoint stable_zero123.ckpt --input-elevation 10 --elevation 20 --azimuth -45,45 --out out/
camera changes are relative to the input photo: elevation (degrees, up is positive), azimuth (degrees,
counter-clockwise seen from above), radius (world units, positive = further away). --elevation is such a
change; the photo's own elevation is --input-elevation, as in to3d and text-to-3d. Lists take spaces or commas
(--azimuth 90 180, --azimuth 90,180). One value for --elevation/--radius is repeated for every azimuth.
Writes input_rgba.png, mask.png (the foreground found in the photo: see --segmentation, --mask,
--matting-model), view_00.png ..., grid.png (input first) and views.json; an earlier views output in DIR
is replaced whole, a folder holding other files is refused."""


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="photo of one object: RGBA with the background removed, or any RGB photo (its "
                   "background is removed: see --segmentation)")
    add_number_list(p, "--elevation", "-e", default=[0.0], metavar="DEG",
                    help="elevation change(s) in degrees, relative to the photo (default 0); the photo's own "
                         "elevation is --input-elevation")
    add_number_list(p, "--azimuth", "-a", default=[90.0, 180.0, 270.0], metavar="DEG",
                    help="azimuth change(s) in degrees, spaces or commas (default 90 180 270)")
    add_number_list(p, "--radius", "-r", default=[0.0], metavar="D", help="distance change(s), world units (default 0)")
    p.add_argument("--input-elevation", type=float, default=None, metavar="DEG",
                   help="elevation of the input photo (Stable Zero123 uses it; default: estimated from the photo "
                        "for stable_zero123, see zero123.elevation)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true",
                   help="GPU: the exact speed-ups that cost nothing to set up (single-token cross-attention "
                        "shortcut, fused QKV projections, channels-last); no compilation, and no CUDA graph for a "
                        "one-off call (a capture costs about two sampling loops: it pays only for a batch shape "
                        "sampled 3+ times: 17+ views, sampled 8 at a time). See also --compile")
    p.add_argument("--compile", action="store_true",
                   help="GPU: --fast and also torch.compile the UNet and VAE decoder, cached on disk "
                        "(~/.cache/zero123/torchinductor or $TORCHINDUCTOR_CACHE_DIR): about a minute the first "
                        "time, then seconds; pays for many views, or in a warm process (zero123 app --fast)")
    p.add_argument("--no-recentre", action="store_true",
                   help="use the image as is (already centred on white at the model's size)")
    add_foreground_options(p)
    add_model_options(p)
    allow_negative_lists(p)
    return p


def _broadcast(values, n, name):
    from ..errors import Zero123Error

    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise Zero123Error(f"--{name} has {len(values)} values for {n} views (give 1 or {n})")
    return values


def run(args) -> int:
    from ..utils.timing import stage

    with stage("imports (torch, pipeline)"):
        import torch

        from ..pipelines.zero123_pipeline import check_noise_scale
        from ..schedulers import make_sampler
        from ..preprocessing import load_image
        from ..utils.atomic import atomic_folder
        from ..utils.outputs import VIEWS_OUTPUTS, check_output_dir

    with stage("check inputs (output folder, image, foreground options, device)"):
        check_output_dir(args.out, VIEWS_OUTPUTS)  # fail fast on a bad --out, image, mask or matting model
        image = load_image(args.image)  # before loading the model
        foreground = foreground_kwargs(args, image) if not args.no_recentre else {}
        tau = None if args.noise_scale is None else check_noise_scale(args.noise_scale)
        make_sampler(args.scheduler, args.steps, args.eta)  # one-line error for bad steps / eta before loading
        device, dtype = resolve_device_dtype(args)
    n = max(len(args.azimuth), len(args.elevation), len(args.radius))
    elevations = _broadcast(args.elevation, n, "elevation")
    azimuths = _broadcast(args.azimuth, n, "azimuth")
    radii = _broadcast(args.radius, n, "radius")
    with stage("load model"):
        pipe = load_pipeline(args.checkpoint, args.variant, dtype, device, weights_variant=args.weights_variant,
                             original_config=args.original_config)
    input_elevation, estimate, prepared = args.input_elevation, None, None
    if input_elevation is None and pipe.needs_input_elevation():
        from ..elevation import describe, estimate_input_elevation

        with stage("estimate input elevation"):
            prepared = pipe.prepare_image(image, recentre=not args.no_recentre, **foreground)
            estimate = estimate_input_elevation(pipe, prepared, seed=args.seed)
        input_elevation = estimate.degrees
        print(describe(estimate))
    pipe.camera_batch(elevations, azimuths, radii, input_elevation)  # validate cameras before sampling
    if tau is not None:
        pipe.noise_scale = tau
    pipe.timestep_spacing, pipe.scheduler = args.timestep_spacing, args.scheduler
    if args.fast or args.compile:
        pipe.enable_fast_path(compile=args.compile, capture_after=2)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    with stage("sample views"):
        out = pipe(image if prepared is None else prepared, elevations, azimuths, radii,
                   input_elevation=input_elevation, num_inference_steps=args.steps,
                   guidance_scale=args.guidance_scale, eta=args.eta, generator=generator,
                   recentre=not args.no_recentre, progress=True, **foreground)
    out_dir = Path(args.out).expanduser()
    meta = {"checkpoint": args.checkpoint or "bundled", "variant": pipe.model.variant.value, "seed": args.seed,
            "scheduler": pipe.scheduler, "steps": args.steps, "guidance_scale": args.guidance_scale, "eta": args.eta,
            "noise_scale": pipe.noise_scale, "timestep_spacing": pipe.timestep_spacing,
            "input_elevation": input_elevation,
            "input_elevation_source": "estimated" if estimate else ("given" if args.input_elevation is not None
                                                                   else "unused by this variant"),
            "elevation_estimate": estimate.as_dict() if estimate else None,
            "views": [{"file": f"view_{i:02d}.png", "delta_elevation": e, "delta_azimuth": a, "delta_radius": r}
                      for i, (e, a, r) in enumerate(zip(elevations, azimuths, radii))]}
    with stage("write outputs"), atomic_folder(out_dir) as tmp:  # an earlier output is replaced whole
        atomic_save_image(out.input_image.rgba, tmp / "input_rgba.png")
        if out.input_image.mask is not None:
            atomic_save_image(out.input_image.mask_image(), tmp / "mask.png")
        for i, im in enumerate(out.images):
            atomic_save_image(im, tmp / f"view_{i:02d}.png")
        save_image_grid([out.input_image.rgb] + out.images, tmp / "grid.png")
        (tmp / "views.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {n} views and grid.png to {out_dir}")
    return 0
