"""``zero123 views IMAGE --elevation .. --azimuth .. --out DIR``: novel views of one object photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import (add_model_options, add_sampling_options, atomic_save_image, image_grid, load_pipeline,
                      resolve_device_dtype)

EPILOG = """examples:
  zero123 views mug.png --azimuth 90 180 270 --out views/
  zero123 views toy_rgba.png --checkpoint stable_zero123.ckpt --elevation 20 20 --azimuth -45 45 --out out/
camera changes are relative to the input photo: elevation (degrees, up is positive), azimuth (degrees,
counter-clockwise seen from above), radius (world units, positive = further away). One value for
--elevation/--radius is repeated for every azimuth. Writes view_00.png ... and grid.png (input first)."""


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="photo of one object: RGBA with the background removed, or RGB on a plain background")
    p.add_argument("--elevation", "-e", type=float, nargs="+", default=[0.0], metavar="DEG",
                   help="elevation change(s) in degrees (default 0)")
    p.add_argument("--azimuth", "-a", type=float, nargs="+", default=[90.0, 180.0, 270.0], metavar="DEG",
                   help="azimuth change(s) in degrees (default 90 180 270)")
    p.add_argument("--radius", "-r", type=float, nargs="+", default=[0.0], metavar="D",
                   help="distance change(s), world units (default 0)")
    p.add_argument("--input-elevation", type=float, default=None, metavar="DEG",
                   help="elevation of the input photo (Stable Zero123 uses it; default 5 for stable_zero123)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true",
                   help="GPU fast path: compiled UNet + one CUDA graph per sampling loop (first call ~1 min)")
    p.add_argument("--no-recentre", action="store_true",
                   help="use the image as is (already centred on white at the model's size)")
    add_model_options(p)
    return p


def _broadcast(values, n, name):
    from ..errors import Zero123Error

    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise Zero123Error(f"--{name} has {len(values)} values for {n} views (give 1 or {n})")
    return values


def run(args) -> int:
    import torch

    from ..pipelines.zero123_pipeline import check_noise_scale
    from ..preprocessing import load_image

    load_image(args.image)  # fail fast on a bad image before loading the model
    tau = None if args.noise_scale is None else check_noise_scale(args.noise_scale)
    device, dtype = resolve_device_dtype(args)
    n = max(len(args.azimuth), len(args.elevation), len(args.radius))
    elevations = _broadcast(args.elevation, n, "elevation")
    azimuths = _broadcast(args.azimuth, n, "azimuth")
    radii = _broadcast(args.radius, n, "radius")
    pipe = load_pipeline(args.checkpoint, args.variant, dtype, device)
    pipe.camera_batch(elevations, azimuths, radii, args.input_elevation)  # validate cameras before sampling
    if tau is not None:
        pipe.noise_scale = tau
    if args.fast:
        pipe.enable_fast_path()
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    out = pipe(args.image, elevations, azimuths, radii, input_elevation=args.input_elevation,
               num_inference_steps=args.steps, guidance_scale=args.guidance_scale, eta=args.eta,
               generator=generator, recentre=not args.no_recentre, progress=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_image(out.input_image.rgba, out_dir / "input_rgba.png")
    for i, im in enumerate(out.images):
        atomic_save_image(im, out_dir / f"view_{i:02d}.png")
    atomic_save_image(image_grid([out.input_image.rgb] + out.images), out_dir / "grid.png")
    meta = {"checkpoint": args.checkpoint or "bundled", "variant": pipe.model.variant.value, "seed": args.seed,
            "steps": args.steps, "guidance_scale": args.guidance_scale, "eta": args.eta,
            "noise_scale": pipe.noise_scale,
            "views": [{"file": f"view_{i:02d}.png", "delta_elevation": e, "delta_azimuth": a, "delta_radius": r}
                      for i, (e, a, r) in enumerate(zip(elevations, azimuths, radii))]}
    (out_dir / "views.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {n} views and grid.png to {out_dir}")
    return 0
