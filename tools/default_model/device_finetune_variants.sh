#!/usr/bin/env bash
# Fine-tune the bundled default model in several variants at once, one GPU each, on ONE shared render: the
# renders (and merged dataset) are made once by tools/default_model/device_finetune.sh with RENDER_ONLY=1, then one
# run of that script per variant, in parallel, with CUDA_VISIBLE_DEVICES=i, TAG=NAME and the variant's overrides
# appended to EXTRA. E.g. two loss weightings side by side on a 2-GPU host (one cosine run over chained calls):
#   VARIANTS="snr5:objective.snr_gamma=5 snr1:objective.snr_gamma=1" BATCH=1024 EXTRA_OBJECTS=6000 DEADLINE=560 \
#     EVAL=0 EXTRA="max_steps=4400 optim.decay=cosine optim.lr=2e-4 ..." bash tools/default_model/device_finetune_variants.sh
#   RESUME=1 (the same) bash tools/default_model/device_finetune_variants.sh          # next call on the warm machine
# VARIANTS: space-separated NAME:OVERRIDES, the overrides of one variant joined by commas (no spaces), or by
# semicolons when a value holds a comma (a YAML list: "d2a0:model.grow_unet.attention_levels=[0,1,2];optim.lr=1e-4").
# Everything else in the environment (DEADLINE, RESUME, BATCH, EXTRA_OBJECTS, EVAL, ...) goes to every run;
# DEADLINE counts from this script's start. Each variant's files come back under $OUT/NAME/ (model.tar.part-*,
# logs.tar, train.log); its console lines are prefixed with [NAME].
set -uo pipefail
: "${VARIANTS:?set VARIANTS=\"NAME:key=value,key=value NAME2:...\"}"
# shellcheck source=bench/device/env.sh
. bench/device/env.sh  # install the carried wheels once, here: the runs below inherit PYTHONPATH
SECONDS=0
RENDER_ONLY=1 TAG='' bash tools/default_model/device_finetune.sh || exit 1
gpu=0
pids=()
for v in $VARIANTS; do
  name=${v%%:*}
  overrides=${v#*:}
  [ "$overrides" = "$v" ] && overrides=''
  if [[ $overrides == *";"* ]]; then overrides=${overrides//;/ }; else overrides=${overrides//,/ }; fi
  deadline=${DEADLINE:+$((DEADLINE - SECONDS))}
  # shellcheck disable=SC2097,SC2098
  CUDA_VISIBLE_DEVICES=$gpu TAG=$name DEADLINE=$deadline EXTRA="${EXTRA:-} $overrides" \
    bash tools/default_model/device_finetune.sh 2>&1 | sed -u "s/^/[$name] /" &
  pids+=($!)
  gpu=$((gpu + 1))
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "variants done at ${SECONDS}s"
exit $status
