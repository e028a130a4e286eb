#!/usr/bin/env bash
# The device-tool call behind bench/RESULTS.md's "Web app" H200 rows (one H200):
#   bash bench/device/app.sh        (needs $OUT; from the repo root)
# A full-size random-weight Stable Zero123 (speed does not depend on weight values) saved as a diffusers folder;
# `zero123 app` serves it warm; bench/bench_app.py clicks (gradio_client: no browser on the device) to 4 views
# (50 steps) and to a GLB with the `fast` preset, then times to3d() in-process for the same preset and the cold
# CLI `zero123 views` (4 views from the fp16 folder). Writes $OUT/app_h200.json (after each phase) and $OUT/app.log.
# gradio is not in the device image and its wheels exceed the carry limit beside the repo: build .webwhl/ with
# bench/device/make_webwhl.sh (trimmed gradio + the packages it needs) and carry it with .whl/.
# APP_TINY=1 runs the same on CPU with the tiny config (a smoke test; no --device cuda).
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
if ! python3 -c "import gradio, gradio_client" 2>/dev/null; then
  rm -rf /tmp/site_web  # a warm machine may hold an earlier call's copy
  if [ -f .webwhl/gradio_trimmed.tar.gz ]; then  # bench/device/make_webwhl.sh; carry .webwhl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_web .webwhl/*.whl \
      && tar xzf .webwhl/gradio_trimmed.tar.gz -C /tmp/site_web || exit 1
  else
    python3 -m pip install -q --no-index --find-links .whl --no-compile --target /tmp/site_web gradio gradio_client \
      || { echo "gradio missing on this machine and not installable from .whl/ (see the header)"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site_web:$PYTHONPATH
  python3 -c "import gradio, gradio_client" || exit 1  # the real import error, not the app's one-line message
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
CKPT=${CKPT:-/tmp/zero123_app_sz123}
if [ "${APP_TINY:-0}" = 1 ]; then CFG=tiny_config DEV=cpu PRESET=tiny STEPS=4; else
  CFG=full_size_config DEV=cuda PRESET=${PRESET:-fast} STEPS=${STEPS:-50}; fi
python3 - "$CKPT" "$CFG" "$DEV" <<'PY' || exit 1
import sys, torch
from zero123.loading import save_pretrained
from zero123.models import configs
folder, cfg, dev = sys.argv[1:]
with torch.device(dev):
    model = getattr(configs, cfg)("stable_zero123").build(seed=0, device=dev, dtype=torch.float32).eval()
print("random-weight model:", save_pretrained(model, folder, half=dev == "cuda"), flush=True)
PY
# one 560-s device call in all: the GLB click and to3d() in-process once each after a warm-up (about 55 s a run),
# the cold CLI for views only (the cold to3d is bench/device/benchmarks.sh's figure); bench_app.py writes its JSON
# after each phase, so a time limit keeps what was measured
T_APP=${T_APP:-$((550 - SECONDS))}
timeout "$T_APP" python3 bench/bench_app.py --checkpoint "$CKPT" --device "$DEV" --preset "$PRESET" \
  --steps "$STEPS" --client gradio --warmup 1 --reps 2 --glb-reps 1 --in-process --cold-cli views \
  --out "$OUT/app_h200.json" 2>&1 | tee "$OUT/app.log" | grep -v Warning
ls -l "$OUT"/app_h200.json 2>/dev/null || echo "no app_h200.json: nothing finished inside ${T_APP} s"
