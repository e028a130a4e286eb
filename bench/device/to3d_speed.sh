#!/usr/bin/env bash
# Image-to-3D step time per stage (issue 24, "speed"), presets default and fast, one H200, full-size random weights
# (bench/bench_to3d_steps.py: the fast path, fp16 UNet, Triton hash grid), in ONE call of about 150 s:
#   old    the code of commit 0a4e622 (the session's start) from $OLD_SRC, made before the call with
#            mkdir -p .bench_old24 && git archive 0a4e622 src ":!src/zero123/assets/default_model" | tar -x -C .bench_old24
#          (carry .bench_old24);
#   new    this checkout;
#   bf16   this checkout with field.mlp_dtype=bfloat16 (the field's MLPs and their Jacobian under autocast);
# run in that order, ROUNDS times (alternating old/new/... so a clock drift shows in both).
#   bash bench/device/to3d_speed.sh                      (needs $OUT)
# Knobs: VARIANTS ("old new bf16"; also fp16, and nockpt: field.checkpoint_mlp=false, no MLP recompute in backward),
# PRESETS ("default fast"), ROUNDS (1; 2 fits in ~300 s with
# ARGS="--warmup 1 --iters 5 --prime-steps 3"), ARGS (--warmup 2 --iters 8 --prime-steps 3), T_RUN (100 s a run),
# DEADLINE (290 s for the whole call: a run is cut to what is left, a run with < 30 s left is skipped).
# CPU smoke test (tiny model + tiny preset):  OUT=/tmp/o TINY=1 bash bench/device/to3d_speed.sh
# Writes $OUT/to3d_speed/{<variant>_<round>.json, to3d_speed.log, table.md} and prints the table.
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
OLD_SRC=${OLD_SRC:-.bench_old24/src} VARIANTS=${VARIANTS:-"old new bf16"} PRESETS=${PRESETS:-"default fast"}
ROUNDS=${ROUNDS:-1} ARGS=${ARGS:-"--warmup 2 --iters 8 --prime-steps 3"} T_RUN=${T_RUN:-100} DEADLINE=${DEADLINE:-290}
DIR="$OUT/to3d_speed"
mkdir -p "$DIR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
EXTRA=""
[ "${TINY:-0}" = 1 ] && EXTRA="--tiny"
t0=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    case $v in
      old) if [ ! -d "$OLD_SRC/zero123" ]; then echo "no old tree at $OLD_SRC: old skipped"; continue; fi
           VARGS="--src $OLD_SRC" ;;
      new) VARGS="" ;;
      bf16) VARGS="--set field.mlp_dtype=bfloat16" ;;
      fp16) VARGS="--set field.mlp_dtype=float16" ;;
      nockpt) VARGS="--set field.checkpoint_mlp=false" ;;
      *) echo "unknown variant $v"; continue ;;
    esac
    left=$((DEADLINE - ($(date +%s) - t0)))
    if [ "$left" -lt 30 ]; then echo "$v round $round skipped: ${left} s left"; continue; fi
    t=$((left < T_RUN ? left : T_RUN))
    echo "== $v round $round (limit $t s)" | tee -a "$DIR/to3d_speed.log"
    # shellcheck disable=SC2086
    timeout "$t" python3 bench/bench_to3d_steps.py $EXTRA $ARGS $VARGS --presets $PRESETS \
      --out "$DIR/${v}_${round}.json" 2>&1 | grep -v Warning | tee -a "$DIR/to3d_speed.log"
  done
done
python3 - "$DIR" <<'PY'
import json, statistics, sys
from pathlib import Path
d = Path(sys.argv[1])
runs = {}                                   # variant -> {(preset, stage): [median ms of each round]}
info = {}
for f in sorted(d.glob("*_*.json")):
    v = f.stem.rsplit("_", 1)[0]
    doc = json.loads(f.read_text())
    for r in doc["results"]:
        for s in r["stages"]:
            key = (r["preset"], s["stage"])
            runs.setdefault(v, {}).setdefault(key, []).append(s["median_ms"])
            info[key] = f"{s['batch']}x{s['resolution']} px, ref {s['reference_resolution']} px"
order = [v for v in ("old", "new", "bf16", "fp16", "nockpt") if v in runs]
keys = sorted({k for v in runs.values() for k in v})
head = "| preset | stage | views | " + " | ".join(f"{v} ms/step" for v in order)
head += " | new / old | bf16 / old |" if "old" in runs else " |"
lines = [head, "|" + "---|" * (head.count("|") - 1)]
for k in keys:
    med = {v: statistics.median(runs[v][k]) for v in order if k in runs[v]}
    row = f"| {k[0]} | {k[1]} | {info[k]} | " + " | ".join(f"{med[v]:.1f}" if v in med else "-" for v in order)
    if "old" in med:
        row += " | " + " | ".join(f"{med[v] / med['old']:.2f}" if v in med else "-" for v in ("new", "bf16"))
    lines.append(row + " |")
table = "\n".join(lines) + "\n"
(d / "table.md").write_text(table)
print(table)
PY
echo "done in $(($(date +%s) - t0)) s"
