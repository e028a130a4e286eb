"""``zero123 render-dataset --out ROOT [--procedural N] [--meshes PATH ...] [--pybullet]``: multi-view renders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import add_number_list, allow_negative_lists

EPILOG = """examples:
  zero123 render-dataset --out data/proc --procedural 2000 --views 12 --size 256
  zero123 render-dataset --out data/mine --meshes models/ 'scans/**/*.glb' --up y
  zero123 render-dataset --out data/pb --pybullet --pybullet-limit 200 --workers 8   # needs zero123[data]
  # on N machines (a SLURM array 0..N-1), then one merge; the result equals the whole render:
  zero123 render-dataset --out data/shard_$K --procedural 800000 --shard $K/$N
  zero123 merge-datasets --out data/all data/shard_*
Layout: ROOT/manifest.json, ROOT/<object_id>/000.png (RGBA) + 000.npy (3x4 world-to-camera, see
zero123.data.layout). Objects are normalised to the unit cube; cameras orbit the origin (z up, degrees).
Bad meshes are skipped and listed under "skipped" in the manifest."""


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "-o", required=True, metavar="ROOT", help="output dataset folder")
    src = p.add_argument_group("objects (at least one)")
    src.add_argument("--procedural", type=int, default=0, metavar="N", help="N procedural objects")
    src.add_argument("--meshes", nargs="+", default=[], metavar="PATH",
                     help="mesh files (OBJ/GLB/GLTF/PLY/STL/OFF), folders (searched recursively) or globs")
    src.add_argument("--up", choices=["y", "z"], default="y",
                     help="up axis of --meshes files (default y, as glTF and Blender's OBJ export; z for z-up)")
    src.add_argument("--pybullet", action="store_true",
                     help="the object meshes shipped in the pybullet wheel (pip install 'zero123[data]')")
    src.add_argument("--pybullet-limit", type=int, default=None, metavar="N",
                     help="use only the first N pybullet meshes (named objects first, then random_urdfs)")
    r = p.add_argument_group("rendering")
    r.add_argument("--views", type=int, default=12, help="views per object (default 12)")
    r.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    r.add_argument("--fov", type=float, default=49.1, metavar="DEG", help="vertical field of view (default 49.1)")
    add_number_list(r, "--elevation-range", count=2, default=[-20.0, 70.0], metavar=("LO", "HI"),
                    help="camera elevation range in degrees, spaces or a comma (default -20 70)")
    add_number_list(r, "--distance-range", count=2, default=[1.5, 2.2], metavar=("LO", "HI"),
                    help="camera distance range; the object's largest side is 1 (default 1.5 2.2)")
    r.add_argument("--samples", type=int, default=2, help="supersampling per axis for anti-aliasing (default 2)")
    r.add_argument("--seed", type=int, default=0, help="seed for objects, cameras, lights and splits")
    r.add_argument("--test-fraction", type=float, default=0.1, help="held-out test objects (default 0.1)")
    r.add_argument("--val-fraction", type=float, default=0.0, help="validation objects (default 0)")
    r.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    r.add_argument("--shard", default=None, metavar="K/N",
                   help="render only shard K of N (0 <= K < N; objects split by a hash of their id; splits as in "
                        "the whole render); join the N shard folders with `zero123 merge-datasets`")
    r.add_argument("--overwrite", action="store_true", help="replace an existing dataset in ROOT")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    allow_negative_lists(p)
    return p


def run(args) -> int:
    from ..data.objects import mesh_file_sources, procedural_sources, pybullet_sources
    from ..data.render import RENDER_STATS_NAME, DatasetRenderSettings, render_dataset
    from ..data.shards import Shard
    from ..errors import Zero123Error

    if args.procedural < 0:
        raise Zero123Error(f"--procedural must be >= 0, got {args.procedural}")
    if args.workers is not None and args.workers < 1:
        raise Zero123Error(f"--workers must be >= 1, got {args.workers}")
    from ..utils.outputs import DATASET_OUTPUTS, check_output_dir

    check_output_dir(args.out, DATASET_OUTPUTS, keep=True)  # a file / unwritable --out, before any rendering
    shard = Shard.parse(args.shard) if args.shard is not None else None
    sources = procedural_sources(args.procedural, seed=args.seed)
    if args.meshes:
        sources += mesh_file_sources(args.meshes, up=args.up)
    if args.pybullet:
        sources += pybullet_sources(limit=args.pybullet_limit)
    if not sources:
        raise Zero123Error("no objects to render: give --procedural N, --meshes PATH or --pybullet")
    settings = DatasetRenderSettings(image_size=args.size, views_per_object=args.views, fov_deg=args.fov,
                                     elevation_range=tuple(args.elevation_range),
                                     distance_range=tuple(args.distance_range), samples=args.samples,
                                     seed=args.seed, test_fraction=args.test_fraction,
                                     val_fraction=args.val_fraction)
    manifest = render_dataset(sources, args.out, settings, workers=args.workers, progress=not args.quiet,
                              overwrite=args.overwrite, shard=shard)
    counts = {s: len(manifest.objects_in(s)) for s in ("train", "val", "test")}
    st = json.loads((Path(args.out) / RENDER_STATS_NAME).read_text())
    of = f" (shard {shard} of {len(sources)} objects)" if shard is not None else ""
    print(f"rendered {len(manifest.objects)} objects{of} x {settings.views_per_object} views "
          f"({counts['train']} train, {counts['val']} val, {counts['test']} test) into {args.out} "
          f"in {st.get('elapsed_s', 0):.1f}s ({st.get('views_per_s', 0):.1f} views/s, {st.get('workers')} workers)")
    if manifest.skipped:
        print(f"skipped {len(manifest.skipped)} input(s):")
        for s in manifest.skipped[:20]:
            print(f"  {s.path}: {s.reason}")
        if len(manifest.skipped) > 20:
            print(f"  ... ({len(manifest.skipped) - 20} more in manifest.json)")
    return 0
