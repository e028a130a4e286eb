#!/usr/bin/env bash
# The device-tool call behind bench/RESULTS.md's "Novel views cold start" rows (one H200, issue 24), in ONE call of
# at most 250 s:
#   bash bench/device/views_speed.sh        (needs $OUT; from the repo root; carry .bench_old_views)
# 1. a full-size random-weight Stable Zero123 (speed does not depend on weight values) written as an fp16 diffusers
#    folder by save_pretrained(half=True), the writer `zero123 convert --half` uses (the page cache is then warm);
# 2. the cold CLI (bench/bench_views_cold.py): `zero123 views examples/mug.png -c FOLDER --device cuda --azimuth 90
#    180 270 --input-elevation 5`, each run a new process, for (a) today's code, commit 0a4e622, extracted under
#    .bench_old_views/ (`mkdir -p .bench_old_views && git archive 0a4e622 src ":!src/zero123/assets/default_model"
#    | tar -x -C .bench_old_views`; made here when git can) and (b) this checkout; DDIM $STEPS and DPM-Solver++
#    $FAST_STEPS --fast, alternating, $REPS rounds; with (b)'s stage split (ZERO123_TIMINGS) and `zero123 --help`;
# 3. in-process 4 views x 50 steps (CUDA events, warm-up, medians): bench/bench_novel_views.py without compile
#    (fp16 + channels-last + 1-token attention, + CUDA graph, + fused QKV = --fast), DDIM 50 and DPM-Solver++ 15;
#    VIEWS_COMPILE=1 adds the torch.compile rows (a minute or more: not in the 250 s).
# Order: 1, 3 (at most T_INPROC = 65 s), then 2 with what is left of T_ALL = 245 s (a run that would not finish in
# it is not started; the rounds alternate, so a short call still pairs the versions).
# Writes $OUT/views_cold.json + .md (tables), $OUT/novel_views_h200.json, logs.
# VIEWS_EVICT=1: the cold CLI runs from a cold page cache (the weight files dropped from it before every run:
# POSIX_FADV_DONTNEED on those files only, no root needed).
# VIEWS_TINY=1 runs the same on CPU with the tiny config and tiny step counts (a smoke test).
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
FOLDER=${FOLDER:-/tmp/zero123_views_sz123_fp16}
T_ALL=${T_ALL:-245} T_FOLDER=${T_FOLDER:-50}
if [ "${VIEWS_TINY:-0}" = 1 ]; then CFG=tiny_config DEV=cpu STEPS=${STEPS:-3} FAST_STEPS=${FAST_STEPS:-2}
  REPS=${REPS:-1} NV=(--tiny --steps 4 --reps 1 --unet-reps 1); else
  CFG=full_size_config DEV=cuda STEPS=${STEPS:-50} FAST_STEPS=${FAST_STEPS:-15} REPS=${REPS:-2}
  NV=(--steps 50 --reps 3 --unet-reps 5 --skip naive "(SDPA)" bf16 "compile(UNet) +"); fi
[ "${VIEWS_COMPILE:-0}" = 1 ] && NV+=(--compile)
if [ ! -f .bench_old_views/src/zero123/cli.py ] && git rev-parse -q --verify 0a4e622^{commit} >/dev/null 2>&1; then
  mkdir -p .bench_old_views && git archive 0a4e622 src ":!src/zero123/assets/default_model" | tar -x -C .bench_old_views
fi
OLD=(); if [ -f .bench_old_views/src/zero123/cli.py ]; then OLD=(--old-src .bench_old_views/src)
  else echo "no .bench_old_views/src: today's path (0a4e622) is not measured beside this one"; fi
python3 -m compileall -q src .bench_old_views/src 2>/dev/null  # both versions' .pyc exist before any timed run
timeout "$T_FOLDER" python3 - "$FOLDER" "$CFG" "$DEV" <<'PY' 2>&1 | grep -v -i "warn\|kept in float32" || exit 1
import sys, torch
from zero123.loading import save_pretrained
from zero123.models import configs
folder, cfg, dev = sys.argv[1:]
with torch.device(dev):
    model = getattr(configs, cfg)("stable_zero123").build(seed=0, device=dev, dtype=torch.float32).eval()
print("random-weight model, fp16 folder:", save_pretrained(model, folder, half=True), flush=True)
# the CUDA libraries the runs load (cuBLAS, cuDNN) read once here, so that no timed run pays their page-in alone
x = torch.randn(2, 8, 32, 32, device=dev, dtype=torch.float16 if dev == "cuda" else torch.float32)
torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, device=dev, dtype=x.dtype)).sum().item()
(x.flatten(1) @ x.flatten(1).T).sum().item()
PY
echo "in-process 4 views x 50 steps (at most ${T_INPROC:=65} s)"
timeout "$T_INPROC" python3 bench/bench_novel_views.py "${NV[@]}" --sampler dpmpp \
  --sampler-steps 15 --out "$OUT/novel_views_h200.json" 2>&1 | tee "$OUT/novel_views.log" | grep -v Warning
LEFT=$((T_ALL - SECONDS)); [ "$LEFT" -lt 30 ] && LEFT=30
echo "cold CLI: ${LEFT} s left"
EVICT=(); [ "${VIEWS_EVICT:-0}" = 1 ] && EVICT=(--evict-cache)
timeout "$LEFT" python3 bench/bench_views_cold.py --folder "$FOLDER" --device "$DEV" --steps "$STEPS" \
  --fast-steps "$FAST_STEPS" --reps "$REPS" "${OLD[@]}" "${EVICT[@]}" --timeout $((LEFT - 5)) --out "$OUT/views_cold.json" \
  2>&1 | tee "$OUT/views_cold.log" | grep -v Warning
echo "views_speed.sh: ${SECONDS} s"
