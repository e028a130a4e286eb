#!/usr/bin/env bash
# The device-tool call behind bench/RESULTS.md's multi-GPU training table (issue 5), on a kind with N >= 2 GPUs
# (NVLink multicast off: env.sh):
#   bash bench/device/multi_gpu.sh           (needs $OUT; wheels for packages missing there under .whl/)
# 1. throughput: `accelerate launch --multi_gpu` of bench/bench_train.py on all N GPUs, which times the N-process
#    DDP step and, in the same run, rank 0 alone without DDP (the 1-GPU baseline, same per-GPU batch): small model
#    at batch 64 and 512 per GPU (the latter also with cached latents), full-size Stable Zero123 at batch 24;
# 2. loss curves: the same short training run (small model, synthetic data, global batch 64) on 1 GPU and on N,
#    then bench_train.py --compare;
# 3. TRAIN_DEADLINE>0: the rest of the call (until TRAIN_DEADLINE seconds) continues the bundled default model on
#    all N GPUs (tools/default_model/device_finetune.sh with NPROC=N).
# Each step has its own time limit and writes its JSON to $OUT as soon as it ends.
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
SECONDS=0
N=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -4
LAUNCH="python3 -m accelerate.commands.launch --multi_gpu --num_processes $N --num_machines 1"
T_BENCH=${T_BENCH:-200} T_CURVE=${T_CURVE:-100} CURVE_STEPS=${CURVE_STEPS:-150}
TRAIN_DEADLINE=${TRAIN_DEADLINE:-0}
quiet() { grep -v 'Warning\|warn(' ; }

timeout "$T_BENCH" $LAUNCH bench/bench_train.py --models small full --steps 10 --warmup 3 --num-workers 4 \
  --out "$OUT/train_${N}gpu.json" 2>&1 | tee "$OUT/train_${N}gpu.log" | quiet
timeout "$T_BENCH" $LAUNCH bench/bench_train.py --models small --batch-size 512 --steps 10 --warmup 3 \
  --num-workers 4 --cache-latents --out "$OUT/train_${N}gpu_small_b512.json" 2>&1 \
  | tee "$OUT/train_${N}gpu_small_b512.log" | quiet
echo "throughput done at ${SECONDS}s"

curve="--loss-curve --model small --global-batch 64 --steps $CURVE_STEPS --num-workers 4 --work-dir /tmp/curves"
# shellcheck disable=SC2086
timeout "$T_CURVE" python3 bench/bench_train.py $curve --out "$OUT/curve_1gpu.json" 2>&1 | quiet | tail -2
# shellcheck disable=SC2086
timeout "$T_CURVE" $LAUNCH bench/bench_train.py $curve --out "$OUT/curve_${N}gpu.json" 2>&1 | quiet | tail -2
python3 bench/bench_train.py --compare "$OUT/curve_1gpu.json" "$OUT/curve_${N}gpu.json" \
  --out "$OUT/curve_compare.json" | tail -12
echo "loss curves done at ${SECONDS}s"

if [ "$TRAIN_DEADLINE" -gt 0 ]; then
  NPROC=$N DEADLINE=$((TRAIN_DEADLINE - SECONDS)) bash tools/default_model/device_finetune.sh
fi
echo "total ${SECONDS}s"
