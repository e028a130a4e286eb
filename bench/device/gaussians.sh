#!/usr/bin/env bash
# Image-to-3D with 3D Gaussians (default preset: DreamGaussian's schedule) beside the NeRF `fast` preset, one H200,
# full-size random-weight Stable Zero123 (bench/bench_gaussians.py): whole-run time with mesh and texture
# (in-process timings and the `zero123 to3d` process wall), torch.cuda.max_memory_allocated.
#   bash bench/device/gaussians.sh      (needs $OUT; wheels for packages missing there under .whl/)
# Writes $OUT/gaussians_h200.json and $OUT/gaussians.log. Knobs: RUNS (gaussians:default,nerf:fast), STEPS,
# T_GS seconds (560), CLI (1: also time the CLI processes).
# CPU check with tiny settings:   OUT=/tmp/o TINY=1 bash bench/device/gaussians.sh
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
args=(--runs "${RUNS:-gaussians:default,nerf:fast}" --out "$OUT/gaussians_h200.json")
[ "${TINY:-0}" = 1 ] && args+=(--tiny)
[ "${CLI:-1}" = 1 ] && args+=(--cli)
[ -n "${STEPS:-}" ] && args+=(--steps "$STEPS")
timeout "${T_GS:-560}" python3 bench/bench_gaussians.py "${args[@]}" 2>&1 | tee "$OUT/gaussians.log" | grep -v Warning
