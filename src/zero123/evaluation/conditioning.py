"""Does a model use its conditioning? The training loss on held-out pairs with the true and with swapped inputs.

For a batch of (input view, target view) pairs, the Zero123 denoising loss (``DiffusionObjective``, no CFG dropout,
fixed noise and timesteps) is computed four ways:

* ``true``: the pairs as they are;
* ``shuffled_input``: each target gets another pair's input image (camera kept);
* ``shuffled_camera``: each target gets another pair's camera change (input kept);
* ``input_is_target``: the input image is the target itself, camera change zero (an easy copy).

A model that uses its input image has ``shuffled_input`` clearly above ``true`` and ``input_is_target`` clearly
below; one that uses the camera has ``shuffled_camera`` above ``true``. The ratios are printed per timestep.

    python -m zero123.evaluation.conditioning --data renders --split test            # the bundled model
    python -m zero123.evaluation.conditioning --data renders -c runs/x/final --pairs 128 --out cond.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

VARIANTS = ("true", "shuffled_input", "shuffled_camera", "input_is_target")


@torch.no_grad()
def conditioning_losses(model, dataset, num_pairs: int = 64, timesteps=(200, 500, 800), seed: int = 0,
                        batch_size: int = 32) -> dict:
    """``{variant: {t: loss}}`` (mean squared eps error) on the first ``num_pairs`` draws of ``dataset``
    (a ``ViewPairDataset``); ``model`` a ``Zero123Model`` (evaluated in float32 on its device)."""
    from ..camera import embedding_from_rt
    from ..training.objectives import DiffusionObjective, PairCollate

    model = model.float().eval()
    objective = DiffusionObjective(model).eval()
    n = int(num_pairs)
    if n < 2:
        raise ValueError("need at least 2 pairs (the shuffles swap between pairs)")
    h = model.unet.config.sample_size
    # the training collate: stacked pairs plus the noise of each draw (draws 0..n-1, seeded by ``seed``)
    batch = PairCollate(seed, (model.latent_channels, h, h))([dataset[(d, d % len(dataset))] for d in range(n)])
    # camera change zero from the target's own pose (Stable Zero123's embedding also carries its elevation)
    target_rts = [dataset.load_view(int(i), int(v))[1] for i, v in zip(batch["object_index"], batch["target_view"])]
    zero_cam = torch.stack([embedding_from_rt(model.variant.value, rt, rt).reshape(4) for rt in target_rts])
    roll = torch.arange(n).roll(1)
    inputs = {
        "true": (batch["cond"], batch["camera"]),
        "shuffled_input": (batch["cond"][roll], batch["camera"]),
        "shuffled_camera": (batch["cond"], batch["camera"][roll]),
        "input_is_target": (batch["target"], zero_cam),
    }
    dev = model.device
    out = {}
    for name, (cond, cam) in inputs.items():
        out[name] = {}
        for t in timesteps:
            total = 0.0
            for s in range(0, n, batch_size):
                sl = slice(s, min(n, s + batch_size))
                m = sl.stop - sl.start
                res = objective(batch["target"][sl].to(dev), cond[sl].to(dev), cam[sl].to(dev),
                                batch["noise"][sl].to(dev), batch["posterior_noise"][sl].to(dev),
                                torch.full((m,), int(t), device=dev, dtype=torch.long), torch.ones(m, device=dev))
                total += float(res["diffusion_loss"]) * m
            out[name][int(t)] = total / n
    return out


def format_table(losses: dict) -> str:
    ts = list(next(iter(losses.values())).keys())
    lines = ["| inputs | " + " | ".join(f"loss t={t} (vs true)" for t in ts) + " |",
             "|---|" + "---|" * len(ts)]
    for name, row in losses.items():
        cells = [f"{row[t]:.4f} ({row[t] / losses['true'][t]:.3f}x)" for t in ts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a dataset written by zero123 render-dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", "-c", default=None, help="model (default: the bundled one)")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--timesteps", type=int, nargs="+", default=[200, 500, 800])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the losses as JSON here")
    args = p.parse_args(argv)
    from ..errors import Zero123Error
    from ..loading import load_model
    from ..training.dataset import ViewPairDataset

    try:
        model = load_model(args.checkpoint, dtype=torch.float32, device=args.device)
        ds = ViewPairDataset(args.data, args.split, image_size=model.image_size, variant=model.variant.value,
                             seed=args.seed)
        if len(ds) == 0:
            raise Zero123Error(f"dataset {args.data}: split {args.split!r} has no objects")
        losses = conditioning_losses(model, ds, args.pairs, args.timesteps, args.seed)
    except (Zero123Error, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(losses))
    if args.out:
        from ..export.writers import atomic_write_bytes

        atomic_write_bytes(args.out, (json.dumps({"settings": vars(args), "losses": losses}, indent=2)
                                      + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
