"""Cold start of ``zero123 views``: CLI wall time of new processes and where each one spends it, stage by stage.

Each run is a new ``python -m zero123.cli views IMAGE -c FOLDER --azimuth 90 180 270 ...`` process (cold process;
the page cache is whatever it is: warm when the folder was just written or read; ``--evict-cache`` drops the
weight files from it before every run, a cold start from disk). The stage split comes from the
run itself (``ZERO123_TIMINGS=<file>``, ``zero123.utils.timing``: interpreter start + imports, parsing, the
torch/pipeline imports, building the networks on the meta device, reading + assigning each component's weights,
the move/cast, encoding the input, the denoising loop, the VAE decode, writing the outputs); "exit" is the wall
time the parent measured minus the run's last stage end (interpreter shutdown, freeing the GPU context).

``--old-src DIR`` also runs another copy of the package (e.g. today's path, ``git archive 0a4e622 src`` extracted
under ``.bench_old_views``) by putting ``DIR`` first on ``PYTHONPATH``; such a copy may predate the stage timings,
so only its wall time is reported. Configurations x code versions alternate, ``--reps`` rounds.

    python bench/bench_views_cold.py --folder FOLDER --device cuda --reps 2 --old-src .bench_old_views/src \
        --out $OUT/views_cold.json                                       # the device run (bench/device/views_speed.sh)
    python bench/bench_views_cold.py --folder /tmp/tiny_fp16 --device cpu --steps 3 --fast-steps 2 --reps 1 \
        --out /tmp/views_cold.json                                      # CPU smoke test with a tiny folder
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def configurations(steps: int, fast_steps: int) -> dict[str, list[str]]:
    """Name -> the ``views`` options that differ (DDIM eager, and DPM-Solver++ with ``--fast``)."""
    return {f"ddim {steps}": ["--steps", str(steps)],
            f"dpmpp {fast_steps} --fast": ["--steps", str(fast_steps), "--scheduler", "dpmpp", "--fast"]}


def code_env(src: Path | None) -> dict:
    """The environment that makes ``python -m zero123.cli`` import the package under ``src`` (None: this one)."""
    env = dict(os.environ)
    if src is not None:
        ours = os.path.realpath(REPO / "src")
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) != ours]
        env["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), *rest])
    return env


def package_file(env: dict) -> str:
    """Which ``zero123/__init__.py`` a child process with ``env`` imports (checks ``--old-src`` took effect)."""
    return subprocess.run([sys.executable, "-c", "import zero123; print(zero123.__file__)"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def evict(folder: str) -> None:
    """Drop the model folder's weight files from the page cache (``POSIX_FADV_DONTNEED``: only these files, no root
    needed), so that the next run reads them from disk: a cold page cache."""
    os.sync()  # written pages are dropped only once clean
    for f in sorted(Path(folder).glob("*/*.safetensors")) + sorted(Path(folder).glob("*/*.bin")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_once(argv: list[str], env: dict, timeout: float) -> dict:
    """One cold process: ``{"wall_s", "rc", "stages" (when the code reports them), "error"}``."""
    with tempfile.TemporaryDirectory() as d:
        timings = Path(d) / "timings.json"
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv + ["--out", f"{d}/views"], env=dict(env, ZERO123_TIMINGS=str(timings)),
                               capture_output=True, text=True, timeout=timeout, cwd=REPO)
            rc, err = p.returncode, (p.stderr.strip().splitlines() or ["?"])[-1][:300]
        except subprocess.TimeoutExpired:
            rc, err = "timeout", f"stopped after {timeout:.0f} s"
        row = {"wall_s": round(time.perf_counter() - t0, 3), "rc": rc}
        if rc:
            row["error"] = err
        if timings.is_file():
            rep = json.loads(timings.read_text())
            row["stages"] = {s["stage"]: s["seconds"] for s in rep["stages"]}
            row["stages"]["exit (wall - last stage end)"] = round(row["wall_s"] - rep["total_s"], 3)
    return row


def help_wall(env: dict, command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zero123.cli", *command, "--help"], env=env, capture_output=True,
                   check=True, cwd=REPO)
    return round(time.perf_counter() - t0, 3)


def tables(res: dict) -> str:
    """Markdown: CLI wall per (code, configuration) and round; the stage split (median over rounds) per code."""
    reps = res["reps"]
    lines = ["| code | run (3 views) | " + " | ".join(f"wall round {i + 1} (s)" for i in range(reps))
             + " | median (s) |", "|---|---|" + "---|" * (reps + 1)]
    for (code, cfg), rows in res["runs"].items():
        walls = [f"{r['wall_s']:.2f}" + ("" if not r["rc"] else f" (failed: {r.get('error', '')})") for r in rows]
        ok = [r["wall_s"] for r in rows if not r["rc"]]
        med = f"{statistics.median(ok):.2f}" if ok else "-"
        lines.append(f"| {code} | {cfg} | " + " | ".join(walls + [""] * (reps - len(walls))) + f" | {med} |")
    for code in res["codes"]:
        cols = [cfg for (c, cfg) in res["runs"] if c == code]
        staged = {cfg: [r["stages"] for r in res["runs"][(code, cfg)] if "stages" in r] for cfg in cols}
        if not any(staged.values()):
            continue
        names = list(dict.fromkeys(n for cfg in cols for st in staged[cfg] for n in st))
        lines += ["", f"Stages of `{code}` (seconds, median over rounds; nested stages are part of the row above "
                  "them):", "", "| stage | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for n in names:
            cells = []
            for cfg in cols:
                vals = [st[n] for st in staged[cfg] if n in st]
                cells.append(f"{statistics.median(vals):.3f}" if vals else "")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "| `--help` wall (s) | " + " | ".join(res["help"]) + " |", "|---|" + "---|" * len(res["help"]),
              "| | " + " | ".join(f"{v:.2f}" for v in res["help"].values()) + " |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", required=True, help="a diffusers-format model folder (e.g. save_pretrained(half=True))")
    ap.add_argument("--image", default="examples/mug.png")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    ap.add_argument("--fast-steps", type=int, default=15, help="DPM-Solver++ steps of the --fast run (default 15)")
    ap.add_argument("--reps", type=int, default=2, help="rounds of every (code, configuration) (default 2)")
    ap.add_argument("--old-src", type=Path, default=None, help="another copy's src/ to run beside this one")
    ap.add_argument("--old-name", default="0a4e622 (today)")
    ap.add_argument("--extra", nargs="*", default=["--input-elevation", "5"],
                    help="more views options (default: --input-elevation 5, the photo's elevation given)")
    ap.add_argument("--evict-cache", action="store_true",
                    help="drop the folder's weight files from the page cache before every run (cold page cache)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds left for all the runs (default 300)")
    ap.add_argument("--out", type=Path, required=True, help="JSON (a .md table is written beside it)")
    args = ap.parse_args()

    deadline = time.perf_counter() + args.timeout
    codes = {"this branch": code_env(None)}
    if args.old_src is not None:
        if not (args.old_src / "zero123" / "cli.py").is_file():
            sys.exit(f"--old-src {args.old_src}: no zero123/cli.py there")
        codes = {args.old_name: code_env(args.old_src), **codes}
    where = {name: package_file(env) for name, env in codes.items()}
    print(json.dumps({"package": where}), flush=True)
    if len(set(where.values())) != len(where):
        sys.exit(f"the code versions import the same package: {where}")
    base = [sys.executable, "-m", "zero123.cli", "views", args.image, "-c", args.folder, "--device", args.device,
            "--azimuth", "90", "180", "270", *args.extra]
    cfgs = configurations(args.steps, args.fast_steps)
    res = {"device": args.device, "folder": args.folder, "reps": args.reps, "command": " ".join(sys.argv),
           "page_cache": "cold (weight files evicted before every run)" if args.evict_cache else "warm",
           "views_command": " ".join(base[1:]), "package": where, "codes": list(codes),
           "help": {**{f"{code}: zero123 --help": help_wall(env, []) for code, env in codes.items()},
                    "this branch: zero123 views --help": help_wall(codes["this branch"], ["views"])},
           "runs": {(code, cfg): [] for code in codes for cfg in cfgs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for rnd in range(args.reps):
        for cfg, opts in cfgs.items():
            for code, env in codes.items():
                left, done = deadline - time.perf_counter(), res["runs"][(code, cfg)]
                if left < (1.1 * done[-1]["wall_s"] if done else 5):  # would not finish: start no run
                    continue
                if args.evict_cache:
                    evict(args.folder)
                row = run_once(base + opts, env, left)
                res["runs"][(code, cfg)].append(row)
                print(json.dumps({"round": rnd + 1, "code": code, "run": cfg, **row}), flush=True)
                out = dict(res, runs=[{"code": c, "run": r, "rounds": rows} for (c, r), rows in res["runs"].items()])
                tmp = args.out.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(out, indent=2) + "\n")
                os.replace(tmp, args.out)
                args.out.with_suffix(".md").write_text(tables(res))
    print(tables(res))


if __name__ == "__main__":
    main()
