#!/usr/bin/env bash
# Input-elevation estimate (zero123.elevation) on one H200 with full-size random-weight Stable Zero123 (fp16,
# eager): time per estimate (2 probe views x 10 DDIM steps, 256 px, guidance 3, plus the optical flow) and the
# CUDA memory it needs above the loaded model. Error figures need trained weights: see bench/RESULTS.md.
#   bash bench/device/elevation.sh      (needs $OUT)  -> $OUT/elevation_h200.json, $OUT/elevation_h200.log
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
# the estimator's optical flow needs OpenCV: where the device image lacks it, carry its wheel in .whl/
# (pip download opencv-python-headless --no-deps -d .whl)
if ! python3 -c "import cv2" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_cv .whl/opencv_python_headless*.whl \
    || { echo "OpenCV missing: put an opencv-python-headless wheel in .whl/"; exit 1; }
  export PYTHONPATH=/tmp/site_cv:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout "${T_ELEV:-400}" python3 bench/bench_elevation.py --random full --device cuda --dtype fp16 --time-only \
  --objects "${OBJECTS:-4}" --elevations 5 30 --steps 10 20 --out "$OUT/elevation_h200.json" 2>&1 \
  | tee "$OUT/elevation_h200.log" | grep -v Warning
