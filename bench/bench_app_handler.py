"""The web app's views click without the browser or gradio: ``Zero123App.views`` (what the click runs) beside the
pipeline call alone for the same 4 views, in one process, so the app's own overhead is the difference.

    python bench/bench_app_handler.py --steps 50 --reps 2 --out bench/results/app_handler_cpu.json
    python bench/bench_app_handler.py --reps 2    # the app's default sampler and steps (AppConfig.sampling())
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--device", default=None)
    ap.add_argument("--image", type=Path, default=REPO / "examples" / "mug.png")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="default: the app's (AppConfig.sampling())")
    ap.add_argument("--scheduler", default=None, help="default: the app's (AppConfig.sampling())")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    from zero123.app import AppConfig, Zero123App

    app = Zero123App(AppConfig(checkpoint=args.checkpoint, device=args.device, work_dir=Path(tempfile.mkdtemp()),
                               scheduler=args.scheduler, steps=args.steps))
    args.scheduler, args.steps = app.config.sampling()
    app.prepare("bench", str(args.image))
    azimuths = [360.0 * (i + 1) / (args.views + 1) for i in range(args.views)]
    zeros = [0.0] * args.views
    pipe = app.pipeline

    def handler():
        app.views("bench", zeros, azimuths)  # the click: the app's default sampler and steps

    def pipeline():
        pipe(str(app.input_path("bench")), zeros, azimuths, zeros, num_inference_steps=args.steps, progress=False,
             generator=torch.Generator().manual_seed(0), scheduler=args.scheduler)

    res = {"views": args.views, "scheduler": args.scheduler, "steps": args.steps,
           "torch_threads": torch.get_num_threads()}
    for name, fn in (("handler", handler), ("pipeline", pipeline)):
        fn()  # warm-up
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        res[f"{name}_s"] = [round(x, 3) for x in times]
        res[f"{name}_median_s"] = round(statistics.median(times), 3)
        print(f"{name}: median {res[f'{name}_median_s']} s over {args.reps}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
