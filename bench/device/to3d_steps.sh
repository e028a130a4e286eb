#!/usr/bin/env bash
# Image-to-3D step time per stage, presets default and fast, at this checkout and at the commit before the
# Representation/Guidance refactor (issue 17 item 6), one H200, full-size random weights:
#   bash bench/device/to3d_steps.sh          (needs $OUT)
# The old tree: $OLD_SRC (a copy of src/ at that commit, e.g. made before the call with
#   mkdir -p .bench_old && git archive 016885c src ":!src/zero123/assets/default_model" | tar -x -C .bench_old
#   -> OLD_SRC=.bench_old/src; the bundled model is not needed: the benchmark builds random full-size weights)
# or, when the device copy has .git, made here from $OLD_COMMIT (default 016885c). Writes
# $OUT/to3d_steps_new.json, $OUT/to3d_steps_old.json and $OUT/to3d_steps.log.
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
OLD_COMMIT=${OLD_COMMIT:-016885c} T_STEPS=${T_STEPS:-270} ARGS=${ARGS:-"--warmup 2 --iters 10 --prime-steps 3"}
if [ -z "${OLD_SRC:-}" ] && git rev-parse --verify -q "$OLD_COMMIT" >/dev/null 2>&1; then
  mkdir -p /tmp/old_tree && git archive "$OLD_COMMIT" src ":!src/zero123/assets/default_model" \
    | tar -x -C /tmp/old_tree && OLD_SRC=/tmp/old_tree/src
fi
# shellcheck disable=SC2086
timeout "$T_STEPS" python3 bench/bench_to3d_steps.py $ARGS --out "$OUT/to3d_steps_new.json" 2>&1 \
  | tee "$OUT/to3d_steps.log" | grep -v Warning
if [ -n "${OLD_SRC:-}" ] && [ -d "$OLD_SRC/zero123" ]; then
  # shellcheck disable=SC2086
  timeout "$T_STEPS" python3 bench/bench_to3d_steps.py $ARGS --src "$OLD_SRC" --out "$OUT/to3d_steps_old.json" 2>&1 \
    | tee -a "$OUT/to3d_steps.log" | grep -v Warning
else
  echo "no old tree (set OLD_SRC or run with .git): only this checkout was timed"
fi
