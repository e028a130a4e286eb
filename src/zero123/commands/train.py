"""``zero123 train CONFIG [key=value ...]``: train or fine-tune a view-conditioned model (or its VAE) with
``accelerate``; the same command runs on CPU, one GPU, or under ``accelerate launch`` on several GPUs / nodes."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  zero123 train configs/tiny_test.yaml data.root=renders/ --output-dir runs/tiny
  zero123 train configs/small_default.yaml data.root=renders/ optim.lr=2e-4 batch_size=32
  zero123 train configs/small_default.yaml --resume latest            # continue the run in its output_dir
  accelerate launch --multi_gpu --num_processes 8 -m zero123.cli train configs/finetune_stable_zero123.yaml \\
      model.init_from=stable_zero123.ckpt data.root=renders/
overrides are dotted config keys with YAML values (optim.lr=3e-5, model.freeze_vae=false, sample.every=0).
batch_size is per process; one step sees batch_size x processes x gradient_accumulation_steps pairs.
Writes OUTPUT/config.yaml, log.jsonl, checkpoints/step_N/, samples/step_N.png and final/ (EMA weights,
diffusers-format folder usable as --checkpoint). See docs/training.md."""


def _add_options(p) -> None:
    p.add_argument("--output-dir", "-o", metavar="DIR", default=None, help="output folder (overrides output_dir)")
    p.add_argument("--resume", metavar="latest|DIR", default=None,
                   help="continue from the newest checkpoint of the output folder ('latest'; starts fresh if there "
                        "is none) or from a checkpoint folder")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="train until this many optimizer steps (overrides max_steps)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="stop after M minutes of this invocation, with a checkpoint and an export; "
                        "--resume latest continues (overrides max_minutes)")
    p.add_argument("--print-config", action="store_true", default=None,
                   help="print the resolved config and exit")


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="training config (.yaml/.yml or .json)")
    # REMAINDER: overrides and options may be mixed after CONFIG; run() separates them
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.lr=3e-5 (options may come before or after them)")
    _add_options(p)
    return p


def _split_remainder(args) -> list[str]:
    """Options given after CONFIG (inside the remainder) override those before; the rest are overrides."""
    from ..errors import Zero123Error

    class _Late(argparse.ArgumentParser):
        def error(self, message):
            raise Zero123Error(f"{message} (see zero123 train --help)")

    late = _Late(prog="zero123 train", add_help=False)
    _add_options(late)
    ns, rest = late.parse_known_args(list(args.overrides or []))
    for k, v in vars(ns).items():
        if v is not None:
            setattr(args, k, v)
    for item in rest:
        if item.startswith("-"):
            raise Zero123Error(f"unknown option {item!r} (see zero123 train --help)")
    return rest


def run(args) -> int:
    from ..training.config import load_config

    overrides = _split_remainder(args)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"max_minutes={args.max_minutes}")
    config = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    from ..training.trainer import Trainer

    trainer = Trainer(config)
    result = trainer.train(resume=args.resume)
    if trainer.accelerator.is_main_process:
        loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
        print(f"trained {config.stage} to step {result.step} (last loss {loss}) on "
              f"{trainer.accelerator.num_processes} process(es); log: {result.log_path}")
        if result.checkpoint is not None:
            print(f"checkpoint: {result.checkpoint}")
        if result.export_dir is not None:
            print(f"model: {result.export_dir}")
    trainer.accelerator.end_training()
    return 0
