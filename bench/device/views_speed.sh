#!/usr/bin/env bash
# The device-tool call behind bench/RESULTS.md's "Novel views: cold start and samplers" rows (one H200, issue 24):
#   bash bench/device/views_speed.sh        (needs $OUT; from the repo root; fits one 560-s call)
# 1. a full-size random-weight Stable Zero123 (speed does not depend on weight values) written as an fp16 diffusers
#    folder by save_pretrained(half=True), the writer `zero123 convert --half` uses;
# 2. the cold CLI, `zero123 views` with 3 views from that folder, each run a new process: "cold process, warm page
#    cache" (the folder was just written; dropping the page cache is not possible here), side by side: today's
#    default (DDIM 50, input elevation estimated), the same with --input-elevation given, --fast, the cheaper
#    sampler (--scheduler dpmpp --steps $SAMPLER_STEPS), and --compile with an empty then a warm on-disk cache;
#    plus the bare imports (`import zero123.cli` + build_parser, then diffusers / transformers);
# 3. in-process 4 views x 50 steps (CUDA events, warm-up, medians): bench/bench_novel_views.py with today's fast
#    path (compile + CUDA graph), the no-compile --fast path, and the cheaper sampler beside them.
# Writes $OUT/views_speed.json (after every run) + $OUT/views_speed.md (table), $OUT/novel_views_h200.json, logs.
# VIEWS_TINY=1 runs the same on CPU with the tiny config and tiny step counts (a smoke test).
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
FOLDER=${FOLDER:-/tmp/zero123_views_sz123_fp16}
if [ "${VIEWS_TINY:-0}" = 1 ]; then CFG=tiny_config DEV=cpu STEPS=${STEPS:-4} SAMPLER_STEPS=${SAMPLER_STEPS:-3}
  NV="--tiny --steps $STEPS --reps 1 --unet-reps 1"; else
  CFG=full_size_config DEV=cuda STEPS=${STEPS:-50} SAMPLER_STEPS=${SAMPLER_STEPS:-15}
  NV="--compile --steps $STEPS --reps 10 --unet-reps 20 --skip bf16 compile(UNet)"; fi
python3 - "$FOLDER" "$CFG" "$DEV" <<'PY' || exit 1
import sys, torch
from zero123.loading import save_pretrained
from zero123.models import configs
folder, cfg, dev = sys.argv[1:]
with torch.device(dev):
    model = getattr(configs, cfg)("stable_zero123").build(seed=0, device=dev, dtype=torch.float32).eval()
print("random-weight model, fp16 folder:", save_pretrained(model, folder, half=True), flush=True)
PY
export ZERO123_VIEWS_DEV=$DEV ZERO123_VIEWS_FOLDER=$FOLDER ZERO123_VIEWS_STEPS=$STEPS
export ZERO123_VIEWS_SAMPLER_STEPS=$SAMPLER_STEPS
python3 - "$OUT" "${T_CLI:-330}" <<'PY' 2>&1 | tee "$OUT/views_cli.log" | grep -v Warning
import json, os, subprocess, sys, tempfile, time
out, deadline = sys.argv[1], time.perf_counter() + float(sys.argv[2])  # each run gets what is left of T_CLI
dev, folder = os.environ["ZERO123_VIEWS_DEV"], os.environ["ZERO123_VIEWS_FOLDER"]
steps, fewer = os.environ["ZERO123_VIEWS_STEPS"], os.environ["ZERO123_VIEWS_SAMPLER_STEPS"]
cache = tempfile.mkdtemp(prefix="zero123-inductor-")  # an empty compile cache for the first --compile run
py = [sys.executable]
views = py + ["-m", "zero123.cli", "views", "examples/mug.png", "-c", folder, "--device", dev, "--azimuth", "90",
              "180", "270", "--steps", steps]
runs = [
    ("import zero123.cli + build_parser", py + ["-c", "import zero123.cli as c; c.build_parser()"], {}),
    ("import zero123.cli + diffusers + transformers", py + ["-c", "import zero123.cli as c; c.build_parser(); "
                                                             "import diffusers, transformers; "
                                                             "from diffusers import UNet2DConditionModel"], {}),
    (f"views ddim {steps} (today's default: input elevation estimated)", views, {}),
    (f"views ddim {steps}, --input-elevation 5", views + ["--input-elevation", "5"], {}),
    (f"views ddim {steps} --fast", views + ["--fast"], {}),
    (f"views dpmpp {fewer}", views[:-1] + [fewer, "--scheduler", "dpmpp"], {}),
    (f"views dpmpp {fewer} --fast --input-elevation 5", views[:-1] + [fewer, "--scheduler", "dpmpp", "--fast",
                                                                      "--input-elevation", "5"], {}),
    (f"views ddim {steps} --compile, empty compile cache", views + ["--compile"], {"TORCHINDUCTOR_CACHE_DIR": cache}),
    (f"views ddim {steps} --compile, warm compile cache", views + ["--compile"], {"TORCHINDUCTOR_CACHE_DIR": cache}),
]
res = {"device": dev, "folder": folder, "page_cache": "cold process, warm page cache (folder just written)",
       "rows": []}
for name, cmd, env in runs:
    with tempfile.TemporaryDirectory() as d:
        argv = cmd + (["--out", f"{d}/v"] if "views" in cmd else [])
        t = time.perf_counter()
        try:
            p = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True, text=True,
                               timeout=max(1.0, deadline - t))
            rc, err = p.returncode, (p.stderr.strip().splitlines() or ["?"])[-1][:300]
        except subprocess.TimeoutExpired:  # the child is killed: nothing keeps running beside what follows
            rc, err = "timeout", "stopped at the T_CLI limit"
        wall = time.perf_counter() - t
    row = {"run": name, "wall_s": round(wall, 2), "rc": rc}
    if rc:
        row["error"] = err
    res["rows"].append(row)
    print(json.dumps(row), flush=True)
    tmp = os.path.join(out, "views_speed.json.tmp")
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2)
    os.replace(tmp, os.path.join(out, "views_speed.json"))
    with open(os.path.join(out, "views_speed.md"), "w") as f:  # the table so far, after every run too
        f.write("| run (3 views, fp16 folder, cold process, warm page cache) | wall (s) |\n|---|---|\n")
        for r in res["rows"]:
            f.write(f"| {r['run']} | {r['wall_s']:.2f}{' (failed: ' + r['error'] + ')' if r['rc'] else ''} |\n")
    if rc == "timeout":
        break
print(open(os.path.join(out, "views_speed.md")).read())
PY
# shellcheck disable=SC2086
LEFT=$((550 - SECONDS)); [ "$LEFT" -lt 60 ] && LEFT=60
timeout "${T_INPROC:-$LEFT}" python3 bench/bench_novel_views.py $NV --sampler dpmpp \
  --sampler-steps "$SAMPLER_STEPS" --out "$OUT/novel_views_h200.json" 2>&1 | tee "$OUT/novel_views.log" \
  | grep -v Warning
