#!/usr/bin/env bash
# How fast `zero123 eval-3d`'s model row goes on one GPU, alone and with several processes sharing it: what a
# call that must finish N objects in 10 minutes is planned from (issue 23). In ONE call of at most
# 80 s + T_PHASE a phase (530 s with the defaults):
#   bash bench/device/eval3d_throughput.sh     (needs $OUT; wheels for packages missing there under .whl/)
# 1. `render-dataset --procedural 60` (30 held out, 8 views at 128 px; eval3d_variants.sh scores the first 20 of
#    --procedural 40);
# 2. bench/bench_to3d_steps.py --bundled on the bundled preset: ms per step of each stage, with a torch.profiler
#    op table and the fraction of the wall time the GPU was busy ($OUT/throughput/profile/);
# 3. for each P in PROCS ("1 4 8"): P eval-3d processes at once, model row only, each on its own held-out objects
#    (OBJS each, never one another phase ran), for at most T_PHASE seconds, with `nvidia-smi dmon` sampling the
#    GPU and the processes' GPU memory read half-way (phase_<P>.apps). Each
#    finished object's row records its wall seconds (metrics.json "seconds": build, score, to3d's train_s ...).
# Writes $OUT/throughput.tgz (throughput/{summary.md,summary.json,phase_<P>.{dmon,apps},steps.json,profile/*.txt}),
# $OUT/summary.md and $OUT/throughput.log.
# Knobs: PROCS, OBJS (2), T_PHASE (seconds a phase, 150), PRESET (bundled), EXTRA (options of every eval-3d process),
# THREADS (OMP threads a process: nproc / P), STEPS_ARGS (bench_to3d_steps.py options), DEVICE (cuda).
# CPU smoke test (tiny model, about 2 minutes):
#   OUT=/tmp/o DEVICE=cpu PROCS="1 2" T_PHASE=60 PRESET=tiny CHECKPOINT=../shared/fixtures/tiny_zero123_ldm.ckpt \
#     EXTRA="--max-views 2 --iou-resolution 32 --points 500" STEPS_ARGS="--tiny --iters 2 --warmup 1" \
#     bash bench/device/eval3d_throughput.sh
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
PROCS=${PROCS:-"1 4 8"} OBJS=${OBJS:-2} T_PHASE=${T_PHASE:-150} PRESET=${PRESET:-bundled} EXTRA=${EXTRA:-} DEVICE=${DEVICE:-cuda}
STEPS_ARGS=${STEPS_ARGS:-"--bundled --presets bundled --warmup 2 --iters 6"}
WORK=${WORK:-/tmp/eval3d_throughput_work}
RES=$WORK/results/throughput  # tarred into $OUT at the end: the device returns at most 8 files
ZERO123="python3 bench/cli_no_ffmpeg.py"
rm -rf "$WORK" && mkdir -p "$WORK" "$RES"
exec > >(tee "$OUT/throughput.log") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
t0=$(date +%s)
timeout 120 $ZERO123 render-dataset --out "$WORK/ds" --procedural 60 --views 8 --size 128 --test-fraction 0.5 \
  --workers "$(nproc)" --quiet || exit 1
echo "render-dataset: $(( $(date +%s) - t0 )) s"
mapfile -t IDS < <(python3 -c "
from zero123.data import layout
print('\n'.join(o.id for o in layout.read_manifest('$WORK/ds').objects_in('test')))")
timeout 200 python3 bench/bench_to3d_steps.py $STEPS_ARGS --device "$DEVICE" --out "$RES/steps.json" \
  --profile "$RES/profile" || echo "bench_to3d_steps ended with status $?"
echo "steps: $(( $(date +%s) - t0 )) s"
common=(--data "$WORK/ds" --device "$DEVICE" --rows model --preset "$PRESET" --quiet)
[ -n "${CHECKPOINT:-}" ] && common+=(--checkpoint "$CHECKPOINT")
# shellcheck disable=SC2206
extra=($EXTRA)
next=0
for P in $PROCS; do
  threads=${THREADS:-$(( $(nproc) / P ))}; [ "$threads" -ge 1 ] || threads=1
  dmon=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi dmon -s um -d 1 > "$RES/phase_$P.dmon" 2>&1 & dmon=$!
  fi
  pids=()
  ts=$(date +%s)
  for ((k = 0; k < P; k++)); do
    objs=()
    for ((j = 0; j < OBJS && next < ${#IDS[@]}; j++)); do objs+=("${IDS[next]}"); next=$((next + 1)); done
    [ ${#objs[@]} -gt 0 ] || break
    OMP_NUM_THREADS=$threads timeout "$T_PHASE" $ZERO123 eval-3d "${common[@]}" "${extra[@]}" \
      --out "$WORK/phase_$P" --objects "$(IFS=,; echo "${objs[*]}")" > "$WORK/phase_$P.$k.log" 2>&1 &
    pids+=($!)
  done
  if command -v nvidia-smi >/dev/null; then
    (sleep $((T_PHASE / 2)); nvidia-smi --query-compute-apps=pid,used_memory --format=csv > "$RES/phase_$P.apps") &
    apps=$!
  fi
  for p in "${pids[@]}"; do wait "$p"; done
  [ -n "$dmon" ] && kill "$dmon" "$apps" 2>/dev/null
  echo "phase $P processes x $threads threads: $(( $(date +%s) - ts )) s"
  for f in "$WORK"/phase_"$P".*.log; do echo "== $(basename "$f")"; tail -3 "$f"; done
done
python3 - "$WORK" "$RES" "$PROCS" "$T_PHASE" <<'EOF'
import json, statistics, sys
from pathlib import Path
work, res, procs, t_phase = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), float(sys.argv[4])
doc, lines = {"t_phase_s": t_phase, "phases": []}, ["| processes | objects done | s an object (median) | train_s | "
             "mesh_s | score s | objects a minute (all processes) |", "|---|---|---|---|---|---|---|"]
for p in procs:
    secs = []
    for m in sorted((work / f"phase_{p}" / "objects").glob("*/metrics.json")):
        row = json.loads(m.read_text())["rows"].get("model", {})
        if "seconds" in row:
            secs.append(row["seconds"])
    ph = {"processes": int(p), "objects": len(secs), "seconds": secs}
    if secs:
        med = lambda k: statistics.median(s.get(k, 0.0) for s in secs)  # noqa: E731
        wall = statistics.median(s["build"] + s["score"] for s in secs)
        ph.update(median_object_s=wall, objects_per_min=60 * int(p) / wall)
        lines.append(f"| {p} | {len(secs)} | {wall:.1f} | {med('train_s'):.1f} | {med('mesh_s'):.1f} | "
                     f"{med('score'):.1f} | {ph['objects_per_min']:.2f} |")
    else:
        lines.append(f"| {p} | 0 | - | - | - | - | - |")
    doc["phases"].append(ph)
steps = res / "steps.json"
if steps.is_file():
    doc["steps"] = json.loads(steps.read_text())
    for r in doc["steps"]["results"]:
        for st in r["stages"]:
            prof = st.get("profile", {})
            lines.append(f"\nstep, {r['preset']} stage {st['stage']}: {st['median_ms']:.1f} ms ({st['samples']} samples)"
                         f"; GPU busy {prof.get('device_busy_fraction', float('nan')):.2f} of the wall time, "
                         f"{prof.get('kernels', '-')} kernels a step")
(res / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
(res / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
tar czf "$OUT/throughput.tgz" -C "$WORK/results" throughput && cp "$RES/summary.md" "$OUT/"
echo "total: $(( $(date +%s) - t0 )) s"
