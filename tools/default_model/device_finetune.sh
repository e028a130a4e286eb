#!/usr/bin/env bash
# Continue training the bundled default model (one device call under 10 minutes): render the procedural dataset
# as tools/default_model/train.sh does, then train the diffusion stage starting from the given weights
# (model.init_from, default the shipped folder; its VAE stays frozen), convert to the fp16 folder and pack it into
# $OUT as tools/default_model/device_train.sh does; then the conditioning check and zero123 eval on the GPU.
# Chained calls: unpack the returned model.tar parts OVER src/zero123/assets/default_model (keep its README.md)
# so that the next call starts from them (the default INIT). Carrying a second 30 MB folder next to the bundled
# one exceeds the device tool's 64 MiB working-tree limit. A call on a still-warm machine can instead start from
# the copy the previous call left in /tmp (INIT=/tmp/dm_chain). The sha256 of INIT's UNet is printed first.
# The renders are kept in $WORK between calls (a warm machine keeps /tmp; rendering is deterministic, so reusing
# them is the same as rendering again). The model is packed into $OUT as soon as it is converted, before the
# (time-limited) GPU checks, so a call cut off by the device tool's limit still returns it.
# Defaults: 2000 objects, batch 512 and the rest of configs/small_default.yaml (lr 3e-4, same_view_prob 0.2),
# the frozen VAE's latents cached (data.cache_latents; CACHE=0: encoded every step).
# NPROC=N trains on N GPUs of the host with `accelerate launch --multi_gpu` (BATCH is per GPU: global batch N x BATCH).
# DEADLINE=S (seconds since this script started): the diffusion stage gets the minutes left before S, less a margin
# for its set-up, conversion and packing (instead of MINUTES), so that a call shares its time with other work.
# VAE_MINUTES>0 first continues INIT's VAE (configs/small_vae.yaml from model.vae_from=INIT/vae, batch VAE_BATCH, on
# one GPU, on the same training views as the diffusion stage) and then trains the diffusion stage on the new VAE's
# latents (its scaling factor re-estimated). A RESUME=1 call keeps that VAE ($WORK/vae/final) for the resumed
# diffusion run: its checkpoint and latent cache are that VAE's.
# EXTRA_OBJECTS=N adds N more procedural objects as training data: rendered with --seed $EXTRA_SEED (default 1:
# other objects than seed 0's) --test-fraction 0 (all train) and merged with the seed-0 render
# (`zero123 merge-datasets`), so the seed-0 render's val/test objects stay held out and the evaluation unchanged.
# TAG=name keeps this run's files apart from other runs sharing $WORK's renders: $WORK/diffusion_name,
# $WORK/default_model_name, /tmp/dm_chain_name and $OUT/name/ (tools/default_model/device_finetune_variants.sh runs one per GPU).
# RENDER_ONLY=1 stops once the renders (and the merged dataset) are ready.
# RESUME=1 continues the training run the previous call left in $WORK/diffusion on a warm machine (--resume latest:
# weights, optimizer, EMA, step and lr schedule), e.g. one cosine decay over several calls:
#   NPROC=2 EXTRA_OBJECTS=6000 DEADLINE=565 EXTRA="max_steps=6000 optim.decay=cosine ..." bash ...   # call 1 (v0.4)
#   RESUME=1 NPROC=2 EXTRA_OBJECTS=6000 DEADLINE=565 EXTRA="(the same)" bash ...   # calls 2, 3
#   BENCH=1 MINUTES=4.5 bash tools/default_model/device_finetune.sh     # + the batch 128 vs 512 step benchmark
#   EVAL=0 MINUTES=8.4 EXTRA="optim.warmup_steps=50 sample.every=0" bash tools/default_model/device_finetune.sh
#                                                                       # each of the two calls that made v0.2
#                                                                       # (then without the latent cache)
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
WORK=${WORK:-/tmp/dmft}
MINUTES=${MINUTES:-6.5}
INIT=${INIT:-src/zero123/assets/default_model}
OBJECTS=${OBJECTS:-2000}
BATCH=${BATCH:-512}
BENCH=${BENCH:-0}          # 1: first time training steps of the small model at batch 128 and $BATCH
                           # (BENCH_COMPILE=1: also at $BATCH with torch.compile; then EXTRA="compile=true")
EVAL=${EVAL:-1}
EXTRA=${EXTRA:-}
CACHE=${CACHE:-1}
VAE_MINUTES=${VAE_MINUTES:-0}
VAE_BATCH=${VAE_BATCH:-128}
NPROC=${NPROC:-1}
DEADLINE=${DEADLINE:-}
EXTRA_OBJECTS=${EXTRA_OBJECTS:-0}
EXTRA_SEED=${EXTRA_SEED:-1}
RESUME=${RESUME:-0}
EXTRA_VAE=${EXTRA_VAE:-}
TAG=${TAG:-}
RENDER_ONLY=${RENDER_ONLY:-0}
SUFFIX=${TAG:+_$TAG}
RUN=diffusion$SUFFIX MODEL=default_model$SUFFIX VAE_RUN=vae$SUFFIX
if [ -n "$TAG" ]; then OUT=$OUT/$TAG && mkdir -p "$OUT"; fi
ZERO123="python3 -m zero123.cli"
pack() {
  (cd "$WORK" 2>/dev/null || exit
   if [ -d "$MODEL" ] && [ ! -e "$OUT/model.tar.part-aa" ]; then
     tar cf - "$MODEL" | split -b 15M - "$OUT/model.tar.part-"
   fi
   tar cf "$OUT/logs.tar" --exclude='checkpoints' "$RUN"/log.jsonl "$RUN"/config.yaml "$RUN"/samples \
     "$VAE_RUN"/log.jsonl "$VAE_RUN"/config.yaml "$VAE_RUN"/samples 2>/dev/null)
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
sha256sum "$INIT"/unet/*.safetensors
SECONDS=0
mkdir -p "$WORK"
if [ "$BENCH" = 1 ]; then
  for b in ${BENCH_BATCHES:-128 $BATCH}; do
    python3 bench/bench_train.py --models small --batch-size "$b" --steps 10 --warmup 3 --num-workers 2 \
      --no-single-baseline --cache-latents --out "$OUT/train_small_b$b.json" 2>&1 | grep -v Warning | tail -4
  done
  if [ "${BENCH_COMPILE:-0}" = 1 ]; then  # the same step under torch.compile (config `compile: true`)
    python3 bench/bench_train.py --models small --batch-size "$BATCH" --steps 10 --warmup 3 --num-workers 2 \
      --no-single-baseline --compile --out "$OUT/train_small_b${BATCH}_compile.json" 2>&1 | grep -v Warning | tail -4
  fi
  echo "bench done at ${SECONDS}s"
fi
# render_once DIR N ARGS...: N procedural objects (12 views, 128 px) into DIR, unless DIR already holds N
# (a warm machine keeps /tmp; rendering is deterministic, so reusing them is the same as rendering again)
COUNT='import json,sys; m=json.load(open(sys.argv[1])); print(len(m["objects"]) + len(m.get("skipped", [])))'
render_once() {
  local dir=$1 n=$2
  shift 2
  if [ "$(python3 -c "$COUNT" "$dir/manifest.json" 2>/dev/null)" != "$n" ]; then
    rm -rf "$dir"
    $ZERO123 render-dataset --out "$dir" --procedural "$n" --views 12 --size 128 --workers "$(nproc)" --quiet "$@"
  fi
}
render_once "$WORK/renders" "$OBJECTS" --test-fraction 0.1 --val-fraction 0.05
DATA="$WORK/renders"
if [ "$EXTRA_OBJECTS" != 0 ]; then
  render_once "$WORK/extra" "$EXTRA_OBJECTS" --seed "$EXTRA_SEED" --test-fraction 0 --val-fraction 0
  # merged once: runs sharing $WORK (TAG=...) start after it exists
  if [ "$(python3 -c "$COUNT" "$WORK/merged/manifest.json" 2>/dev/null)" != "$((OBJECTS + EXTRA_OBJECTS))" ]; then
    rm -rf "$WORK/merged" && $ZERO123 merge-datasets --out "$WORK/merged" "$WORK/renders" "$WORK/extra" || exit 1
  fi
  DATA="$WORK/merged"
fi
echo "renders ready at ${SECONDS}s"
[ "$RENDER_ONLY" = 1 ] && exit 0
# this run's outputs start here (after the renders, so that a RENDER_ONLY call leaves every run's files alone);
# from now on whatever the run leaves is packed into $OUT, however it ends
rm -rf "${WORK:?}/$MODEL"
trap pack EXIT
RESUME_ARG=""
vae_from=null
if [ "$RESUME" = 1 ] && [ -d "$WORK/$RUN/checkpoints" ]; then
  RESUME_ARG="--resume latest"
  # the run being resumed was trained on (and cached the latents of) the VAE an earlier call trained, if any
  [ -d "$WORK/$VAE_RUN/final" ] && vae_from="$WORK/$VAE_RUN/final" && echo "resuming on the VAE in $vae_from"
else
  [ "$RESUME" = 1 ] && echo "RESUME=1 but no run in $WORK/$RUN (a fresh machine?): starting a new run from $INIT"
  rm -rf "${WORK:?}/$RUN" "${WORK:?}/$VAE_RUN"
fi
if [ "$VAE_MINUTES" != 0 ] && [ -z "$RESUME_ARG" ]; then
  # shellcheck disable=SC2086
  $ZERO123 train configs/small_vae.yaml data.root="$DATA" data.num_workers=14 batch_size="$VAE_BATCH" \
    model.vae_from="$INIT/vae" 'model.vae={}' optim.warmup_steps=50 --output-dir "$WORK/$VAE_RUN" \
    --max-minutes "$VAE_MINUTES" $EXTRA_VAE 2>&1 | tee "$OUT/train_vae.log" | grep -v 'step/s\]\|s/step\]'
  vae_from="$WORK/$VAE_RUN/final"
  echo "vae trained at ${SECONDS}s"
fi
TRAIN=$ZERO123
if [ "$NPROC" -gt 1 ]; then  # env.sh keeps NVLink multicast off
  TRAIN="python3 -m accelerate.commands.launch --multi_gpu --num_processes $NPROC --num_machines 1 -m zero123.cli"
fi
if [ -n "$DEADLINE" ]; then
  MINUTES=$(python3 -c "print(round(max(0.5, ($DEADLINE - $SECONDS - ${MARGIN:-80}) / 60), 2))")
fi
echo "diffusion stage: $MINUTES min on $NPROC GPU(s), batch $BATCH per GPU"
# shellcheck disable=SC2086
$TRAIN train configs/small_default.yaml data.root="$DATA" data.num_workers=14 batch_size="$BATCH" \
  model.init_from="$INIT" 'model.unet={}' 'model.vae={}' 'model.clip={}' data.cache_latents="$([ "$CACHE" = 1 ] \
  && echo true || echo false)" model.vae_from="$vae_from" --output-dir "$WORK/$RUN" --max-minutes "$MINUTES" \
  $RESUME_ARG $EXTRA 2>&1 | tee "$OUT/train.log" | grep -v 'step/s\]\|s/step\]'
$ZERO123 convert "$WORK/$RUN/final" "$WORK/$MODEL" --half
pack
# a warm machine keeps /tmp: the next call can start from here (INIT=$CHAIN_DIR) without carrying 30 MB
CHAIN_DIR=${CHAIN_DIR:-/tmp/dm_chain}$SUFFIX
rm -rf "$CHAIN_DIR" && cp -r "$WORK/$MODEL" "$CHAIN_DIR"
echo "trained at ${SECONDS}s"
if [ "$EVAL" = 1 ]; then
  # quick checks on the GPU (the model card's figures are re-measured on a CPU before any weights are shipped):
  # does the model use its camera now, and the held-out metrics against the baselines
  timeout "${EVAL_TIMEOUT:-120}" python3 -m zero123.evaluation.conditioning --data "$WORK/renders" --split test \
    -c "$WORK/$MODEL" --pairs 128 --device cuda --out "$OUT/conditioning.json" 2>&1 | grep -v Warning
  timeout "${EVAL_TIMEOUT:-120}" $ZERO123 eval --data "$WORK/renders" --checkpoint "$WORK/$MODEL" \
    --max-objects 40 --pairs-per-object 2 --steps 50 --out "$OUT/eval_test_gpu.json" --quiet 2>&1 | grep -v Warning
fi
echo "total ${SECONDS}s"
