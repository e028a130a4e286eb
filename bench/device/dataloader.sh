#!/usr/bin/env bash
# Data loading at scale (issue 21): the training data loader's pairs/s from a folder of 256 px PNG renders with
# 0..16 workers on the H200 host's 16 cores, live and with the latent cache, against the full-size model's
# 1-GPU step (bench/results/train_h200_1gpu.json); the renderer's objects/s on all cores; the full-size VAE's
# encode rate on the GPU (the latent-cache build). One H200 kind:
#   bash bench/device/dataloader.sh          (needs $OUT; wheels for packages missing there under .whl/)
# Writes $OUT/dataloader_h200.json and $OUT/dataloader_h200.log. CPU smoke test of the same script:
#   OUT=/tmp/dl RENDER=6 VIEWS=4 SIZE=64 WORKERS="0 1" BATCHES=4 ENCODE=tiny bash bench/device/dataloader.sh
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nproc
RENDER=${RENDER:-160} VIEWS=${VIEWS:-12} SIZE=${SIZE:-256} WORKERS=${WORKERS:-"0 1 2 4 8 12 16"}
BATCHES=${BATCHES:-60} ENCODE=${ENCODE:-full} T_BENCH=${T_BENCH:-540}
# shellcheck disable=SC2086
timeout "$T_BENCH" python3 bench/bench_dataloader.py --render "$RENDER" --views "$VIEWS" --image-size "$SIZE" \
  --workers $WORKERS --batches "$BATCHES" --encode "$ENCODE" --work-dir /tmp \
  --out "$OUT/dataloader_h200.json" 2>&1 | tee "$OUT/dataloader_h200.log" | grep -v 'Warning\|warn('
