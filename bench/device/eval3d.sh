#!/usr/bin/env bash
# zero123 eval-3d on one H200 in one 10-minute call: render a procedural dataset, then image-to-3D with the
# bundled model on >= 20 held-out objects beside the ground-truth-views upper bound and the two baselines.
#   bash bench/device/eval3d.sh        (needs $OUT; wheels for packages missing there under .whl/)
# Writes $OUT/eval3d/{eval3d.json,table.txt,objects/<id>/figure.png,...} and $OUT/eval3d.log.
# With every row it finished 13-15 of the 20 in one call (sessions 17-18): the model and gt_views rows each cost
# about as much. The 20-object model row in one call is bench/device/eval3d_variants.sh with the reference rows
# known (bench/RESULTS.md, "20 held-out objects in one 10-minute call": 4 processes fill the GPU, more do not help).
# Knobs (environment): N objects (20), PRESET (fast: the bundled 128 px model renders at 64 -> 128 px, which is
# its size), STEPS (the preset's), SHARDS parallel eval-3d processes sharing the GPU (4), T_EVAL seconds for
# them (430), CHECKPOINT (bundled), DEVICE (cuda), VIEWS per object (8), SIZE of the renders (128),
# REPRESENTATION of the model row (nerf; gaussians: `to3d --representation gaussians`, results under
# $OUT/eval3d_gaussians/ and $OUT/eval3d_gaussians.log).
# CPU check with tiny settings:
#   OUT=/tmp/o N=2 PRESET=tiny SHARDS=2 DEVICE=cpu VIEWS=2 SIZE=32 CHECKPOINT=../shared/fixtures/tiny_zero123_ldm.ckpt \
#     EXTRA="--gt-views-steps 20 --max-views 2 --iou-resolution 32" bash bench/device/eval3d.sh
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
N=${N:-20} PRESET=${PRESET:-fast} SHARDS=${SHARDS:-4} T_EVAL=${T_EVAL:-430} DEVICE=${DEVICE:-cuda}
VIEWS=${VIEWS:-8} SIZE=${SIZE:-128} EXTRA=${EXTRA:-}
WORK=${WORK:-/tmp/eval3d_work}
ZERO123="python3 bench/cli_no_ffmpeg.py"  # the zero123 CLI; MP4s as raw frames where imageio-ffmpeg is missing
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rm -rf "$WORK" && mkdir -p "$WORK"
t0=$(date +%s)
# 2N objects with half held out: N test objects (assign_splits rounds 0.5 * 2N = N)
timeout 120 $ZERO123 render-dataset --out "$WORK/ds" --procedural $((2 * N)) --views "$VIEWS" --size "$SIZE" \
  --test-fraction 0.5 --workers "$(nproc)" --quiet || exit 1
echo "render-dataset: $(( $(date +%s) - t0 )) s"
REPRESENTATION=${REPRESENTATION:-nerf}
RES=eval3d; [ "$REPRESENTATION" = nerf ] || RES=eval3d_$REPRESENTATION
mkdir -p "$OUT/$RES"
common=(--data "$WORK/ds" --out "$WORK/eval3d" --preset "$PRESET" --max-objects "$N" --device "$DEVICE"
        --representation "$REPRESENTATION")
[ -n "${STEPS:-}" ] && common+=(--steps "$STEPS")
[ -n "${CHECKPOINT:-}" ] && common+=(--checkpoint "$CHECKPOINT")
# shellcheck disable=SC2206
extra=($EXTRA)
threads=$(( $(nproc) / SHARDS )); [ "$threads" -ge 1 ] || threads=1
pids=()
for k in $(seq 0 $((SHARDS - 1))); do
  OMP_NUM_THREADS=$threads timeout "$T_EVAL" $ZERO123 eval-3d "${common[@]}" "${extra[@]}" --shard "$k/$SHARDS" \
    --quiet > "$WORK/shard_$k.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || echo "a shard ended with status $? (timeout: 124)"; done
echo "eval-3d shards: $(( $(date +%s) - t0 )) s"
# the table of every object that finished (per-object results are cached; unfinished objects are left out)
$ZERO123 eval-3d "${common[@]}" "${extra[@]}" --cached-only --quiet | tee "$OUT/$RES/table.txt"
cp "$WORK/eval3d/eval3d.json" "$OUT/$RES/" 2>/dev/null
for d in "$WORK"/eval3d/objects/*/; do
  id=$(basename "$d"); mkdir -p "$OUT/$RES/objects/$id"
  cp "$d"/metrics.json "$d"/figure.png "$d"/input.png "$OUT/$RES/objects/$id/" 2>/dev/null
done
cat "$WORK"/shard_*.log > "$OUT/$RES.log"
grep -h -i "error\|Traceback" "$WORK"/shard_*.log | head -5
echo "total: $(( $(date +%s) - t0 )) s"
