#!/usr/bin/env bash
# Gaussian rasteriser (zero123.representations.gaussians.rasterize) on one H200: forward and forward+backward ms
# (CUDA events, warm-up, median) of the dense PyTorch reference and the Triton tile kernels, N = 5k/20k/50k
# Gaussians at 128/256/512 px, batch 4, with peak memory and the triton-vs-torch agreement at full size; then the
# CPU tests' triton-vs-torch comparisons compiled on the GPU (when pytest is there). gsplat is not installed there.
#   bash bench/device/gaussian_raster.sh    (needs $OUT) -> $OUT/gaussian_raster_h200.{json,md,log}, $OUT/tests.log
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout "${T_GSRASTER:-420}" python3 bench/bench_gaussian_raster.py --device cuda --batch 4 --n 5000 20000 50000 \
  --res 128 256 512 --warmup 2 --iters 5 --torch-iters 3 --triton-configs 16x16 8x8 16x8 32x16 \
  --out "$OUT/gaussian_raster_h200.json" --table "$OUT/gaussian_raster_h200.md" 2>&1 | tee "$OUT/gaussian_raster_h200.log" | grep -v Warning
if python3 -c "import pytest" 2>/dev/null; then
  timeout "${T_GSTESTS:-120}" python3 -m pytest -q -p no:cacheprovider tests/test_gaussian_rasterize_triton.py \
    2>&1 | tee "$OUT/tests.log" | tail -5
fi
