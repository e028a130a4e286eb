"""Image-to-3D step time on a CPU, two trees of zero123 in ONE process, steps interleaved (issue 24): robust to a
shared, loaded machine, where two runs one after the other measure the load, not the code.

The tree of ``--old-src`` (e.g. ``.bench_old24/src``: ``git archive 0a4e622 src``) is imported under another package
name (its imports are relative), this checkout as ``zero123``; both build a trainer of the same preset (default
``cpu``) on the same bundled model and input, primed ``--prime-steps`` steps; then, at the first step of each stage,
for ``--iters`` rounds, each tree takes one step from its saved state in turn. Reported per stage: the median wall
and process-CPU seconds of a step of each tree and their ratio, and the sample counts (equal when behaviour is)::

    python bench/bench_to3d_cpu_ab.py --old-src .bench_old24/src --out bench/results/to3d_cpu_ab.json
    OMP_NUM_THREADS=1 python bench/bench_to3d_cpu_ab.py --old-src .bench_old24/src --field-only   # the field alone
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_tree(src: Path, name: str):
    """The package ``zero123`` of the source folder ``src`` imported as ``name``."""
    pkg = src / "zero123"
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_trainer(name: str, model, image, preset: str, seed: int = 0):
    """A trainer of package ``name`` (``zero123`` or an imported tree) for ``preset`` on ``model``."""
    import importlib

    from dataclasses import fields

    from zero123.pipelines.image_to_3d_config import preset_config

    data = preset_config(preset).to_dict()          # this checkout's preset files (a tree finds them by name)
    config_mod = importlib.import_module(f"{name}.pipelines.image_to_3d_config")
    known = {f.name for f in fields(config_mod.FieldConfig)}
    data["field"] = {k: v for k, v in data["field"].items() if k in known}   # keys added since (defaults)
    cfg = config_mod.ImageTo3DConfig.from_dict(data)
    pipe = importlib.import_module(f"{name}.pipelines.image_to_3d")
    rep = importlib.import_module(f"{name}.representations").build_representation(cfg, model.device, seed=seed)
    ref = pipe.prepare_reference(image, cfg.reference.image_size, model.image_size)
    guidance = importlib.import_module(f"{name}.guidance").build_guidance(cfg, model, ref)
    return pipe.ImageTo3DTrainer(rep, guidance, ref, cfg, seed=seed), cfg


def field_ab(preset: str, n: int, iters: int) -> list:
    """The field alone, both trees interleaved: fwd + bwd with albedo and analytic normals (a render's with-gradient
    pass) and a no-grad density (the sampling pass) of ``n`` points, the same parameters; median seconds."""
    import importlib

    import torch

    from zero123.pipelines.image_to_3d_config import preset_config

    cfg = preset_config(preset).field
    x = (torch.rand(n, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.8 * cfg.radius
    fields = {}
    for label, name in (("old", "zero123_old"), ("new", "zero123")):
        mod = importlib.import_module(f"{name}.fields.nerf")
        known = {k: v for k, v in cfg.to_dict().items() if k in mod.FieldConfig.__dataclass_fields__}
        fields[label] = mod.NeRFField(mod.FieldConfig(**known))
    fields["new"].load_state_dict(fields["old"].state_dict())

    def grad_pass(f):
        out = f(x, with_albedo=True, with_normal=True)
        (out.density.mean() + out.albedo.mean() + out.normal.mean()).backward()

    def density_pass(f):
        with torch.no_grad():
            f.density(x)

    rows = []
    for what, fn in (("fwd+bwd with normals", grad_pass), ("no-grad density", density_pass)):
        t = {k: [] for k in fields}
        for i in range(iters + 1):
            for label, f in fields.items():
                w = time.perf_counter()
                fn(f)
                if i:
                    t[label].append(time.perf_counter() - w)
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append({"pass": what, "points": n, "median_s": med, "new_over_old": med["new"] / med["old"]})
        print(f"field ({preset}) {what}, {n} points: old {1000 * med['old']:.1f} ms, new {1000 * med['new']:.1f} ms "
              f"(x{med['new'] / med['old']:.2f})", flush=True)
    return rows


def _write(path, doc: dict) -> int:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-src", required=True, help="the other tree's src/ folder")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--image", default=str(ROOT / "examples" / "mug.png"))
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prime-steps", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--field-only", action="store_true", help="time the field alone (field_ab), not steps")
    p.add_argument("--points", type=int, default=40000, help="points of --field-only")
    args = p.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    import zero123
    from zero123.pipelines.image_to_3d import load_guidance_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_to3d import stage_steps

    import_tree(Path(args.old_src).resolve(), "zero123_old")
    if args.field_only:
        doc = {"preset": args.preset, "old_src": args.old_src, "threads": torch.get_num_threads(),
               "field": field_ab(args.preset, args.points, max(args.iters, 5))}
        return _write(args.out, doc)
    model = load_guidance_model(ROOT / "src" / "zero123" / "assets" / "default_model", device="cpu")
    image = np.array(Image.open(args.image))
    trees = {}
    for label, name in (("old", "zero123_old"), ("new", "zero123")):
        trainer, cfg = make_trainer(name, model, image, args.preset)
        for _ in range(args.prime_steps):
            trainer.train_step()
        trees[label] = (trainer, copy.deepcopy(trainer.state_dict()))
    rows = []
    for stage, step in enumerate(stage_steps(cfg)):
        times = {k: {"wall": [], "cpu": []} for k in trees}
        samples = {}
        for i in range(args.warmup + args.iters):
            for label, (trainer, state) in trees.items():
                trainer.load_state_dict(copy.deepcopy(state))
                trainer.step = step
                w, c = time.perf_counter(), time.process_time()
                trainer.train_step()
                w, c = time.perf_counter() - w, time.process_time() - c
                samples[label] = trainer.last_losses.get("samples")
                if i >= args.warmup:
                    times[label]["wall"].append(w)
                    times[label]["cpu"].append(c)
        med = {k: {m: statistics.median(v[m]) for m in v} for k, v in times.items()}
        row = {"stage": stage, "step": step, "samples": samples, "median_s": med,
               "new_over_old_wall": med["new"]["wall"] / med["old"]["wall"],
               "new_over_old_cpu": med["new"]["cpu"] / med["old"]["cpu"]}
        rows.append(row)
        print(f"{args.preset} stage {stage}: old {med['old']['wall']:.3f} s wall / {med['old']['cpu']:.3f} s cpu, "
              f"new {med['new']['wall']:.3f} / {med['new']['cpu']:.3f} (x{row['new_over_old_wall']:.2f} wall, "
              f"x{row['new_over_old_cpu']:.2f} cpu), samples {samples}", flush=True)
    doc = {"preset": args.preset, "old_src": args.old_src, "new_src": str(Path(zero123.__file__).parent),
           "threads": torch.get_num_threads(), "iters": args.iters, "warmup": args.warmup,
           "prime_steps": args.prime_steps, "stages": rows}
    return _write(args.out, doc)


if __name__ == "__main__":
    sys.exit(main())
