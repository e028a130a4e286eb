"""Memory and time of reading a large photo (issue 19 item 4): ``zero123.preprocessing.load_image`` (pixel limit
from the header, JPEG decoded at a reduced DCT scale, reduced to ``MAX_WORKING_SIDE``) and the whole input
preparation (``prepare_input_image``: segmentation, recentring) vs the old path (full decode, segmentation at full
size), for a synthetic 8000 x 8000 object photo on a plain background, as JPEG and PNG.

Each measurement runs in a fresh process; "peak MB" is the peak resident set minus the process's after importing
zero123.preprocessing (torch, numpy, PIL), so it is what reading the photo costs.

    python bench/bench_load_image.py --out bench/results/load_image_cpu.json [--side 8000] [--old]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys, time
from PIL import Image, ImageOps
from zero123 import preprocessing as pp
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, what = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if what == "load_image":
    size = pp.load_image(path).size
elif what == "prepare_input_image":
    size = pp.prepare_input_image(path).rgba.size
else:  # the old path: full decode, segmentation at full size
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
    size = pp.recenter(im, pp.foreground_mask(im)).size
dt = time.perf_counter() - t
print(dt, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, *size)
"""


def make_photo(folder: Path, side: int) -> dict:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    tex = Image.fromarray((rng.random((64, 64, 3)) * 200).astype(np.uint8)).resize((side // 2, side // 3))
    im = Image.new("RGB", (side, side), (250, 250, 250))
    im.paste(tex, (side // 4, side // 3))
    paths = {"jpeg": folder / "photo.jpg", "png": folder / "photo.png"}
    im.save(paths["jpeg"], quality=90)
    im.save(paths["png"], compress_level=1)
    return paths


def measure(path: Path, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), what], capture_output=True, text=True, check=True)
    dt, mb, w, h = out.stdout.split()
    return {"seconds": round(float(dt), 3), "peak_mb": round(float(mb), 1), "result_size": [int(w), int(h)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--old", action="store_true", help="also measure the old path (several GB at 8000 px)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fmt, path in make_photo(Path(d), args.side).items():
            for what in ["load_image", "prepare_input_image"] + (["old: full decode + segmentation"] if args.old else []):
                r = {"format": fmt, "side": args.side, "what": what, **measure(path, what.split(":")[0])}
                rows.append(r)
                print(f"{fmt:5s} {what:34s} {r['seconds']:7.2f} s {r['peak_mb']:8.1f} MB -> {r['result_size']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
