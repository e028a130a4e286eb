"""``zero123 convert IN OUT``: an LDM single-file checkpoint -> a diffusers-format folder (safetensors)."""

from __future__ import annotations

from ._common import add_original_config_option, add_weights_variant_option


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ". EMA weights are used when present.")
    p.add_argument("input", help="LDM checkpoint (.ckpt or .safetensors) or a diffusers folder")
    p.add_argument("output", help="output folder (written atomically)")
    p.add_argument("--variant", choices=["zero123", "stable_zero123"], default=None,
                   help="camera conditioning to record (default: detected from the file name)")
    p.add_argument("--no-ema", action="store_true", help="convert the plain weights even if EMA weights exist")
    add_weights_variant_option(p)
    add_original_config_option(p)
    p.add_argument("--half", action="store_true", help="store fp16 weights (half the size)")
    p.add_argument("--int8", action="store_true",
                   help="also store the UNet's large weights as int8 with per-channel scales (about half its fp16 "
                        "size; loads with zero123, not with diffusers' from_pretrained)")
    return p


def run(args) -> int:
    from ..loading import load_model, save_pretrained
    from ..utils.outputs import CONVERT_OUTPUTS, check_output_dir

    check_output_dir(args.output, CONVERT_OUTPUTS, flag="OUTPUT")  # an earlier conversion is replaced whole
    model, report = load_model(args.input, variant=args.variant, use_ema=not args.no_ema, return_report=True,
                               weights_variant=args.weights_variant, original_config=args.original_config)
    save_pretrained(model, args.output, half=args.half, int8_unet=args.int8)
    print(f"converted {report.source} ({report.variant}, {'EMA' if report.uses_ema else 'plain'} weights, "
          f"{len(report.ignored)} keys ignored) -> {args.output}")
    return 0
