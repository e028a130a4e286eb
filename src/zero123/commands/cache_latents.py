"""``zero123 cache-latents CONFIG [KEY=VALUE ...] --out FILE [--shard K/N]`` and ``--merge``: the frozen VAE's
latents of a training split in a file (``data.latent_cache_file``), built once, on one GPU or in N shards."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  zero123 cache-latents configs/small_default.yaml data.root=renders --out renders/latents.safetensors
  # N GPUs or machines (a SLURM array 0..N-1), then one merge:
  zero123 cache-latents configs/small_default.yaml data.root=renders --shard $K/$N --out latents/part_$K.safetensors
  zero123 cache-latents --merge latents/part_*.safetensors --out renders/latents.safetensors
  zero123 train configs/small_default.yaml data.root=renders data.cache_latents=true \\
      data.latent_cache_file=renders/latents.safetensors
The VAE, image size, split and precision are the training config's (diffusion stage, model.freeze_vae: true);
the file records the VAE's sha256 and the object ids, and training refuses it for another VAE or object list."""


def add_parser(sub, name, summary):
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="CONFIG [KEY=VALUE ...] | SHARD_FILE ...",
                   help="training config and overrides; with --merge, the shard files")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="latent cache file (.safetensors)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="encode only shard K of N of the split's objects (0 <= K < N)")
    p.add_argument("--merge", action="store_true", help="join the shard files given as inputs into --out")
    p.add_argument("--batch-size", type=int, default=64, help="views per VAE batch (default 64)")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..data.shards import Shard
    from ..errors import Zero123Error
    from ..training.latent_cache import LatentCache, merge_latent_caches

    if Path(args.out).exists():
        raise Zero123Error(f"{args.out} already exists: choose a new file")
    if args.merge:
        if args.shard is not None:
            raise Zero123Error("--merge and --shard are exclusive")
        m = merge_latent_caches(args.inputs, out=args.out)
        print(f"merged {len(args.inputs)} shards into {args.out}: {len(m.num_views)} objects, {len(m)} views")
        return 0
    if args.batch_size < 1:
        raise Zero123Error(f"--batch-size must be >= 1, got {args.batch_size}")
    shard = Shard.parse(args.shard) if args.shard is not None else None
    from ..training.config import load_config
    from ..training.trainer import Trainer

    config = load_config(args.inputs[0], [*args.inputs[1:], "data.cache_latents=true"])  # checks the stage
    config.data.cache_latents, config.data.latent_cache_file = False, None  # set up without encoding at start
    trainer = Trainer(config)
    if trainer.accelerator.num_processes > 1:  # every process would write the same file
        raise Zero123Error("cache-latents runs as one process: give each GPU or machine its own --shard K/N")
    trainer.setup()
    acc = trainer.accelerator
    cache = LatentCache.build(trainer.model.vae, trainer.train_set, acc.device, batch_size=args.batch_size,
                              num_workers=config.data.num_workers, autocast=acc.autocast, progress=True,
                              shard=shard, vae_sha256=trainer._vae_sha256)
    cache.save(args.out)
    of = f" (shard {shard} of {len(trainer.train_set)} objects)" if shard is not None else ""
    print(f"encoded {len(cache)} views of {len(cache.num_views)} objects{of} into {args.out}")
    return 0
