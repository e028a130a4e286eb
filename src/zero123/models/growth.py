"""Function-preserving growth of a trained UNet: more transformer layers, or attention at more resolutions.

A grown UNet starts as exactly the function of the UNet it grew from (so training continues from the trained
model instead of from scratch) and has more parameters to learn with:

* ``transformer_depth=D``: each ``Transformer2DModel`` gets ``D`` ``BasicTransformerBlock`` layers instead of its
  current number; the new layers have their three residual-branch outputs (``attn1.to_out``, ``attn2.to_out``,
  ``ff.net.2``) set to zero, so each is the identity until it learns.
* ``attention_levels=(0, 1, 2)``: resolution levels (0 = the full latent resolution) whose down and up blocks get
  attention (``DownBlock2D`` -> ``CrossAttnDownBlock2D``, ``UpBlock2D`` -> ``CrossAttnUpBlock2D``); the new
  ``Transformer2DModel`` has ``proj_out`` set to zero, so it returns its residual input.

The other new weights keep diffusers' random initialisation: zeroed outputs give them gradients once the output
weights move (as ControlNet's zero convolutions). Existing weights are copied unchanged.
"""

from __future__ import annotations

import re

import torch

from ..errors import Zero123Error

#: the residual-branch outputs of a diffusers ``BasicTransformerBlock``
_BLOCK_OUTPUTS = ("attn1.to_out.0.", "attn2.to_out.0.", "ff.net.2.")
_NEW_LAYER = re.compile(r"\.attentions\.\d+\.transformer_blocks\.(\d+)\.")


def _depth(config) -> int:
    depth = config.transformer_layers_per_block
    if not isinstance(depth, int):
        if len(set(depth)) != 1:
            raise Zero123Error(f"grow_unet supports one transformer depth for all blocks, the UNet has {list(depth)}")
        depth = int(depth[0])
    return depth


def _attention_levels(config) -> set[int]:
    return {i for i, kind in enumerate(config.down_block_types) if kind.startswith("CrossAttn")}


def grown_unet_config(config, transformer_depth: int | None = None, attention_levels=None) -> dict:
    """The diffusers config dict of ``config`` (a ``UNet2DConditionModel.config``) grown as asked.

    Growth only adds: a smaller depth, or a level list without one of the UNet's current attention levels, is a
    ``Zero123Error`` (removing layers does not preserve the function)."""
    cfg = dict(config)
    depth = _depth(config)
    levels_now = _attention_levels(config)
    n = len(config.down_block_types)
    if transformer_depth is not None:
        if int(transformer_depth) < depth:
            raise Zero123Error(f"grow_unet: transformer_depth {transformer_depth} is below the UNet's {depth}")
        cfg["transformer_layers_per_block"] = int(transformer_depth)
    if attention_levels is not None:
        levels = {int(i) for i in attention_levels}
        if not levels_now <= levels:
            raise Zero123Error(f"grow_unet: attention_levels {sorted(levels)} drop the UNet's current levels "
                               f"{sorted(levels_now)}")
        if not levels <= set(range(n)):
            raise Zero123Error(f"grow_unet: attention_levels {sorted(levels)} outside the UNet's levels 0..{n - 1}")
        for i in sorted(levels - levels_now):
            if config.down_block_types[i] != "DownBlock2D" or config.up_block_types[n - 1 - i] != "UpBlock2D":
                raise Zero123Error(f"grow_unet: level {i} has blocks {config.down_block_types[i]} / "
                                   f"{config.up_block_types[n - 1 - i]}, not DownBlock2D / UpBlock2D")
        cfg["down_block_types"] = ["CrossAttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(n)]
        cfg["up_block_types"] = ["CrossAttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(n))]
    return cfg


def _zeroed_output(key: str, old_depth: int) -> bool:
    """Whether the NEW weight ``key`` is a residual-branch output that must start at zero."""
    m = _NEW_LAYER.search(key)
    if m and int(m.group(1)) >= old_depth:
        # a new layer inside a Transformer2DModel (an existing one or a new one: in a new one, proj_out is zero
        # anyway, but zero layer outputs keep every new layer an identity on its own)
        return any(part in key for part in _BLOCK_OUTPUTS)
    return ".proj_out." in key  # a new Transformer2DModel's output projection


def grow_unet(unet, transformer_depth: int | None = None, attention_levels=None, seed: int | None = 0):
    """A new ``UNet2DConditionModel`` (float32, CPU, train mode as ``unet``) grown from ``unet`` as described in the
    module docstring; ``unet`` is left unchanged. ``seed`` seeds the random initialisation of the new weights.

    With nothing to add it returns a copy of ``unet``. The grown model computes exactly what ``unet`` computes
    (same inputs -> same noise prediction, up to float rounding) until it is trained.
    """
    from diffusers import UNet2DConditionModel

    old_depth = _depth(unet.config)
    cfg = grown_unet_config(unet.config, transformer_depth, attention_levels)
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        grown = UNet2DConditionModel.from_config(cfg)
    finally:
        torch.random.set_rng_state(generator_state)
    old = {k: v.detach().float().cpu() for k, v in unet.state_dict().items()}
    missing, unexpected = grown.load_state_dict(old, strict=False)
    if unexpected:  # cannot happen for additive growth; a guard against a diffusers layout change
        raise Zero123Error(f"grow_unet: {len(unexpected)} weights have no place in the grown UNet "
                           f"(e.g. {unexpected[0]})")
    with torch.no_grad():
        params = dict(grown.named_parameters())
        for key in missing:
            if _zeroed_output(key, old_depth):
                params[key].zero_()
    grown.train(unet.training)
    return grown.float()


def count_new_parameters(old, grown) -> int:
    """Parameters of ``grown`` that ``old`` does not have (by name)."""
    names = {n for n, _ in old.named_parameters()}
    return sum(p.numel() for n, p in grown.named_parameters() if n not in names)
