#!/usr/bin/env bash
# The device-tool call behind bench/RESULTS.md's image-to-3D, text-to-3D and 1-GPU training tables (one H200):
#   bash bench/device/benchmarks.sh     (needs $OUT; wheels for packages missing there under .whl/)
# Each benchmark has its own time limit so that one slow benchmark cannot take the others' time.
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
# image-to-3D took 446 s and text-to-3D about 160 s on an H200: run them in separate calls (BENCHES=to3d / t23d / train)
T_TO3D=${T_TO3D:-470} T_T23D=${T_T23D:-300} T_TRAIN=${T_TRAIN:-80} BENCHES=${BENCHES:-"to3d t23d train"}
case " $BENCHES " in *" to3d "*)
timeout "$T_TO3D" python3 bench/bench_to3d.py --profile --warmup 1 --iters 3 --prime-steps 3 --no-progress \
  --dump-stacks 120 --out "$OUT/to3d_h200.json" 2>&1 | tee "$OUT/to3d.log" | grep -v Warning ;; esac
case " $BENCHES " in *" t23d "*)
timeout "$T_T23D" python3 bench/bench_text_to_3d.py --reps 2 --warmup 1 --no-offload \
  --out "$OUT/text_to_3d_h200.json" 2>&1 | tee "$OUT/text_to_3d.log" | grep -v Warning ;; esac
case " $BENCHES " in *" train "*)
timeout "$T_TRAIN" python3 bench/bench_train.py --models small full --steps 10 --warmup 3 --num-workers 8 \
  --out "$OUT/train_h200_1gpu.json" 2>&1 | tee "$OUT/train.log" | grep -v Warning ;; esac
