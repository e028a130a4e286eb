"""The ``zero123`` command line. Each subcommand lives in ``zero123.commands.<name>`` and exposes
``add_parser(subparsers)`` (returns the sub-parser) and ``run(args) -> int``.

User errors (``Zero123Error``) print one line, ``zero123: error: ...``, and exit with status 2; so does a CUDA
out-of-memory error (``torch.OutOfMemoryError``), with what to change (``zero123.utils.memory``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import Zero123Error

#: (subcommand module under zero123.commands, one-line summary shown in `zero123 --help`)
COMMANDS = [
    ("views", "sample novel views of an object photo"),
    ("to3d", "turn an object photo into a textured 3D mesh and a turntable video"),
    ("text_to_3d", "text -> image (SDXL) -> background removal -> 3D mesh"),
    ("convert", "convert an LDM checkpoint (.ckpt/.safetensors) to a diffusers-format folder"),
    ("info", "describe a checkpoint: variant, sizes, EMA, keys"),
    ("render_dataset", "render a multi-view training dataset from meshes"),
    ("merge_datasets", "combine rendered datasets into one (links to their objects, splits kept)"),
    ("train", "train or fine-tune a view-conditioned model (runs under accelerate launch)"),
    ("cache_latents", "encode a training split's views with the frozen VAE into a latent cache file (or shards)"),
    ("eval", "novel-view metrics (PSNR/SSIM/LPIPS) against held-out renders, with baselines"),
    ("eval_3d", "score whole image-to-3D runs against held-out ground-truth meshes, with baselines"),
    ("app", "local web app (gradio): novel views, image-to-3D and text-to-3D in the browser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zero123",
        description="One photo of an object -> novel views and a 3D model (Zero123 / Stable Zero123 family). "
        "Run `zero123 COMMAND --help` for each command's options.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"zero123 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.commands.{name}":
                continue  # subcommand not available in this build
            raise
        p = module.add_parser(sub, name.replace("_", "-"), summary)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .utils import timing

    try:
        return _main(argv)
    finally:
        timing.emit()  # ZERO123_TIMINGS: the run's stage table (zero123.utils.timing)


def _main(argv):
    from .utils.timing import stage

    with stage("parse arguments"):
        parser = build_parser()
        args = parser.parse_args(argv)
        args._argv = list(sys.argv[1:] if argv is None else argv)  # as given (eval-3d --jobs re-runs it)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except Zero123Error as exc:
        print(f"zero123: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zero123: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a CUDA out-of-memory error anywhere is one line too (utils.memory)
        from .utils.memory import is_out_of_memory, out_of_memory_message

        if not is_out_of_memory(exc):
            raise
        print(f"zero123: error: {out_of_memory_message(exc, args.command)}", file=sys.stderr)
        return 2


def run_program() -> None:
    """``zero123`` as a program (the console script, ``python -m zero123.cli``): :func:`main` on ``sys.argv``, then
    exit with its status.

    The exit is quick: the ``atexit`` handlers run and the standard streams are flushed as in a normal exit, then
    the process ends with ``os._exit`` instead of the interpreter's shutdown, whose garbage collection over the
    objects torch, diffusers and transformers leave behind takes seconds (bench/RESULTS.md, "Novel views cold
    start"). Only when no other non-daemon thread is alive (one still at work is waited for, as by a normal
    exit); outputs are written and closed before ``main`` returns (``zero123.utils.atomic``)."""
    import threading

    try:
        rc = main()
    except SystemExit as exc:  # argparse's --help / usage errors
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(rc)
    import atexit
    import os

    atexit._run_exitfuncs()  # what a normal exit runs first (logging.shutdown, tempfile / weakref finalizers, ...)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(rc)


if __name__ == "__main__":
    run_program()
