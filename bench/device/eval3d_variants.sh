#!/usr/bin/env bash
# to3d preset variants for the bundled model, scored by `zero123 eval-3d` on the same held-out objects in ONE
# 10-minute call on one H200: the base (`--preset fast`) with every row (model, gt_views, extrude, sphere) and each
# variant with the model row only, all processes at once sharing the GPU; then bench/eval3d_compare.py (paired
# deltas with standard errors on the common objects).
#   bash bench/device/eval3d_variants.sh        (needs $OUT; wheels for packages missing there under .whl/)
# Writes $OUT/eval3d_variants/{compare.md,compare.json,table_base.txt,<config>/eval3d.json,<config>/objects/<id>/
# {metrics.json,figure.png}} and $OUT/eval3d_variants.log (every process's log).
# Variants: bench/device/eval3d_variants.txt, one a line: NAME then `zero123 eval-3d` options (--preset, --set,
# --config); `base` is the reference every other line is compared with.
# Objects are dealt round-robin to SHARDS processes per config (process k: objects k, k+SHARDS, ...), the same for
# every config, so whatever the time allows, each config has finished the same objects first.
# Knobs (environment): N objects (20), SHARDS processes per model config (4), GT_SHARDS processes for the
# gt_views/extrude/sphere rows of the base (2), GT_STEPS of the gt_views reconstruction (100), T_EVAL seconds for
# the processes (480), ONLY (space-separated config names to run; default all lines), VARIANTS_FILE, DEVICE
# (cuda), VIEWS per object (8), SIZE of the renders (128), CHECKPOINT (bundled), EXTRA (options for every process),
# REF_ROWS the base's reference rows (gt_views,extrude,sphere; e.g. extrude,sphere when gt_views is known), TGZ=1
# (everything in $OUT/eval3d_variants.tgz beside the tables: the device returns at most 8 files, 2 folders deep).
# CPU check with tiny settings (about 3 minutes on 2 cores):
#   OUT=/tmp/o N=2 SHARDS=1 GT_SHARDS=1 GT_STEPS=20 DEVICE=cpu VIEWS=2 SIZE=32 T_EVAL=300 \
#     VARIANTS_FILE=bench/device/eval3d_variants_tiny.txt CHECKPOINT=../shared/fixtures/tiny_zero123_ldm.ckpt \
#     EXTRA="--max-views 2 --iou-resolution 32 --points 500" bash bench/device/eval3d_variants.sh
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
N=${N:-20} SHARDS=${SHARDS:-4} GT_SHARDS=${GT_SHARDS:-2} GT_STEPS=${GT_STEPS:-100} T_EVAL=${T_EVAL:-480}
DEVICE=${DEVICE:-cuda} VIEWS=${VIEWS:-8} SIZE=${SIZE:-128} EXTRA=${EXTRA:-} ONLY=${ONLY:-}
VARIANTS_FILE=${VARIANTS_FILE:-bench/device/eval3d_variants.txt}
WORK=${WORK:-/tmp/eval3d_variants_work}
REF_ROWS=${REF_ROWS:-gt_views,extrude,sphere}
RES=$OUT/eval3d_variants; [ "${TGZ:-0}" = 1 ] && RES=$WORK/results/eval3d_variants
ZERO123="python3 bench/cli_no_ffmpeg.py"  # the zero123 CLI; MP4s as raw frames where imageio-ffmpeg is missing
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rm -rf "$WORK" && mkdir -p "$WORK" "$RES"
t0=$(date +%s)
timeout 120 $ZERO123 render-dataset --out "$WORK/ds" --procedural $((2 * N)) --views "$VIEWS" --size "$SIZE" \
  --test-fraction 0.5 --workers "$(nproc)" --quiet || exit 1
echo "render-dataset: $(( $(date +%s) - t0 )) s"
mapfile -t IDS < <(python3 -c "
from zero123.data import layout
print('\n'.join(o.id for o in layout.read_manifest('$WORK/ds').objects_in('test')[:$N]))")
part() {  # part K COUNT: the comma list of objects K, K+COUNT, ...
  local k=$1 c=$2 out=() i
  for ((i = k; i < ${#IDS[@]}; i += c)); do out+=("${IDS[i]}"); done
  (IFS=,; echo "${out[*]}")
}
names=()
declare -A OPTS=()
while read -r name opts; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  [[ -n "$ONLY" && " $ONLY " != *" $name "* ]] && continue
  names+=("$name"); OPTS[$name]=$opts
done < "$VARIANTS_FILE"
[[ -n "${OPTS[base]+x}" ]] || { echo "no base line in $VARIANTS_FILE"; exit 1; }
base_common=(--data "$WORK/ds" --device "$DEVICE")
[ -n "${CHECKPOINT:-}" ] && base_common+=(--checkpoint "$CHECKPOINT")
# shellcheck disable=SC2206
extra=($EXTRA)
nproc_total=$(( ${#names[@]} * SHARDS + GT_SHARDS ))
threads=$(( $(nproc) / nproc_total )); [ "$threads" -ge 1 ] || threads=1
echo "configs: ${names[*]}; $nproc_total processes x $threads threads; objects: ${#IDS[@]}"
launch() {  # launch LOG ARGS...: one timed eval-3d process in the background
  local log=$1; shift
  OMP_NUM_THREADS=$threads timeout "$T_EVAL" $ZERO123 eval-3d "${base_common[@]}" "${extra[@]}" "$@" --quiet \
    > "$log" 2>&1 &
  pids+=($!)
}
pids=()
for name in "${names[@]}"; do
  # shellcheck disable=SC2206
  opts=(${OPTS[$name]})
  for ((k = 0; k < SHARDS; k++)); do
    [ -n "$(part "$k" "$SHARDS")" ] && launch "$WORK/$name.$k.log" --out "$WORK/$name" --rows model "${opts[@]}" \
      --objects "$(part "$k" "$SHARDS")"
  done
done
# shellcheck disable=SC2206
base_opts=(${OPTS[base]})
for ((k = 0; k < GT_SHARDS; k++)); do
  [ -n "$(part "$k" "$GT_SHARDS")" ] && launch "$WORK/base_ref.$k.log" --out "$WORK/base_ref" \
    --rows "$REF_ROWS" --gt-views-steps "$GT_STEPS" "${base_opts[@]}" --objects "$(part "$k" "$GT_SHARDS")"
done
for p in "${pids[@]}"; do wait "$p" || echo "a process ended with status $? (timeout: 124)"; done
echo "eval-3d processes: $(( $(date +%s) - t0 )) s"
# each config's table of the objects that finished (per-object results are cached; unfinished ones are left out)
all=$(IFS=,; echo "${IDS[*]}")
tab() {  # tab NAME ROWS [OPTIONS...]
  local name=$1 rows=$2; shift 2
  $ZERO123 eval-3d "${base_common[@]}" "${extra[@]}" "$@" --out "$WORK/$name" --rows "$rows" --objects "$all" \
    --cached-only --quiet > "$RES/table_$name.txt" 2>&1
}
for name in "${names[@]}"; do
  # shellcheck disable=SC2206
  opts=(${OPTS[$name]}); tab "$name" model "${opts[@]}" &
done
tab base_ref "$REF_ROWS" --gt-views-steps "$GT_STEPS" "${base_opts[@]}" &
wait
cmp_args=(--base "$WORK/base/eval3d.json" --reference "$WORK/base_ref/eval3d.json" --out "$RES")
for name in "${names[@]}"; do
  [ "$name" = base ] || cmp_args+=(--variant "$name=$WORK/$name/eval3d.json")
done
python3 bench/eval3d_compare.py "${cmp_args[@]}"
for name in "${names[@]}" base_ref; do
  mkdir -p "$RES/$name"; cp "$WORK/$name/eval3d.json" "$RES/$name/" 2>/dev/null
  for d in "$WORK/$name"/objects/*/; do
    [ -d "$d" ] || continue
    id=$(basename "$d"); mkdir -p "$RES/$name/objects/$id"
    cp "$d"/metrics.json "$d"/figure.png "$RES/$name/objects/$id/" 2>/dev/null
  done
done
cp "$VARIANTS_FILE" "$RES/variants.txt"
for f in "$WORK"/*.log; do echo "== $(basename "$f")"; cat "$f"; done > "$OUT/eval3d_variants.log"
grep -h -i "error\|Traceback" "$WORK"/*.log | head -5
if [ "${TGZ:-0}" = 1 ]; then
  tar czf "$OUT/eval3d_variants.tgz" -C "$WORK/results" eval3d_variants && cp "$RES"/*.md "$RES"/table_*.txt "$OUT/"
fi
echo "total: $(( $(date +%s) - t0 )) s"
