#!/usr/bin/env bash
# Image-to-3D under a 12 GB card's memory (issue 24), one H200: `zero123 to3d` with a full-size random-weight
# Stable Zero123 (a diffusers folder in fp16, `zero123 convert --half`'s layout) on the largest silhouette (an RGBA
# disc filling the 512 px frame, not recentred), each preset run twice in this one call:
#   chunked   the renders in parts sized by --max-memory (its default: the GPU's free memory, here the cap), under
#             torch.cuda.set_per_process_memory_fraction of CAP_GIB (11: a 12 GB card less its context);
#   baseline  today's path, uncapped: the code of commit 016885c from $OLD_SRC (default .bench_old/src when it is
#             there, made as bench/device/to3d_steps.sh says: mkdir -p .bench_old && git archive 016885c src
#             ":!src/zero123/assets/default_model" | tar -x -C .bench_old), else this checkout's whole renders
#             (--max-memory inf).
# Per run: exit status, peak max_memory_allocated / max_memory_reserved, in-process time (to3d's train_s/total_s
# and the process) and the CLI wall (shell). Writes $OUT/memory/{memory.json,table.md,<preset>_<path>.log/json}.
#   PRESETS=default bash bench/device/memory.sh     (~450 s: default ~190 s a run today)
#   PRESETS=fast bash bench/device/memory.sh        (~150 s)
# Knobs: PATHS ("chunked baseline"), CAP_GIB (11), MAXMEM (--max-memory of the chunked run; empty: its default),
# T_RUN seconds a run (default 300, fast 150), DEADLINE seconds for the whole call (550: a run is cut to what is
# left; rerun PATHS=baseline in a second call if it was), STEPS (the preset's).
# CPU check with tiny settings (tiny model, tiny preset):
#   OUT=/tmp/o MEM_TINY=1 PRESETS=tiny MAXMEM=3 bash bench/device/memory.sh   (MAXMEM=0.3: the one-line error)
set -uo pipefail
# shellcheck source=bench/device/env.sh
. bench/device/env.sh
: "${OUT:?set OUT}"
PRESETS=${PRESETS:-default} CAP_GIB=${CAP_GIB:-11} MAXMEM=${MAXMEM:-} DEADLINE=${DEADLINE:-550}
[ -z "${OLD_SRC:-}" ] && [ -d .bench_old/src/zero123 ] && OLD_SRC=.bench_old/src
echo "baseline: ${OLD_SRC:-this checkout with --max-memory inf}"
WORK=${WORK:-/tmp/memory_work}
mkdir -p "$WORK" "$OUT/memory"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${MEM_TINY:-0}" = 1 ]; then CFG=tiny_config DEV=cpu; else CFG=full_size_config DEV=cuda; fi
CKPT=${CKPT:-$WORK/sz123_$CFG}
t0=$(date +%s)
python3 - "$CKPT" "$CFG" "$DEV" "$WORK/disc.png" <<'PY' || exit 1
import os, sys
import numpy as np, torch
from PIL import Image
folder, cfg, dev, disc = sys.argv[1:]
yy, xx = np.mgrid[:512, :512] + 0.5
inside = (yy - 256) ** 2 + (xx - 256) ** 2 <= 256 ** 2            # a disc touching all four edges
rgba = np.zeros((512, 512, 4), np.uint8)
rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, (xx / 2).astype(np.uint8), 60
rgba[..., 3] = inside * 255
Image.fromarray(rgba, "RGBA").save(disc)
if not os.path.isdir(folder):
    from zero123.loading import save_pretrained
    from zero123.models import configs
    with torch.device(dev):
        model = getattr(configs, cfg)("stable_zero123").build(seed=0, device=dev, dtype=torch.float32).eval()
    print("random-weight model:", save_pretrained(model, folder, half=dev == "cuda"), flush=True)
PY
echo "setup: $(( $(date +%s) - t0 )) s"
for preset in $PRESETS; do
  T=${T_RUN:-$([ "$preset" = default ] && echo 300 || echo 150)}
  for path in ${PATHS:-chunked baseline}; do
    out="$WORK/out_${preset}_$path"; rm -rf "$out"
    args=(to3d "$WORK/disc.png" --checkpoint "$CKPT" --out "$out" --preset "$preset" --input-elevation 5
          --device "$DEV" --no-progress)
    [ -n "${STEPS:-}" ] && args+=(--steps "$STEPS")
    pp=$PYTHONPATH cap=0
    if [ "$path" = chunked ]; then
      cap=$CAP_GIB; args+=(--set reference.recentre=false); [ -n "$MAXMEM" ] && args+=(--max-memory "$MAXMEM")
    elif [ -n "${OLD_SRC:-}" ]; then
      pp=$(cd "$OLD_SRC" && pwd):$PYTHONPATH; args+=(--set recentre_input=false)
    else
      args+=(--set reference.recentre=false --max-memory inf)
    fi
    left=$(( DEADLINE - ($(date +%s) - t0) )); [ "$left" -lt "$T" ] && T=$left   # the call's own limit
    [ "$T" -le 10 ] && { echo "no time left for $preset/$path (DEADLINE=$DEADLINE s)"; continue; }
    s=$(date +%s.%N)
    PYTHONPATH=$pp timeout "$T" python3 bench/cli_capped.py --cap-gib "$cap" --report "$OUT/memory/${preset}_$path.json" \
      -- "${args[@]}" > "$OUT/memory/${preset}_$path.log" 2>&1
    rc=$?
    e=$(date +%s.%N)
    python3 - "$OUT/memory/${preset}_$path.json" "$out/result.json" "$rc" "$s" "$e" "$preset" "$path" <<'PY'
import json, sys
from pathlib import Path
rep, res, rc, s, e, preset, path = sys.argv[1:]
r = json.loads(Path(rep).read_text()) if Path(rep).is_file() else {}
t = json.loads(Path(res).read_text()).get("timings", {}) if Path(res).is_file() else {}
r.update(preset=preset, path=path, shell_rc=int(rc), cli_wall_s=float(e) - float(s),
         train_s=t.get("train_s"), total_s=t.get("total_s"))
Path(rep).write_text(json.dumps(r, indent=2) + "\n")
PY
    tail -n 3 "$OUT/memory/${preset}_$path.log"
  done
done
python3 - "$OUT/memory" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
rows = [json.loads(p.read_text()) for p in sorted(d.glob("*_*.json")) if p.name != "memory.json"]
(d / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
f = lambda v, n=1: "-" if v is None else f"{v:.{n}f}"
lines = ["| preset | path | cap GiB | rc | peak allocated GiB | peak reserved GiB | train s | to3d total s | "
         "CLI wall s |", "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['preset']} | {r['path']} | {f(r.get('cap_gib'), 0)} | {r['shell_rc']} | "
                 f"{f(r.get('max_allocated_gib'), 2)} | {f(r.get('max_reserved_gib'), 2)} | {f(r.get('train_s'))} | "
                 f"{f(r.get('total_s'))} | {f(r.get('cli_wall_s'))} |")
(d / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "total: $(( $(date +%s) - t0 )) s"
