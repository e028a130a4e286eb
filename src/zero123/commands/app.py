"""``zero123 app``: serve the local web UI (gradio) on 127.0.0.1:7860.

Examples::

    zero123 app                                   # the bundled model, http://127.0.0.1:7860/
    zero123 app --checkpoint stable_zero123.ckpt --device cuda --port 8080
    zero123 app --t2i-model sdxl-turbo/ --matting-model isnet-general-use.onnx
"""

from __future__ import annotations

import argparse
import sys

from ._common import add_model_options


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=summary + ". Needs the web extra: "
                              'pip install "zero123[web]".', formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
    add_model_options(p)
    p.add_argument("--fast", action="store_true", help="GPU: compile the UNet/VAE once at start (about a minute)")
    p.add_argument("--t2i-model", metavar="PATH", default=None,
                   help="text-to-image model (SDXL / SDXL-Turbo folder or file): adds the Text-to-3D tab")
    p.add_argument("--matting-model", metavar="PATH", default=None,
                   help="ONNX salient-object model (rembg's u2net / isnet / BiRefNet files) for the photos' "
                        "foreground (default: an RGBA input's alpha, else the plain-background rule, else the "
                        "built-in background removal, as in views and to3d)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the app)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--work-dir", metavar="DIR", default=None,
                   help="per-session output folders go here (default: <tmp>/zero123-app)")
    p.add_argument("--max-session-age", type=float, default=6.0, metavar="HOURS",
                   help="remove a session's folder this long after its last use (default 6)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="upload limit in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=36_000_000, help="image pixel limit (default 36M)")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..app import AppConfig, import_gradio, launch
    from ..errors import Zero123Error

    import_gradio()  # one-line error before loading anything
    if not 0 < args.port < 65536:
        raise Zero123Error(f"--port must be 1..65535, got {args.port}")
    if args.max_session_age <= 0 or args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise Zero123Error("--max-session-age, --max-upload-mb and --max-pixels must be > 0")
    cfg = AppConfig(checkpoint=args.checkpoint, variant=args.variant, t2i_model=args.t2i_model,
                    matting_model=args.matting_model, device=args.device, dtype=args.dtype, fast=args.fast,
                    max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=args.max_pixels,
                    session_max_age_s=args.max_session_age * 3600.0)
    if args.work_dir is not None:
        cfg.work_dir = Path(args.work_dir)
        if cfg.work_dir.exists() and not cfg.work_dir.is_dir():
            raise Zero123Error(f"--work-dir {cfg.work_dir} is a file, not a folder")
    if args.checkpoint is not None:
        from ..loading import require_checkpoint

        require_checkpoint(args.checkpoint)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"zero123 app: warning: binding {args.host} makes the app reachable from other machines "
              "(no authentication)", file=sys.stderr)
    launch(cfg, host=args.host, port=args.port)
    return 0
