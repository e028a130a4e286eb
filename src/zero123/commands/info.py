"""``zero123 info CKPT``: what a checkpoint is, without sampling anything."""

from __future__ import annotations

import collections
import json

from ._common import add_original_config_option, add_weights_variant_option


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="LDM .ckpt/.safetensors or diffusers folder (default: the bundled model)")
    p.add_argument("--variant", choices=["zero123", "stable_zero123"], default=None)
    add_weights_variant_option(p)
    add_original_config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--list-ignored", action="store_true", help="list every ignored key with its reason")
    return p


def run(args) -> int:
    from ..loading import load_model

    model, report = load_model(args.checkpoint, variant=args.variant, return_report=True,
                               weights_variant=args.weights_variant, original_config=args.original_config)
    params = model.num_parameters()
    reasons = collections.Counter(report.ignored.values())
    info = {"source": report.source, "format": report.format, "variant": report.variant,
            "ema_weights_used": report.uses_ema, "image_size": model.image_size,
            "latent_size": model.unet.config.sample_size, "parameters": params,
            "unet": {k: report.config.unet[k] for k in ("block_out_channels", "layers_per_block",
                                                       "attention_head_dim", "cross_attention_dim")},
            "ignored_keys": dict(reasons), **report.extra}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(f"{report.source}: {report.format} checkpoint, variant {report.variant}")
        print(f"  image {model.image_size}px -> latent {model.unet.config.sample_size}x"
              f"{model.unet.config.sample_size}x{model.latent_channels}; EMA weights used: {report.uses_ema}")
        for k, v in params.items():
            print(f"  {k:18s} {v / 1e6:9.2f} M params")
        for reason, count in reasons.items():
            print(f"  ignored {count:4d} keys: {reason}")
        for k, v in report.extra.items():
            if isinstance(v, dict):
                print(f"  {k}:")
                for name, value in v.items():
                    print(f"    {name:38s} {value}")
            else:
                print(f"  {k}: {v}")
    if args.list_ignored:
        for k, reason in sorted(report.ignored.items()):
            print(f"  {k}\t{reason}")
    return 0
