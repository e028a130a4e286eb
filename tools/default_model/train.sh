#!/usr/bin/env bash
# Train the bundled default model from nothing: render a procedural multi-view dataset, train its VAE (stage 1),
# train the view-conditioned diffusion model (stage 2), evaluate it on the held-out objects against the trivial
# baselines, and write the fp16 diffusers folder that ships as zero123/assets/default_model.
#
#   bash tools/default_model/train.sh                      # defaults below (one GPU: ~8 minutes + evaluation)
#   OBJECTS=24 VAE_MINUTES=0.2 DIFF_MINUTES=0.3 EVAL_OBJECTS=2 EVAL_STEPS=5 bash tools/default_model/train.sh  # smoke
#
# Every stage is resumable: run it again with the same WORK folder and the training stages continue from their
# last checkpoint (--resume latest) for another *_MINUTES each; rendering is skipped once the manifest exists.
set -euo pipefail
WORK=${WORK:-runs/default_model}
OBJECTS=${OBJECTS:-2000}           # procedural objects (10 % held out for test, 5 % for validation)
VIEWS=${VIEWS:-12}
SIZE=${SIZE:-128}
VAE_MINUTES=${VAE_MINUTES:-1.5}
DIFF_MINUTES=${DIFF_MINUTES:-5.5}
EVAL=${EVAL:-1}                    # 0: skip the evaluation (run it later: the last command below)
WORKERS=${WORKERS:-$(nproc)}
EVAL_OBJECTS=${EVAL_OBJECTS:-40}           # 40 test objects x 2 pairs: the model card's table
EVAL_PAIRS=${EVAL_PAIRS:-2}
EVAL_STEPS=${EVAL_STEPS:-50}
ZERO123=${ZERO123:-"python3 -m zero123.cli"}
EXTRA_VAE=${EXTRA_VAE:-}           # extra KEY=VALUE overrides, e.g. "batch_size=8 data.num_workers=0"
EXTRA_DIFF=${EXTRA_DIFF:-}
mkdir -p "$WORK"

if [ ! -f "$WORK/renders/manifest.json" ]; then
  $ZERO123 render-dataset --out "$WORK/renders" --procedural "$OBJECTS" --views "$VIEWS" --size "$SIZE" \
    --test-fraction 0.1 --val-fraction 0.05 --workers "$WORKERS" --quiet
fi
loader_workers=$(( WORKERS > 12 ? 12 : WORKERS ))
# shellcheck disable=SC2086
$ZERO123 train configs/small_vae.yaml data.root="$WORK/renders" data.num_workers=$loader_workers \
  --output-dir "$WORK/vae" --resume latest --max-minutes "$VAE_MINUTES" $EXTRA_VAE
# shellcheck disable=SC2086
$ZERO123 train configs/small_default.yaml data.root="$WORK/renders" data.num_workers=$loader_workers \
  model.vae_from="$WORK/vae/final" --output-dir "$WORK/diffusion" --resume latest --max-minutes "$DIFF_MINUTES" \
  $EXTRA_DIFF
$ZERO123 convert "$WORK/diffusion/final" "$WORK/default_model" --half
if [ "$EVAL" = 1 ]; then
  $ZERO123 eval --data "$WORK/renders" --checkpoint "$WORK/default_model" --max-objects "$EVAL_OBJECTS" \
    --pairs-per-object "$EVAL_PAIRS" --steps "$EVAL_STEPS" --out "$WORK/eval_test.json" --quiet
fi
echo "default model: $WORK/default_model  (copy to src/zero123/assets/default_model)"
