"""Opt-in stage timings of one CLI run: where a cold ``zero123 views`` spends its seconds.

``ZERO123_TIMINGS=1 zero123 views ...`` prints a table to stderr when the command ends; ``ZERO123_TIMINGS=PATH``
writes it as JSON to ``PATH`` instead (what ``bench/bench_views_cold.py`` reads). Unset, every :func:`stage` is a
no-op (no clock read, no synchronisation).

A stage is wall-clock seconds (``time.perf_counter``) of a ``with stage(name):`` block. When timings are on and
CUDA is initialised, a stage ends with ``torch.cuda.synchronize()`` so that queued GPU work is counted in the stage
that queued it (a run without timings never synchronises for them). Stages may nest: a nested stage's name is
prefixed with its parent's (``"load model / read unet"``). The first row, ``"process start -> first stage"``, is
the interpreter start plus every import before the first stage (Linux: from ``/proc/self/stat``; absent elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Iterator

ENV = "ZERO123_TIMINGS"

_rows: list[dict] = []  # {"stage", "start_s" (since process start, or since the first stage), "seconds"}
_open: list[str] = []
_origin: float | None = None  # perf_counter() at process start (or at the first stage)


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; 10 ms resolution), else ``None``."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _sync() -> None:
    torch = sys.modules.get("torch")  # never imports torch for a timing
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` (a no-op unless :data:`ENV` is set)."""
    global _origin
    if not enabled():
        yield
        return
    t0 = time.perf_counter()
    if _origin is None:
        age = process_age()
        _origin = t0 - (age or 0.0)
        if age is not None:
            _rows.append({"stage": "process start -> first stage", "start_s": 0.0, "seconds": age})
    full = " / ".join([*_open, name])
    _open.append(name)
    try:
        yield
    finally:
        _sync()
        _open.pop()
        t1 = time.perf_counter()
        _rows.append({"stage": full, "start_s": t0 - _origin, "seconds": t1 - t0})  # rounded in report()


def report() -> dict:
    """``{"stages": [...] (in start order), "total_s"}``: what the run's stages took so far."""
    # ordered on the exact times: two stages within the same millisecond keep their true order
    rows = sorted(_rows, key=lambda r: (r["start_s"], -r["seconds"]))
    end = max((r["start_s"] + r["seconds"] for r in rows), default=0.0)
    return {"stages": [{**r, "start_s": round(r["start_s"], 3), "seconds": round(r["seconds"], 3)} for r in rows],
            "total_s": round(end, 3)}


def emit() -> None:
    """Print the table to stderr (``ZERO123_TIMINGS=1``) or write the JSON file (``ZERO123_TIMINGS=PATH``), then
    forget the stages (a next run in the same process starts afresh)."""
    global _origin
    if not enabled() or not _rows:
        return
    rep, target = report(), os.environ[ENV]
    _rows.clear()
    _origin = None
    if target not in ("1", "true", "yes"):
        from .atomic import atomic_write_text

        atomic_write_text(target, json.dumps(rep, indent=2) + "\n")
        return
    width = max(len(r["stage"]) for r in rep["stages"])
    print(f"{'stage':<{width}}  start (s)  seconds", file=sys.stderr)
    for r in rep["stages"]:
        print(f"{r['stage']:<{width}}  {r['start_s']:9.3f}  {r['seconds']:7.3f}", file=sys.stderr)
    print(f"{'total (process start -> last stage end)':<{width}}  {rep['total_s']:9.3f}", file=sys.stderr)
