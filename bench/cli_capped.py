"""``python bench/cli_capped.py [--cap-gib G] --report FILE -- ARGS``: the ``zero123`` command (``ARGS``) in this
process under ``torch.cuda.set_per_process_memory_fraction(G GiB / total)`` (a smaller card), then a JSON report
of its exit status, in-process wall time and the CUDA peaks (``max_memory_allocated`` / ``max_memory_reserved``).
MP4s are written as raw frames where imageio-ffmpeg is missing (``bench/_no_ffmpeg.py``). Used by
``bench/device/memory.sh``; on a CPU the cap and the peaks are skipped (None)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _no_ffmpeg import skip_mp4_if_no_ffmpeg

GIB = 1 << 30


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: cli_capped.py [--cap-gib G] --report FILE -- ZERO123 ARGS")
    split = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap-gib", type=float, default=0.0, help="0: no cap")
    ap.add_argument("--report", required=True)
    args = ap.parse_args(argv[:split])
    t0 = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    if cuda and args.cap_gib > 0:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total), 0)
    skip_mp4_if_no_ffmpeg()
    from zero123.cli import main as zero123_main

    try:
        rc = zero123_main(argv[split + 1:])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    report = {"args": argv[split + 1:], "rc": rc, "cap_gib": (args.cap_gib or None) if cuda else None,
              "process_s": time.perf_counter() - t0,
              "max_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
              "max_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None}
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
