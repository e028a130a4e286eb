#!/usr/bin/env bash
# The device-tool call that trained the bundled default model (one H200, one call under 10 minutes):
#   bash tools/default_model/device_train.sh      (needs $OUT; wheels for packages missing there under .whl/)
# Runs tools/default_model/train.sh without its evaluation (done afterwards on the CPU, from the same renders)
# and packs the fp16 model, the training logs and sample grids, and a checksum list of the renders into $OUT
# (model.tar split in 15 MiB parts: the device tool returns files of at most 16 MiB).
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
WORK=${WORK:-/tmp/dm}
pack() {
  cd "$WORK" 2>/dev/null || return
  [ -d default_model ] && tar cf - default_model | split -b 15M - "$OUT/model.tar.part-"
  (cd renders 2>/dev/null && find . -name '*.png' -o -name '*.npy' -o -name manifest.json | sort | xargs md5sum) \
    > "$OUT/renders.md5" 2>/dev/null
  tar cf "$OUT/logs.tar" --exclude='checkpoints' vae/log.jsonl vae/config.yaml diffusion/log.jsonl \
    diffusion/config.yaml diffusion/samples 2>/dev/null
}
trap pack EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
SECONDS=0
WORK=$WORK EVAL=0 bash tools/default_model/train.sh 2>&1 | tee "$OUT/train.log" | grep -v 'step/s\]\|s/step\]'
echo "total ${SECONDS}s"
