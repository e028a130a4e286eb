#!/usr/bin/env bash
# Continue training the bundled default model (one device call under 10 minutes): render the procedural dataset
# exactly as tools/train_default_model.sh does, then train the diffusion stage starting from the shipped weights
# (model.init_from; the shipped VAE stays frozen), convert to the fp16 folder and pack it into $OUT as
# bench/device/train_default_model.sh does; then the conditioning check and zero123 eval on the GPU. Chained calls: unpack the returned model.tar parts into a folder that
# travels with the next call (device tool's carry, e.g. runs/ft1/default_model, 30 MB) and pass it as INIT.
#   MINUTES=6.5 EXTRA="data.same_view_prob=0.2" bash bench/device/finetune_default_model.sh
#   INIT=runs/ft1/default_model MINUTES=8 bash bench/device/finetune_default_model.sh
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
WORK=${WORK:-/tmp/dmft}
MINUTES=${MINUTES:-6.5}
INIT=${INIT:-src/zero123/assets/default_model}
EXTRA=${EXTRA:-}
ZERO123="python3 -m zero123.cli"
pack() {
  cd "$WORK" 2>/dev/null || return
  [ -d default_model ] && tar cf - default_model | split -b 15M - "$OUT/model.tar.part-"
  tar cf "$OUT/logs.tar" --exclude='checkpoints' diffusion/log.jsonl diffusion/config.yaml diffusion/samples \
    2>/dev/null
}
trap pack EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
SECONDS=0
rm -rf "$WORK" && mkdir -p "$WORK"   # a fresh run each call (a warm machine keeps /tmp)
$ZERO123 render-dataset --out "$WORK/renders" --procedural 1000 --views 12 --size 128 --test-fraction 0.1 \
  --val-fraction 0.05 --workers "$(nproc)" --quiet
echo "rendered in ${SECONDS}s"
# shellcheck disable=SC2086
$ZERO123 train configs/small_default.yaml data.root="$WORK/renders" data.num_workers=12 \
  model.init_from="$INIT" 'model.unet={}' 'model.vae={}' 'model.clip={}' \
  model.vae_from=null --output-dir "$WORK/diffusion" --max-minutes "$MINUTES" $EXTRA 2>&1 \
  | tee "$OUT/train.log" | grep -v 'step/s\]\|s/step\]'
$ZERO123 convert "$WORK/diffusion/final" "$WORK/default_model" --half
# quick checks on the GPU (the model card's figures are re-measured on a CPU before any weights are shipped):
# does the model use its camera now, and the held-out metrics against the baselines
python3 -m zero123.evaluation.conditioning --data "$WORK/renders" --split test -c "$WORK/default_model" \
  --pairs 128 --device cuda --out "$OUT/conditioning.json" 2>&1 | grep -v Warning
$ZERO123 eval --data "$WORK/renders" --checkpoint "$WORK/default_model" --max-objects 40 --pairs-per-object 2 \
  --steps 50 --out "$OUT/eval_test_gpu.json" --quiet 2>&1 | grep -v Warning
echo "total ${SECONDS}s"
