"""``zero123 eval-3d --data ROOT --out DIR``: whole image-to-3D runs on held-out objects, scored against their
ground-truth meshes (Chamfer, volume IoU, F-score, novel-view PSNR/SSIM), beside an upper bound and two
trivial baselines."""

from __future__ import annotations

import argparse

from ..errors import Zero123Error
from ._common import add_model_options

EPILOG = """examples:
  zero123 eval-3d --data data/proc --out eval3d --max-objects 20            # bundled model, `auto` preset
  zero123 eval-3d --data data/proc --out eval3d --rows extrude,sphere        # baselines only (seconds)
  zero123 eval-3d --data data/proc --out eval3d --jobs 4                     # 4 processes sharing one GPU
  zero123 eval-3d --data data/proc --out eval3d --shard 1/4 --quiet          # one of 4 machines' share
  zero123 eval-3d --data data/proc --out eval3d --cached-only                # the table of what has run
Each held-out object's source mesh is rebuilt from the manifest (procedural seeds, pybullet paths, mesh files)
and normalised as render-dataset did. The input is one view rendered from it at a fixed camera (elevation 10,
azimuth 0, distance 2 by default); the dataset's stored views are the held-out cameras. Rows: model (to3d),
gt_views (reconstruction from many ground-truth renders: the 3D stage's upper bound), extrude (the input
silhouette extruded to a depth equal to its width), sphere (a sphere of the silhouette's size). Metrics follow
Zero123's appendix D: meshes normalised to the unit cube, Chamfer on 2000 points per surface, volume IoU on a
64^3 grid, F-score at 0.05 and 0.1, no alignment unless --icp. Results are cached per object under
DIR/objects/<id>/ (metrics.json, figure.png, input.png, the to3d run), so a rerun resumes; DIR/eval3d.json holds
the table's numbers. LPIPS needs local weights (--lpips-weights); none ship with zero123."""


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", "-d", required=True, metavar="ROOT", help="dataset from `zero123 render-dataset`")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="results folder (per-object cache, JSON)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="objects (default test)")
    p.add_argument("--max-objects", type=int, default=None, metavar="N", help="only the first N objects")
    p.add_argument("--objects", default=None, metavar="LIST",
                   help="comma list of object ids of the split to run, in this order (e.g. one process's part of a "
                        "list split by hand; --shard splits by id hash)")
    p.add_argument("--rows", default=",".join(_rows()), metavar="LIST",
                   help=f"comma list of rows to run (default {','.join(_rows())})")
    p.add_argument("--preset", default="auto",
                   help="to3d preset: auto (default; cpu on a CPU, bundled on a GPU for the bundled model, default "
                        "for a --checkpoint), default, fast, bundled, cpu, tiny")
    p.add_argument("--representation", choices=["nerf", "gaussians"], default="nerf",
                   help="to3d's representation in the model row (default nerf; gaussians: 3D Gaussians on "
                        "DreamGaussian's schedule); results of each go in their own --out")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of to3d steps")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML/JSON of to3d config keys on top of --preset (as `zero123 to3d --config`)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", dest="overrides",
                   help="one to3d config key on top of --preset and --config (repeatable, as `zero123 to3d --set`)")
    p.add_argument("--gt-views-steps", type=int, default=None, metavar="N",
                   help="steps of the ground-truth-views reconstruction (default 300; 100 with --preset tiny)")
    p.add_argument("--input-elevation", type=float, default=10.0, metavar="DEG",
                   help="elevation of the input camera (default 10)")
    p.add_argument("--input-azimuth", type=float, default=0.0, metavar="DEG", help="its azimuth (default 0)")
    p.add_argument("--input-distance", type=float, default=2.0, help="its distance (default 2.0)")
    p.add_argument("--max-views", type=int, default=None, metavar="N",
                   help="held-out views scored per object (default: all the dataset's)")
    p.add_argument("--points", type=int, default=2000, help="surface points per mesh for Chamfer/F-score")
    p.add_argument("--iou-resolution", type=int, default=64, help="volume IoU grid (default 64)")
    p.add_argument("--icp", action="store_true", help="rigidly align each result onto the ground truth (ICP) first")
    p.add_argument("--up", choices=["y", "z"], default="y", help="up axis of the dataset's mesh files (default y)")
    p.add_argument("--seed", type=int, default=0, help="seed of to3d, the reconstruction and the point samples")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run only shard K of N (0 <= K < N, as render-dataset --shard) of the objects, for parallel "
                        "processes; a run without --shard tabulates them")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="run the objects in N processes at once on this machine's device, dealt round-robin, "
                        "then print the table (default 1). A small model leaves a GPU mostly idle between its "
                        "kernels: with the bundled model 4 processes finish 2.5x the objects a minute of one on an "
                        "H200 (bench/RESULTS.md); on a CPU the processes only share the cores")
    p.add_argument("--cached-only", action="store_true", help="run nothing: tabulate the cached results")
    p.add_argument("--lpips-weights", default=None, metavar="PATH",
                   help="local LPIPS state dict (see `zero123 eval --help`); without it LPIPS is skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(p)
    return p


def _rows():
    from ..evaluation.eval3d_rows import ROWS  # not eval3d itself: the parser does not import torch

    return ROWS


def run(args) -> int:
    from ..evaluation.eval3d import Eval3DConfig, evaluate_3d, format_table

    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    cfg = Eval3DConfig(split=args.split, max_objects=args.max_objects, rows=rows, preset=args.preset,
                       representation=args.representation, steps=args.steps, gt_views_steps=args.gt_views_steps,
                       config_file=args.config, overrides=tuple(args.overrides or ()),
                       input_elevation=args.input_elevation,
                       input_azimuth=args.input_azimuth, input_distance=args.input_distance,
                       max_views=args.max_views, points=args.points, iou_resolution=args.iou_resolution,
                       icp=args.icp, up=args.up, seed=args.seed, shard=args.shard,
                       objects=tuple(i.strip() for i in args.objects.split(",") if i.strip()) if args.objects else None,
                       cached_only=args.cached_only).validate()
    if args.preset != "auto" or cfg.config_file or cfg.overrides:
        cfg.to3d_config(args.device)  # an unknown preset or a bad config key fails here, first
    if args.jobs < 1:
        raise Zero123Error(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs > 1 and not cfg.cached_only:
        return _run_jobs(args, cfg)
    lpips = None
    if args.lpips_weights:
        from ..evaluation.metrics import load_lpips

        lpips = load_lpips(args.lpips_weights)
    summary = evaluate_3d(args.data, args.out, cfg, checkpoint=args.checkpoint, variant=args.variant,
                          device=args.device, dtype=args.dtype, lpips=lpips, progress=not args.quiet)
    print(format_table(summary))
    if cfg.shard is None:
        print(f"wrote {args.out}/eval3d.json and per-object figures under {args.out}/objects/")
    return 0


def _run_jobs(args, cfg) -> int:
    """``--jobs N``: the selected objects dealt round-robin to N child ``zero123 eval-3d`` processes (each the same
    command with its own ``--objects``, ``OMP_NUM_THREADS`` = cores / N, its output in ``OUT/logs/``), a progress
    bar over the rows they cache, then the table of the cache. A child that fails is a one-line error naming its
    log, after the others finish (what they cached stays: a rerun resumes); Ctrl-C stops them all."""
    import os
    import subprocess
    import sys
    import time
    from dataclasses import replace
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..evaluation.eval3d import evaluate_3d, format_table, rows_done, run_key, selected_objects

    if "model" in cfg.rows and args.checkpoint:
        from ..loading import require_checkpoint

        require_checkpoint(Path(args.checkpoint).expanduser())  # before N processes each load it
    ids = selected_objects(args.data, cfg)
    jobs = min(args.jobs, len(ids))
    _, key = run_key(cfg, args.checkpoint, args.device)
    logs = Path(args.out) / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Zero123Error(f"cannot create {logs}: {exc.strerror or exc}") from None
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    children = []
    try:
        for k in range(jobs):
            cmd = [sys.executable, "-m", "zero123.cli", *args._argv, "--jobs", "1", "--objects",
                   ",".join(ids[k::jobs]), "--quiet"]
            log = logs / f"job{k}.log"
            with open(log, "wb") as fh:
                children.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), log))
        total = len(ids) * len(cfg.rows)
        start = rows_done(args.out, ids, key)
        with tqdm(total=total, initial=start, desc=f"eval-3d ({jobs} jobs)", unit="run",
                  disable=args.quiet) as bar:
            while any(p.poll() is None for p, _ in children):
                time.sleep(1.0)
                bar.update(rows_done(args.out, ids, key) - bar.n)
            bar.update(rows_done(args.out, ids, key) - bar.n)
    except BaseException:  # Ctrl-C (or anything else): no child outlives the command
        for p, _ in children:
            if p.poll() is None:
                p.terminate()
        for p, _ in children:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    failed = [(k, p.returncode, log) for k, (p, log) in enumerate(children) if p.returncode != 0]
    summary = evaluate_3d(args.data, args.out, replace(cfg, cached_only=True), checkpoint=args.checkpoint,
                          device=args.device, progress=False)
    if summary["objects_scored"] or not failed:
        print(format_table(summary))
    if failed:
        k, rc, log = failed[0]
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip().removeprefix("zero123: error: ") if lines else "no output"
        raise Zero123Error(f"eval-3d job {k} of {jobs} failed (exit {rc}): {last} (log: {log}; a rerun resumes)")
    print(f"wrote {args.out}/eval3d.json and per-object figures under {args.out}/objects/")
    return 0
