"""Building the models a training run starts from (``model:`` of a training config): a ``Zero123Model`` from a
checkpoint or from sizes, an ``AutoencoderKL`` for ``stage: vae``, and the EMA start from a checkpoint's EMA copy.

Training-specific (sizes from ``ModelConfig``, ``grow_unet``, ``vae_from`` / ``clip_from`` swaps); loading itself
goes through ``zero123.loading`` and the sizes through ``zero123.models.configs``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import Zero123Error
from .config import ModelConfig

def _sizes_error(what: str, exc: Exception) -> Zero123Error:
    return Zero123Error(f"model.{what}: {exc}".splitlines()[0])


def sizes_config(cfg: ModelConfig, image_size: int | None = None):
    """The ``Zero123Config`` a from-scratch model is built from (``preset`` or explicit LDM-style sizes)."""
    from ..models import configs as mc

    variant = cfg.variant or "zero123"
    if cfg.preset:
        presets = {"tiny": mc.tiny_config, "full": mc.full_size_config}
        if cfg.preset not in presets:
            raise Zero123Error(f"model.preset {cfg.preset!r} is unknown: use {' or '.join(presets)}, or give "
                               "model.unet/vae/clip sizes")
        return presets[cfg.preset](variant)
    image_size = int(cfg.image_size or image_size or 256)
    try:
        vae_kw = dict(cfg.vae)
        vae_kw.setdefault("resolution", image_size)
        vae = mc.sd_vae_config(**vae_kw)
    except TypeError as exc:
        raise _sizes_error("vae", exc) from None
    try:
        clip = mc.openai_clip_vision_config(**cfg.clip)
    except TypeError as exc:
        raise _sizes_error("clip", exc) from None
    down = 2 ** (len(vae["block_out_channels"]) - 1)
    if image_size % down:
        raise Zero123Error(f"image size {image_size} is not a multiple of the VAE downsampling {down}")
    unet_kw = dict(cfg.unet)
    unet_kw.setdefault("context_dim", clip["projection_dim"])
    unet_kw.setdefault("sample_size", image_size // down)
    unet_kw.setdefault("out_channels", vae["latent_channels"])
    unet_kw.setdefault("in_channels", 2 * vae["latent_channels"])
    try:
        unet = mc.sd_unet_config(**unet_kw)
    except TypeError as exc:
        raise _sizes_error("unet", exc) from None
    if unet["cross_attention_dim"] != clip["projection_dim"]:
        raise Zero123Error(f"model.unet.context_dim {unet['cross_attention_dim']} must equal the CLIP embed_dim "
                           f"{clip['projection_dim']}")
    if unet["sample_size"] * down != image_size:
        raise Zero123Error(f"model.unet.sample_size {unet['sample_size']} x VAE downsampling {down} != image size "
                           f"{image_size}")
    return mc.Zero123Config(unet=unet, vae=vae, clip=clip, variant=variant)


def _load_folder(cls, path, key: str, kind: str):
    """``cls.from_pretrained(path)`` of the folder named by ``model.<key>``, with one-line errors."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise Zero123Error(f"model.{key} {path}: not a {kind} folder (no config.json)")
    try:
        return cls.from_pretrained(path)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise Zero123Error(f"model.{key} {path}: cannot load ({str(exc).splitlines()[0]})") from None


def load_vae_folder(path):
    """A diffusers ``AutoencoderKL`` folder (``config.json`` + weights)."""
    from diffusers import AutoencoderKL

    return _load_folder(AutoencoderKL, path, "vae_from", "diffusers AutoencoderKL")


def load_clip_folder(path):
    """A transformers ``CLIPVisionModelWithProjection`` folder (``config.json`` + weights)."""
    from transformers import CLIPVisionModelWithProjection

    return _load_folder(CLIPVisionModelWithProjection, path, "clip_from", "transformers CLIP vision")


def build_model(cfg: ModelConfig, image_size: int | None = None, seed: int | None = 0, device=None):
    """The ``Zero123Model`` to train, float32 on CPU.

    ``init_from``: ``zero123.loading.load_model`` with the checkpoint's plain weights (``init_weights: plain``, as
    the original fine-tunes) or its EMA weights (``ema``). Otherwise random weights of ``sizes_config(cfg)`` with the
    camera projection identity-initialised (``CameraProjection.identity_init``, as Zero123 starts). ``grow_unet``:
    the loaded UNet grown with ``zero123.models.growth.grow_unet`` (the same function, more weights). ``vae_from`` /
    ``clip_from`` then replace the VAE / image encoder. ``device``: where random weights are initialised
    (a GPU initialises the 1.2 B full-size weights much faster than the CPU); loaded weights stay on the CPU.
    """
    if cfg.init_from:
        from ..loading import load_model

        ema = cfg.init_weights == "ema"
        model = load_model(cfg.init_from, variant=cfg.variant, use_ema=ema, weights_variant=None if ema else "plain",
                           original_config=cfg.original_config)
        model = model.float()
        if cfg.grow_unet:
            from ..models.growth import grow_unet

            model.unet = grow_unet(model.unet, seed=seed, **cfg.grow_unet)
    else:
        sizes = sizes_config(cfg, image_size)
        with torch.device(device or "cpu"):
            model = sizes.build(seed=seed)
        model.camera_projection.identity_init()
    if cfg.vae_from:
        vae = load_vae_folder(cfg.vae_from)
        if vae.config.latent_channels != model.latent_channels:
            raise Zero123Error(f"model.vae_from has {vae.config.latent_channels} latent channels, the UNet expects "
                               f"{model.latent_channels}")
        if len(vae.config.block_out_channels) != len(model.vae.config.block_out_channels):
            raise Zero123Error(f"model.vae_from downsamples by {2 ** (len(vae.config.block_out_channels) - 1)}, "
                               f"the model was sized for {model.latent_downsample}: give model.vae sizes like it")
        model.vae = vae
    if cfg.clip_from:
        enc = load_clip_folder(cfg.clip_from)
        if enc.config.projection_dim != model.camera_projection.config.embed_dim:
            raise Zero123Error(f"model.clip_from embeds to {enc.config.projection_dim} dims, the camera projection "
                               f"takes {model.camera_projection.config.embed_dim}")
        model.image_encoder = enc
    return model.float().train()


def build_vae(cfg: ModelConfig, image_size: int | None = None, seed: int | None = 0):
    """The ``AutoencoderKL`` of a ``stage: vae`` run: ``vae_from``, the VAE of ``init_from``, or random weights of
    the (preset or explicit) ``vae`` sizes."""
    if cfg.vae_from:
        return load_vae_folder(cfg.vae_from).float().train()
    if cfg.init_from:
        return build_model(cfg, image_size, seed).vae
    from diffusers import AutoencoderKL

    if seed is not None:
        torch.manual_seed(seed)
    return AutoencoderKL(**sizes_config(cfg, image_size).vae).float().train()


# ---------------------------------------------------------------------------------------------------------------
# the EMA start


def checkpoint_ema_unet(cfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The UNet state of ``init_from``'s EMA weights when training starts from its plain ones and it has an EMA
    copy (an LDM file's ``model_ema.*``, a folder's ``.ema`` / ``.fp16_ema`` files), else ``None``."""
    if not cfg.init_from or cfg.init_weights != "plain" or cfg.grow_unet:
        return None
    from ..loading import load_model

    model, report = load_model(cfg.init_from, variant=cfg.variant, use_ema=True, return_report=True,
                               original_config=cfg.original_config)
    return {k: v.float() for k, v in model.unet.state_dict().items()} if report.uses_ema else None


def start_ema_from_checkpoint(ema, named_trainable, cfg: ModelConfig) -> bool:
    """Set the EMA's UNet shadow weights to the checkpoint's EMA copy (``checkpoint_ema_unet``), as the original
    keeps LitEma's ``model_ema.*`` as the average's start; the other parts (``cc_projection``, which LitEma does
    not cover) start from the training weights. Returns whether it did."""
    state = checkpoint_ema_unet(cfg)
    if state is None:
        return False
    prefix = "model.unet."
    with torch.no_grad():
        for (name, _), shadow in zip(named_trainable, ema.shadow_params):
            if name.startswith(prefix):
                shadow.copy_(state[name[len(prefix):]])
    return True
