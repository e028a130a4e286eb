"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..utils.atomic import atomic_save_image  # noqa: F401  (the package's one atomic writer)
from ..utils.images import save_image_grid  # noqa: F401  (the package's one image grid)


def _numbers(text: str) -> list[float]:
    """``"90,180"`` / ``"90"`` -> ``[90.0, 180.0]`` / ``[90.0]`` (an argparse ``type``)."""
    parts = [t.strip() for t in text.split(",")]
    try:
        values = [float(t) for t in parts if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by spaces or commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


class _NumberList(argparse.Action):
    """Flattens ``--azimuth 90,180 270`` -> ``[90, 180, 270]``; ``count`` (optional) is the required length."""

    def __init__(self, *args, count: int | None = None, **kwargs):
        self.count = count
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        flat = [v for chunk in values for v in chunk]
        if self.count is not None and len(flat) != self.count:
            parser.error(f"{option_string} takes {self.count} numbers, got {len(flat)}")
        setattr(namespace, self.dest, flat)


def add_number_list(p, *flags, count: int | None = None, **kwargs):
    """A list option that takes spaces or commas: ``--azimuth 90 180``, ``--azimuth 90,180``,
    ``--azimuth=-45,45`` (and ``--azimuth -45,45``: see :func:`allow_negative_lists`)."""
    return p.add_argument(*flags, nargs="+", type=_numbers, action=_NumberList, count=count, **kwargs)


def allow_negative_lists(parser: argparse.ArgumentParser) -> None:
    """Let ``--azimuth -45,45`` through: argparse takes an argument that starts with "-" for an option unless it
    looks like one negative number, so widen its (private, long-stable) matcher to comma lists of numbers."""
    import re

    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,[-+]?[\d.eE+-]*)*$")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", "-c", metavar="PATH", default=None,
                   help="model: an LDM .ckpt/.safetensors (stable_zero123.ckpt, zero123-xl.ckpt, ...) or a "
                        "diffusers-format folder. Default: the small model bundled with zero123")
    g.add_argument("--variant", choices=["zero123", "stable_zero123"], default=None,
                   help="camera conditioning of the checkpoint (default: from the folder's config or the file "
                        "name: names with 'stable' or '123c' mean stable_zero123)")
    add_weights_variant_option(g)
    add_original_config_option(g)
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="weights/compute precision (default: fp16 on CUDA, fp32 on CPU)")


def add_weights_variant_option(p) -> None:
    """``--weights-variant``: which diffusers variant weight files of a model folder to read."""
    from ..utils.weight_variants import WEIGHT_VARIANTS  # not zero123.loading: the parser stays light

    p.add_argument("--weights-variant", choices=["auto", "plain", *WEIGHT_VARIANTS], default=None,
                   help="for a diffusers-format folder: which weight files to read (diffusion_pytorch_model"
                        ".<variant>.safetensors). Default auto: EMA weights when present (ema, then fp16_ema), else "
                        "the plain files, else fp16; a component without the chosen variant uses its plain file")


def add_original_config_option(p) -> None:
    """``--original-config PATH``: the LDM yaml of a single-file checkpoint."""
    p.add_argument("--original-config", metavar="YAML", default=None,
                   help="the checkpoint's original LDM yaml (zero123's "
                        "configs/sd-objaverse-finetune-c_concat-256.yaml, threestudio's pretrained_config): the sizes its tensors do not determine (UNet heads, image "
                        "size, scale factor). Default: a sidecar <ckpt>.json, else the released sizes (zero123 info "
                        "marks them assumed)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """Sampling options shared by ``views`` and ``eval``."""
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50; with ddim, S steps run S-1 "
                   "UNet evaluations, with dpmpp / unipc S)")
    p.add_argument("--scheduler", choices=["ddim", "dpmpp", "unipc"], default="ddim",
                   help="sampler: ddim (default, the original's), dpmpp (DPM-Solver++ 2M) or unipc (UniPC bh2), "
                        "diffusers' multistep solvers on the same noise schedule: 50-step DDIM's quality in fewer "
                        "steps (bench/RESULTS.md); they are deterministic (no --eta) and ignore --timestep-spacing")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (default 3.0)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic; zero123's demo uses 1)")
    p.add_argument("--noise-scale", type=float, default=None, metavar="TAU",
                   help="start noise ~ N(0, TAU^2), TAU in [0, 1]: below 1, views nearer the model's most likely "
                        "one, with less texture detail (default: the model folder's sampling.json, else 1; the "
                        "bundled model's is 0.5)")
    p.add_argument("--timestep-spacing", choices=["zero123", "diffusers"], default="zero123",
                   help="DDIM's timesteps: zero123 (the original DDIMSampler's: S steps visit S-1 timesteps, the "
                        "largest dropped) or diffusers (the community Zero1to3 pipeline's DDIMScheduler: S timesteps "
                        "from 1 + (S-1)*(1000//S), 981 for 50). Default zero123")


def resolve_device_dtype(args):
    """``args.device`` / ``args.dtype`` (the model options) as a ``torch.device`` and ``torch.dtype``
    (:mod:`zero123.utils.device`'s defaults and one-line errors)."""
    from ..utils.device import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def load_pipeline(checkpoint, variant, dtype, device, *, weights_variant=None, original_config=None):
    """``Zero123Pipeline`` from a diffusers folder (``weights_variant``), an LDM file (``original_config``), or
    ``None`` (the bundled model)."""
    from ..pipelines.zero123_pipeline import Zero123Pipeline

    if checkpoint is None or Path(checkpoint).is_dir():
        return Zero123Pipeline.from_pretrained(checkpoint, variant=variant, dtype=dtype, device=device,
                                               weights_variant=weights_variant)
    return Zero123Pipeline.from_single_file(checkpoint, variant=variant, dtype=dtype, device=device,
                                            original_config=original_config)


def add_foreground_options(p: argparse.ArgumentParser) -> None:
    """``--segmentation``, ``--mask``, ``--matting-model``, ``--matting-kind``: how the photo's background is
    removed (``views``, ``to3d``, ``text-to-3d``, ``app``). Read them with :func:`foreground_kwargs`."""
    g = p.add_argument_group("background removal")
    g.add_argument("--segmentation", choices=["auto", "plain", "builtin", "matting"], default="auto",
                   help="auto (default): the alpha channel of an RGBA image, else --mask / --matting-model when "
                        "given, else the plain-background rule when the border is one colour, else the built-in "
                        "background removal (GrabCut, offline); plain: the plain-background rule only; builtin; "
                        "matting: --matting-model")
    g.add_argument("--mask", metavar="PATH", default=None,
                   help="your own foreground mask, the photo's size: white (or opaque alpha) = object")
    g.add_argument("--matting-model", metavar="PATH", default=None,
                   help="ONNX salient-object / matting model you have (rembg's u2net.onnx, u2netp.onnx, "
                        "isnet-general-use.onnx, BiRefNet-*.onnx; needs onnxruntime); see zero123.matting")
    g.add_argument("--matting-kind", choices=["auto", "u2net", "isnet", "birefnet"], default="auto",
                   help="pre/post-processing of --matting-model (default auto: from the file name)")


def foreground_kwargs(args, image=None) -> dict:
    """``{segmentation, mask, matting_model}`` from :func:`add_foreground_options`' options, checked before any
    model work: the mask is read (and compared with ``image``'s size, a path or PIL image, when given) and the
    ONNX model is loaded. Bad values raise a one-line ``Zero123Error``."""
    from ..preprocessing import load_image, load_mask, resolve_matting

    mask = None
    if args.mask is not None:
        size = None if image is None else (load_image(image) if isinstance(image, (str, os.PathLike)) else image).size
        mask = load_mask(args.mask, size)
    kind = None if args.matting_kind == "auto" else args.matting_kind
    matting = resolve_matting(args.matting_model, kind) if args.matting_model else None
    if args.segmentation == "matting" and matting is None:
        from ..errors import Zero123Error

        raise Zero123Error("--segmentation matting needs --matting-model FILE.onnx")
    return {"segmentation": args.segmentation, "mask": mask, "matting_model": matting}
