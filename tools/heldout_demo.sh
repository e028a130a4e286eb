#!/usr/bin/env bash
# The README's held-out demo of the bundled default model, on a CPU: view 0 of the first test object of the
# procedural renders (an object the model never saw) -> four novel views, then image-to-3D (cpu preset), and the
# pictures copied into docs/images.
#   zero123 render-dataset --out renders --procedural 2000 --views 12 --size 128 --test-fraction 0.1 --val-fraction 0.05
#   RENDERS=renders bash tools/heldout_demo.sh            # ~8 minutes on 2 cores
set -euo pipefail
RENDERS=${RENDERS:-renders}
WORK=${WORK:-out/heldout}
ZERO123=${ZERO123:-"python3 -m zero123.cli"}
OBJ=${OBJ:-$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); \
print(next(o['id'] for o in m['objects'] if o['split']=='test'))" "$RENDERS/manifest.json")}
mkdir -p "$WORK" docs/images
cp "$RENDERS/$OBJ/000.png" "$WORK/heldout.png"
echo "held-out object: $OBJ (view 0)"
$ZERO123 views "$WORK/heldout.png" --azimuth 60 120 180 240 --out "$WORK/views"
$ZERO123 views "$WORK/heldout.png" --azimuth 60 120 180 240 --noise-scale 1 --out "$WORK/views_tau1"
$ZERO123 to3d "$WORK/heldout.png" --out "$WORK/to3d"
cp "$WORK/views/grid.png" docs/images/heldout_views.png
cp "$WORK/views_tau1/grid.png" docs/images/heldout_views_tau1.png
cp "$WORK/to3d/preview.png" docs/images/heldout_to3d_preview.png
cp "$WORK/to3d/turntable.gif" docs/images/heldout_turntable.gif
echo "wrote docs/images/heldout_views.png, heldout_views_tau1.png, heldout_to3d_preview.png, heldout_turntable.gif"
