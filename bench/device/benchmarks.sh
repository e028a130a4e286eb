#!/usr/bin/env bash
# The device-tool call behind bench/RESULTS.md's image-to-3D, text-to-3D and 1-GPU training tables (one H200):
#   bash bench/device/benchmarks.sh     (needs $OUT; wheels for packages missing there under .whl/)
# Each benchmark has its own time limit so that one slow benchmark cannot take the others' time.
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
T_TO3D=${T_TO3D:-250} T_T23D=${T_T23D:-190} T_TRAIN=${T_TRAIN:-80}
timeout "$T_TO3D" python3 bench/bench_to3d.py --warmup 2 --iters 5 --prime-steps 10 --no-progress \
  --out "$OUT/to3d_h200.json" 2>&1 | tee "$OUT/to3d.log" | grep -v Warning
timeout "$T_T23D" python3 bench/bench_text_to_3d.py --reps 2 --warmup 1 --no-offload \
  --out "$OUT/text_to_3d_h200.json" 2>&1 | tee "$OUT/text_to_3d.log" | grep -v Warning
timeout "$T_TRAIN" python3 bench/bench_train.py --models small full --steps 10 --warmup 3 --num-workers 8 \
  --out "$OUT/train_h200_1gpu.json" 2>&1 | tee "$OUT/train.log" | grep -v Warning
