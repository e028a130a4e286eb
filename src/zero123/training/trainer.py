"""Training and fine-tuning of Zero123-family models with ``accelerate`` (CPU, one GPU, several GPUs / nodes).

The diffusion objective is Zero123's (``ldm.models.diffusion.ddpm.LatentDiffusion`` with hybrid conditioning):

* target latents ``z0 = VAE posterior sample(target) x scaling_factor``; concat latent = posterior MODE of the input
  view (unscaled); CLIP image embedding of the input view; frozen VAE and CLIP (encoded without gradients);
* ``t ~ U{0..999}``, ``eps ~ N(0, I)``, ``z_t = sqrt(acp[t]) z0 + sqrt(1 - acp[t]) eps``;
* classifier-free-guidance dropout per sample with ``u ~ U(0,1)`` and ``p = 0.05``: ``u < 2p`` replaces the CLIP
  embedding by zeros BEFORE the camera projection (T is still appended), ``p <= u < 3p`` zeroes the concat latent;
* loss = mean squared error between the UNet's eps and ``eps`` (optionally Min-SNR-weighted per sample,
  ``objective.snr_gamma``; not in Zero123);
* AdamW (lr 1e-4, ``cc_projection`` at 10x), linear warm-up from 1e-6 x lr over 100 steps then constant, EMA.

Reproducibility: all randomness of a sample (view pair, ``t``, ``u``, ``eps``, the posterior noise) is a function of
``(seed, draw number)`` (see ``zero123.training.dataset``), so a resumed run continues exactly as an uninterrupted
one, and the same global batch gives the same data and noise on 1 or N processes.

``stage: vae`` trains an ``AutoencoderKL`` alone (mean L1 + ``kl_weight`` x KL, LDM's weighting) with the same
machinery, so a small model can get its own VAE before its UNet (``model.vae_from`` then points at the export).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import Zero123Error
from ..schedulers import NUM_TRAIN_TIMESTEPS
from .config import LR_DECAYS, ModelConfig, TrainConfig, save_config
from .dataset import DrawSampler, DrawStream, ViewPairDataset

LOG_NAME = "log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"
MODEL_STATE_NAME = "model_{}.safetensors"
FINAL_DIR = "final"
SAMPLES_DIR = "samples"


# ---------------------------------------------------------------------------------------------------------------
# pure pieces of the objective


def cfg_dropout_masks(u: torch.Tensor, p: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero123's classifier-free-guidance dropout from per-sample uniforms ``u`` ``[B]`` in [0, 1).

    Returns boolean ``(drop_clip, drop_concat)`` ``[B]``: ``u < 2p`` drops the CLIP embedding, ``p <= u < 3p``
    drops the concat latent (so ``p`` only-embedding, ``p`` both, ``p`` only-concat; 5% each for p = 0.05).
    """
    return u < 2 * p, (u >= p) & (u < 3 * p)


def apply_cfg_dropout(clip_embedding: torch.Tensor, concat_latent: torch.Tensor, u: torch.Tensor, p: float = 0.05):
    """Zero the CLIP embedding ``[B,1,D]`` (before projection) and the concat latent ``[B,C,h,w]`` per
    ``cfg_dropout_masks``."""
    drop_clip, drop_concat = cfg_dropout_masks(u, p)
    clip_embedding = torch.where(drop_clip.view(-1, 1, 1), torch.zeros_like(clip_embedding), clip_embedding)
    concat_latent = concat_latent * (~drop_concat).view(-1, 1, 1, 1).to(concat_latent.dtype)
    return clip_embedding, concat_latent


def warmup_factor(step: int, warmup_steps: int, start_factor: float = 1e-6) -> float:
    """lr multiplier at optimizer step ``step`` (0-based): linear from ``start_factor`` to 1 over ``warmup_steps``,
    then 1 (LDM ``LambdaLinearScheduler`` with ``f_start``, ``f_max = f_min = 1``)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def decay_factor(step: int, warmup_steps: int, max_steps: int, decay: str = "constant",
                 final_factor: float = 0.0) -> float:
    """lr multiplier after the warm-up at optimizer step ``step`` (0-based): 1 until ``warmup_steps``, then
    ``constant`` 1, or a ``cosine`` / ``linear`` decay from 1 to ``final_factor`` reached at ``max_steps``."""
    if decay not in LR_DECAYS:
        raise Zero123Error(f"optim.decay must be one of {', '.join(LR_DECAYS)}, got {decay!r}")
    if decay == "constant" or step <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if decay == "cosine":
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - final_factor) * progress


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of an eps-prediction loss (Hang et al. 2023): ``min(SNR, gamma) / SNR`` with
    ``SNR = acp / (1 - acp)``, from ``acp[t]`` (any shape; same shape out, in (0, 1]). Steps with SNR <= gamma
    (high noise) keep weight 1; less noisy ones get ``gamma / SNR``."""
    snr = alphas_cumprod_t / (1.0 - alphas_cumprod_t)
    return snr.clamp(max=float(gamma)) / snr


def _draw_seed(seed: int, draw: int) -> int:
    return int(np.random.SeedSequence([int(seed), 2, int(draw)]).generate_state(1, np.uint64)[0])


def draw_noise(draws, seed: int, latent_shape) -> dict:
    """Per-sample randomness, a pure function of ``(seed, draw)``: ``timesteps`` long ``[B]`` in [0, 1000),
    ``dropout_u`` ``[B]`` in [0, 1), ``noise`` and ``posterior_noise`` float32 ``[B, *latent_shape]``."""
    t, u, noise, post = [], [], [], []
    for d in torch.as_tensor(draws).reshape(-1).tolist():
        g = torch.Generator().manual_seed(_draw_seed(seed, d))
        t.append(torch.randint(0, NUM_TRAIN_TIMESTEPS, (1,), generator=g))
        u.append(torch.rand(1, generator=g))
        noise.append(torch.randn(tuple(latent_shape), generator=g))
        post.append(torch.randn(tuple(latent_shape), generator=g))
    return {"timesteps": torch.cat(t), "dropout_u": torch.cat(u), "noise": torch.stack(noise),
            "posterior_noise": torch.stack(post)}


class PairCollate:
    """DataLoader ``collate_fn``: stacks dataset items and adds ``draw_noise`` (runs in the loader workers)."""

    def __init__(self, seed: int, latent_shape):
        self.seed = int(seed)
        self.latent_shape = tuple(int(s) for s in latent_shape)

    def __call__(self, items: list) -> dict:
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        batch.update(draw_noise(batch["draw"], self.seed, self.latent_shape))
        return batch


def vae_reconstruction_loss(vae, images: torch.Tensor, posterior_noise: torch.Tensor, kl_weight: float):
    """``(loss, reconstruction)``: mean |x - D(z)| + kl_weight x KL(q(z|x) || N(0,I)) / (3 H W), ``z`` a posterior
    sample drawn with ``posterior_noise``; per pixel, the same weighting as LDM's per-sample sums."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.mean + dist.std * posterior_noise.to(dist.mean.dtype)
    recon = vae.decode(z).sample
    rec = (recon.float() - images.float()).abs().mean()
    kl = dist.kl().float().mean() / images[0].numel()
    return rec + kl_weight * kl, recon


class DiffusionObjective(nn.Module):
    """The Zero123 training loss around a ``Zero123Model`` (what ``accelerate`` wraps in DDP).

    ``forward(target, cond, camera, noise, posterior_noise, timesteps, dropout_u)`` with images ``[B,3,H,W]`` in
    [-1,1], camera ``[B,4]``, noises ``[B,C,h,w]``, timesteps long ``[B]``, dropout_u ``[B]``; returns
    ``{"loss", "diffusion_loss"[, "vae_loss"]}`` (scalars; ``diffusion_loss`` is the plain eps MSE, ``loss`` what
    is optimised: the Min-SNR-weighted MSE when ``snr_gamma`` is set, plus ``vae_loss``). With a frozen VAE the
    posteriors may be given instead of encoded: ``target_mean``, ``target_std``, ``cond_mean`` ``[B,C,h,w]`` (then
    ``target`` may be None). With ``train_vae`` the VAE also learns its reconstruction objective on the target
    images (no diffusion gradient reaches it); with ``train_image_encoder`` the CLIP encoder gets the diffusion
    gradient.
    """

    def __init__(self, model, cfg_dropout: float = 0.05, train_vae: bool = False, kl_weight: float = 1e-6,
                 train_image_encoder: bool = False, snr_gamma: float | None = None):
        super().__init__()
        self.model = model
        self.cfg_dropout = float(cfg_dropout)
        self.train_vae = bool(train_vae)
        self.kl_weight = float(kl_weight)
        self.train_image_encoder = bool(train_image_encoder)
        self.snr_gamma = None if snr_gamma is None else float(snr_gamma)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_image_encoder:  # frozen parts stay in eval mode
            self.model.image_encoder.eval()
        if not self.train_vae:
            self.model.vae.eval()
        return self

    def forward(self, target, cond, camera, noise, posterior_noise, timesteps, dropout_u, target_mean=None,
                target_std=None, cond_mean=None):
        m = self.model
        out = {}
        with torch.no_grad():
            if target_mean is None:
                # one VAE pass for both views: GroupNorm only, so batching changes nothing
                b = target.shape[0]
                dist = m.vae.encode(torch.cat([target, cond]).to(m.vae.dtype)).latent_dist
                target_mean, target_std, cond_mean = dist.mean[:b], dist.std[:b], dist.mean[b:]
            # else: the posteriors of a frozen VAE, looked up in a LatentCache (``data.cache_latents``)
            z0 = (target_mean.float() + target_std.float() * posterior_noise.float()) * m.scaling_factor
            concat = cond_mean.float()  # concat_latent: posterior mode, unscaled
        with torch.set_grad_enabled(self.train_image_encoder and torch.is_grad_enabled()):
            clip = m.clip_embedding(cond).float()
        clip, concat = apply_cfg_dropout(clip, concat, dropout_u, self.cfg_dropout)
        token, concat = m.conditioning(cond, camera, clip_embedding=clip, concat_latent=concat)
        acp = m.alphas_cumprod.to(z0.device)[timesteps].float().view(-1, 1, 1, 1)
        noisy = acp.sqrt() * z0 + (1.0 - acp).sqrt() * noise.float()
        eps = m.predict_noise(noisy, timesteps, token, concat)
        per_sample = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)  # [B]
        out["diffusion_loss"] = per_sample.mean()
        if self.snr_gamma is None:
            out["loss"] = out["diffusion_loss"]
        else:
            out["loss"] = (min_snr_weights(acp.view(-1), self.snr_gamma) * per_sample).mean()
        if self.train_vae:
            out["vae_loss"], _ = vae_reconstruction_loss(m.vae, target, posterior_noise, self.kl_weight)
            out["loss"] = out["loss"] + out["vae_loss"]
        return out


class VAEObjective(nn.Module):
    """``stage: vae``: ``forward(target, posterior_noise, **unused)`` -> ``{"loss"}`` of
    ``vae_reconstruction_loss`` on the target views."""

    def __init__(self, vae, kl_weight: float = 1e-6):
        super().__init__()
        self.vae = vae
        self.kl_weight = float(kl_weight)

    def forward(self, target, posterior_noise, **unused):
        loss, _ = vae_reconstruction_loss(self.vae, target, posterior_noise, self.kl_weight)
        return {"loss": loss}


# ---------------------------------------------------------------------------------------------------------------
# building models


def _sizes_error(what: str, exc: Exception) -> Zero123Error:
    return Zero123Error(f"model.{what}: {exc}".splitlines()[0])


def sizes_config(cfg: ModelConfig, image_size: int | None = None):
    """The ``Zero123Config`` a from-scratch model is built from (``preset`` or explicit LDM-style sizes)."""
    from ..models import configs as mc

    variant = cfg.variant or "zero123"
    if cfg.preset:
        presets = {"tiny": mc.tiny_config, "full": mc.full_size_config}
        if hasattr(mc, "small_config"):
            presets["small"] = mc.small_config
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


def load_vae_folder(path):
    """A diffusers ``AutoencoderKL`` folder (``config.json`` + weights)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise Zero123Error(f"model.vae_from {path}: not a diffusers AutoencoderKL folder (no config.json)")
    try:
        return AutoencoderKL.from_pretrained(path)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise Zero123Error(f"model.vae_from {path}: cannot load ({str(exc).splitlines()[0]})") from None


def load_clip_folder(path):
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    if not (path / "config.json").is_file():
        raise Zero123Error(f"model.clip_from {path}: not a transformers CLIP vision folder (no config.json)")
    try:
        return CLIPVisionModelWithProjection.from_pretrained(path)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise Zero123Error(f"model.clip_from {path}: cannot load ({str(exc).splitlines()[0]})") from None


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
# samples and export (isolated: the only places that know about the pipeline / the folder format)


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


def sample_views(model, cond: torch.Tensor, camera: torch.Tensor, steps: int = 50, guidance_scale: float = 3.0,
                 eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Novel views ``[N,3,H,W]`` in [-1,1] of input views ``cond`` ``[N,3,H,W]`` for cameras ``[N,4]`` (DDIM,
    classifier-free guidance, through ``Zero123Pipeline.from_model``)."""
    from ..pipelines.zero123_pipeline import Zero123Pipeline

    pipe = Zero123Pipeline.from_model(model)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        latents = pipe.sample(cond.to(model.device), camera.to(model.device), num_inference_steps=steps,
                              guidance_scale=guidance_scale, eta=eta, generator=gen)
        return model.decode_latents(latents).float().clamp(-1, 1)


def save_image_grid(rows: list, path) -> Path:
    """Write rows of images (each a list of ``[3,H,W]`` tensors in [-1,1]) as one PNG, atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * w, len(rows) * h), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            arr = ((img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            grid.paste(Image.fromarray(arr), (j * w, i * h))
    from ..utils.atomic import atomic_save_image

    return atomic_save_image(grid, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    from ..utils.atomic import replace_folder

    replace_folder(tmp, final)


def vae_fingerprint(vae) -> str:
    """sha256 (hex) of an ``AutoencoderKL``'s weights and ``scaling_factor``: what a diffusion run's latents depend
    on. A checkpoint records it so that a resume on another VAE is refused instead of silently training the UNet
    (and, with ``data.cache_latents``, reading cached latents) of one VAE with another."""
    import hashlib

    h = hashlib.sha256(repr(float(vae.config.scaling_factor)).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def export_model(model, folder) -> Path:
    """Write a trained ``Zero123Model`` as a diffusers-format folder (``zero123.loading.save_pretrained``)."""
    from ..loading import save_pretrained

    return save_pretrained(model, folder)


def export_vae(vae, folder) -> Path:
    """Write an ``AutoencoderKL`` folder (config + safetensors) atomically; usable as ``model.vae_from``."""
    from ..utils.atomic import atomic_folder

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    """What a run produced: the last optimizer step, its loss, and the files."""

    step: int
    loss: float | None
    output_dir: Path
    log_path: Path
    checkpoint: Path | None
    export_dir: Path | None


def make_accelerator(config: TrainConfig):
    """The ``Accelerator`` of a run (mixed precision from the config, else from ``accelerate launch``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = dict(gradient_accumulation_steps=config.gradient_accumulation_steps,
                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)])
    if config.mixed_precision is not None:
        kwargs["mixed_precision"] = config.mixed_precision
    if config.compile:
        kwargs["dynamo_backend"] = "inductor"
    return Accelerator(**kwargs)


def find_checkpoint(output_dir, which: str = "latest") -> Path | None:
    """``latest``: the newest complete checkpoint under ``OUTPUT/checkpoints`` (None if there is none); otherwise
    ``which`` is a checkpoint folder (error if it is not one)."""
    if which != "latest":
        path = Path(which)
        if not (path / STATE_NAME).is_file():
            raise Zero123Error(f"--resume {which}: not a training checkpoint (no {STATE_NAME})")
        return path
    ck = Path(output_dir) / CHECKPOINTS_DIR
    done = sorted(p for p in ck.glob("step_*") if (p / STATE_NAME).is_file()) if ck.is_dir() else []
    return done[-1] if done else None


class Trainer:
    """One training run (``config.stage`` = ``diffusion`` or ``vae``).

    ``Trainer(config).train(resume=None | "latest" | PATH)`` -> ``TrainResult``. Writes under ``output_dir``:
    ``config.yaml``, ``log.jsonl`` (one JSON line per ``log_every`` steps: step, loss, lr, samples/s, ...),
    ``checkpoints/step_XXXXXXXX/`` (every ``checkpoint_every`` steps and at the end), ``samples/step_XXXXXXXX.png``
    and ``final/`` (the EMA weights: a diffusers-format Zero123 folder, or an ``AutoencoderKL`` folder for the
    VAE stage). Create one ``Trainer`` per process (run under ``accelerate launch`` for several).
    """

    def __init__(self, config: TrainConfig, accelerator=None):
        self.config = config.validate()
        self.accelerator = accelerator or make_accelerator(config)
        self.out = Path(config.output_dir)
        self._setup_done = False
        self._vae_sha256 = None  # diffusion stage with a frozen VAE: vae_fingerprint of it (setup)

    # ----- setup -------------------------------------------------------------------------------------------
    @property
    def is_vae_stage(self) -> bool:
        return self.config.stage == "vae"

    def _frozen_dtype(self) -> torch.dtype:
        mp = self.accelerator.mixed_precision
        if self.config.model.frozen_dtype == "fp32" or mp == "no":
            return torch.float32
        return torch.float16 if mp == "fp16" else torch.bfloat16

    def setup(self) -> None:
        """Build the model, data, optimizer and EMA; ``accelerate``-prepare them. Called by ``train``."""
        if self._setup_done:
            return
        from accelerate.utils import set_seed

        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)  # same initial weights on every process
        if acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
        from ..data.layout import read_manifest

        manifest_size = read_manifest(cfg.data.root).image_size
        size_hint = cfg.model.image_size or cfg.data.image_size or manifest_size
        frozen = self._frozen_dtype()
        if self.is_vae_stage:
            vae = build_vae(cfg.model, size_hint, cfg.seed)
            if cfg.model.gradient_checkpointing:
                vae.enable_gradient_checkpointing()
            if cfg.model.vae_decoder_only:  # the encoder (image -> latent) stays as it is
                vae.encoder.requires_grad_(False)
                if vae.quant_conv is not None:
                    vae.quant_conv.requires_grad_(False)
            objective = VAEObjective(vae, cfg.objective.kl_weight)
            self.image_size = int(vae.config.sample_size)
            down = 2 ** (len(vae.config.block_out_channels) - 1)
            self.latent_shape = (vae.config.latent_channels, self.image_size // down, self.image_size // down)
            groups = [{"params": [p for p in vae.parameters() if p.requires_grad], "lr": cfg.optim.vae_lr}]
            self.model = vae
        else:
            model = build_model(cfg.model, size_hint, cfg.seed, device=acc.device)
            train_enc = cfg.model.train_image_encoder
            # a loaded checkpoint (init_from) arrives frozen for inference: the trained parts are set explicitly
            model.unet.requires_grad_(True)
            model.camera_projection.requires_grad_(True)
            model.image_encoder.requires_grad_(train_enc).train(train_enc)
            model.vae.requires_grad_(not cfg.model.freeze_vae)
            # the frozen VAE's identity (before any cast), recorded in checkpoints and checked on resume
            self._vae_sha256 = vae_fingerprint(model.vae) if cfg.model.freeze_vae else None
            if frozen != torch.float32:  # nn.Module.to: diffusers' override warns about an empty fp32 list
                if not train_enc:
                    nn.Module.to(model.image_encoder, frozen)
                if cfg.model.freeze_vae:
                    nn.Module.to(model.vae, frozen)
            if cfg.model.gradient_checkpointing:
                model.unet.enable_gradient_checkpointing()
                if not cfg.model.freeze_vae:
                    model.vae.enable_gradient_checkpointing()
            objective = DiffusionObjective(model, cfg.objective.cfg_dropout, train_vae=not cfg.model.freeze_vae,
                                           kl_weight=cfg.objective.kl_weight, train_image_encoder=train_enc,
                                           snr_gamma=cfg.objective.snr_gamma)
            self.image_size = model.image_size
            h = model.unet.config.sample_size
            self.latent_shape = (model.latent_channels, h, h)
            groups = [{"params": list(model.unet.parameters()), "lr": cfg.optim.lr},
                      {"params": list(model.camera_projection.parameters()),
                       "lr": cfg.optim.lr * cfg.optim.projection_lr_scale}]
            if train_enc:
                groups.append({"params": list(model.image_encoder.parameters()), "lr": cfg.optim.lr})
            if not cfg.model.freeze_vae:
                groups.append({"params": list(model.vae.parameters()), "lr": cfg.optim.vae_lr})
            self.model = model
        if cfg.data.image_size is not None and cfg.data.image_size != self.image_size:
            raise Zero123Error(f"data.image_size {cfg.data.image_size} differs from the model's image size "
                               f"{self.image_size}")
        for g in groups:
            g["base_lr"] = g["lr"]
        objective.to(acc.device)
        self.named_trainable = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
        self.trainable = [p for _, p in self.named_trainable]
        optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
                                      eps=cfg.optim.eps)
        self.ema = None
        if cfg.ema.enabled:
            from diffusers.training_utils import EMAModel

            # foreach: a few multi-tensor kernels per step instead of ~7 small ones per parameter
            self.ema = EMAModel(self.trainable, decay=cfg.ema.decay, update_after_step=cfg.ema.update_after_step,
                                foreach=True)
            if not self.is_vae_stage:
                start_ema_from_checkpoint(self.ema, self.named_trainable, cfg.model)
        self.objective, self.optimizer = acc.prepare(objective, optimizer)
        acc.register_save_state_pre_hook(self._save_models_hook)
        acc.register_load_state_pre_hook(self._load_models_hook)

        data_kw = dict(image_size=self.image_size, with_cond=not self.is_vae_stage,
                       variant="zero123" if self.is_vae_stage else self.model.variant.value)
        cached = cfg.data.cache_latents and not self.is_vae_stage
        self.train_set = ViewPairDataset(cfg.data.root, cfg.data.split, seed=cfg.seed,
                                         max_objects=cfg.data.max_objects, same_view_prob=cfg.data.same_view_prob,
                                         with_target=not cached, **data_kw)
        if len(self.train_set) == 0:
            raise Zero123Error(f"dataset {cfg.data.root}: split {cfg.data.split!r} has no objects")
        self.latent_cache = None
        if cached:  # the frozen VAE's posteriors of every training view, encoded once (zero123.training.latent_cache)
            from .latent_cache import LatentCache

            t0 = time.perf_counter()
            if cfg.data.latent_cache_file:
                self.latent_cache = LatentCache.load(cfg.data.latent_cache_file, acc.device)
                self.latent_cache.check_matches(self.train_set, self._vae_sha256, cfg.data.latent_cache_file)
            else:
                self.latent_cache = LatentCache.build(self.model.vae, self.train_set, acc.device,
                                                      batch_size=max(cfg.batch_size, 64),
                                                      num_workers=cfg.data.num_workers, autocast=acc.autocast,
                                                      progress=acc.is_main_process)
            self._print(f"latent cache: {len(self.latent_cache)} views "
                        f"{'read' if cfg.data.latent_cache_file else 'encoded'} in {time.perf_counter() - t0:.1f} s")
        self.val_set = ViewPairDataset(cfg.data.root, cfg.data.val_split, seed=cfg.seed + 1, **data_kw)
        if len(self.val_set) == 0:
            self.val_set = ViewPairDataset(cfg.data.root, cfg.data.split, seed=cfg.seed + 1,
                                           max_objects=cfg.data.max_objects, **data_kw)
        self.collate = PairCollate(cfg.seed, self.latent_shape)
        self.val_collate = PairCollate(cfg.seed + 1, self.latent_shape)
        self.global_batch = cfg.batch_size * acc.num_processes * cfg.gradient_accumulation_steps
        self._setup_done = True

    def _save_models_hook(self, models, weights, output_dir):
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            for i, m in enumerate(models):
                sd = self.accelerator.unwrap_model(m, keep_torch_compile=False).state_dict()
                save_file({k: v.detach().contiguous() for k, v in sd.items()},
                          os.path.join(output_dir, MODEL_STATE_NAME.format(i)))
        weights.clear()  # the weights are written above, without DDP's "module." / compile's "_orig_mod." prefixes

    def _load_device(self) -> str:
        """This process's device as safetensors names it: "cuda:1", but "cpu" (a multi-process CPU run's
        accelerator device is "cpu:0", which safetensors rejects)."""
        d = self.accelerator.device
        return "cpu" if d.type == "cpu" else str(d)

    def _load_models_hook(self, models, input_dir):
        from safetensors.torch import load_file

        while models:
            i = len(models) - 1
            m = models.pop()
            path = os.path.join(input_dir, MODEL_STATE_NAME.format(i))
            if not os.path.isfile(path):
                raise Zero123Error(f"checkpoint {input_dir}: missing {MODEL_STATE_NAME.format(i)}")
            sd = load_file(path, device=self._load_device())
            try:
                self.accelerator.unwrap_model(m, keep_torch_compile=False).load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise Zero123Error(f"checkpoint {input_dir} does not match this model "
                                   f"({str(exc).splitlines()[0]})") from None

    # ----- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, draws: int) -> Path:
        """Write ``OUTPUT/checkpoints/step_XXXXXXXX`` (weights, optimizer, EMA, step/draw counters) atomically."""
        from safetensors.torch import save_file

        acc, cfg = self.accelerator, self.config
        root = self.out / CHECKPOINTS_DIR
        final = root / f"step_{step:08d}"
        tmp = root / f".step_{step:08d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process has written its part before the folder is renamed
        if acc.is_main_process:
            if self.ema is not None:
                save_file({n: s.detach().contiguous() for (n, _), s in zip(self.named_trainable,
                                                                           self.ema.shadow_params)},
                          str(tmp / EMA_NAME))
            state = {"step": step, "draws": draws, "stage": cfg.stage, "seed": cfg.seed,
                     "global_batch": self.global_batch, "num_processes": acc.num_processes,
                     "ema_optimization_step": None if self.ema is None else self.ema.optimization_step,
                     "time": time.time()}
            if self._vae_sha256 is not None:
                state["vae_sha256"] = self._vae_sha256
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=1))
            _replace_dir(tmp, final)
            if cfg.checkpoints_total_limit:
                done = sorted(p for p in root.glob("step_*") if (p / STATE_NAME).is_file())
                for old in done[: max(0, len(done) - cfg.checkpoints_total_limit)]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path) -> tuple[int, int]:
        """Restore a checkpoint written by ``save_checkpoint``; returns ``(step, draws)``."""
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / STATE_NAME).read_text())
        if state.get("stage") != self.config.stage:
            raise Zero123Error(f"checkpoint {path} is from a stage {state.get('stage')!r} run, this run is "
                               f"stage {self.config.stage!r}")
        if None not in (self._vae_sha256, state.get("vae_sha256")) and state["vae_sha256"] != self._vae_sha256:
            raise Zero123Error(f"checkpoint {path} was trained on another VAE than this run's (model.vae_from / "
                               "model.init_from): its latents differ; resume with the VAE it was trained on")
        self.accelerator.load_state(str(path))
        if self.ema is not None:
            ema_path = path / EMA_NAME
            if ema_path.is_file():
                shadow = load_file(str(ema_path), device=self._load_device())
                with torch.no_grad():
                    for (n, _), s in zip(self.named_trainable, self.ema.shadow_params):
                        s.copy_(shadow[n])
                self.ema.optimization_step = int(state.get("ema_optimization_step") or state["step"])
            else:  # checkpoint written without EMA: start the average from the restored weights
                self.ema = type(self.ema)(self.trainable, decay=self.config.ema.decay,
                                          update_after_step=self.config.ema.update_after_step)
        if state.get("seed") != self.config.seed:
            self._print(f"warning: checkpoint seed {state.get('seed')} != config seed {self.config.seed}: "
                        "the data order and noise continue with the new seed")
        return int(state["step"]), int(state["draws"])

    # ----- helpers -----------------------------------------------------------------------------------------
    def _print(self, msg: str) -> None:
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    def _to_device(self, batch: dict) -> dict:
        """The batch on the training device; a batch without target images (the training loader's under
        ``data.cache_latents``) gets the cached posteriors ``target_mean``, ``target_std``, ``cond_mean``."""
        dev = self.accelerator.device
        out = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        if "target" not in batch and not self.is_vae_stage:
            if self.latent_cache is None:
                raise Zero123Error("a training batch without target images needs data.cache_latents")
            out["target_mean"], out["target_std"] = self.latent_cache.lookup(batch["object_index"],
                                                                             batch["target_view"])
            out["cond_mean"], _ = self.latent_cache.lookup(batch["object_index"], batch["cond_view"])
        return out

    def _inputs(self, batch: dict) -> dict:
        if self.is_vae_stage:
            return {"target": batch["target"], "posterior_noise": batch["posterior_noise"]}
        inputs = {k: batch[k] for k in ("cond", "camera", "noise", "posterior_noise", "timesteps", "dropout_u")}
        inputs["target"] = batch.get("target")
        for k in ("target_mean", "target_std", "cond_mean"):
            if k in batch:
                inputs[k] = batch[k]
        return inputs

    def _set_lr(self, step: int) -> float:
        o = self.config.optim
        f = warmup_factor(step, o.warmup_steps, o.warmup_start_factor) * decay_factor(
            step, o.warmup_steps, self.config.max_steps, o.decay, o.final_lr_factor)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    def _loader(self, dataset, collate, sampler, workers: int):
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler,
                                           collate_fn=collate, num_workers=workers,
                                           pin_memory=self.accelerator.device.type == "cuda",
                                           persistent_workers=False)

    def _fixed_batch(self, dataset, collate, draws: list) -> dict:
        stream = DrawStream(len(dataset), dataset.seed)
        return collate([dataset[(d, stream.item(d))] for d in draws])

    def micro_step(self, batch: dict, step: int) -> tuple[torch.Tensor, bool]:
        """Forward/backward of one micro-batch (on the device); at the last micro-batch of an optimizer step also
        the warm-up lr for ``step`` (optimizer steps done so far), gradient clipping, the optimizer step and the
        EMA update. Returns ``(loss, stepped)``, the loss detached (float32)."""
        acc, cfg = self.accelerator, self.config
        with acc.accumulate(self.objective):
            out = self.objective(**self._inputs(batch))
            acc.backward(out["loss"])
            if acc.sync_gradients:
                self._set_lr(step)
                if cfg.optim.max_grad_norm:
                    acc.clip_grad_norm_(self.trainable, cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        stepped = acc.sync_gradients
        if stepped and self.ema is not None:
            self.ema.step(self.trainable)
        return out["loss"].detach().float(), stepped

    # ----- evaluation --------------------------------------------------------------------------------------
    def evaluate_loss(self, num_draws: int | None = None, dataset=None, collate=None,
                      cfg_dropout: bool = False) -> float:
        """Mean loss (what is optimised) over the fixed draws ``0 .. num_draws-1`` of ``dataset`` (default the
        val split), split across processes; without CFG dropout unless ``cfg_dropout``. Same value on every
        process."""
        return self.evaluate_losses(num_draws, dataset, collate, cfg_dropout)["loss"]

    @torch.no_grad()
    def evaluate_losses(self, num_draws: int | None = None, dataset=None, collate=None,
                        cfg_dropout: bool = False) -> dict:
        """``evaluate_loss`` for every scalar the objective returns (one pass): ``{"loss", ...}``; for the
        diffusion stage also ``diffusion_loss``, the plain eps MSE (equal to ``loss`` unless Min-SNR-weighted)."""
        self.setup()
        acc, cfg = self.accelerator, self.config
        dataset = dataset or self.val_set
        collate = collate or self.val_collate
        n = int(num_draws or cfg.val_draws)
        stream = DrawStream(len(dataset), dataset.seed)
        mine = list(range(acc.process_index, n, acc.num_processes))
        module = acc.unwrap_model(self.objective, keep_torch_compile=False)  # eager: no recompile per batch size
        keys = ["loss"] if self.is_vae_stage else ["loss", "diffusion_loss"]
        total = torch.zeros(len(keys) + 1, device=acc.device, dtype=torch.float64)  # sums, then the count
        for i in range(0, len(mine), cfg.batch_size):
            chunk = mine[i:i + cfg.batch_size]
            batch = self._to_device(collate([dataset[(d, stream.item(d))] for d in chunk]))
            if not cfg_dropout:
                batch["dropout_u"] = torch.ones_like(batch["dropout_u"])
            with acc.autocast():
                out = module(**self._inputs(batch))
            total += torch.stack([out[k].double() * len(chunk) for k in keys]
                                 + [torch.tensor(float(len(chunk)), device=acc.device, dtype=torch.float64)])
        total = acc.reduce(total, reduction="sum")
        return {k: float(total[j] / total[-1].clamp(min=1)) for j, k in enumerate(keys)}

    @torch.no_grad()
    def save_samples(self, step: int) -> Path | None:
        """Main process: ``samples/step_XXXXXXXX.png``; diffusion rows (input, ground truth, sample), VAE rows
        (image, reconstruction). Uses the EMA weights when ``sample.use_ema``."""
        acc, sc = self.accelerator, self.config.sample
        if not acc.is_main_process:
            return None
        dataset = self.val_set
        batch = self._to_device(self._fixed_batch(dataset, self.val_collate, list(range(sc.num_pairs))))
        use_ema = self.ema is not None and sc.use_ema
        if use_ema:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        try:
            with acc.autocast():
                if self.is_vae_stage:
                    vae = self.model
                    z = vae.encode(batch["target"].to(vae.dtype)).latent_dist.mode()
                    recon = vae.decode(z).sample.float().clamp(-1, 1)
                    rows = [[batch["target"][i], recon[i]] for i in range(len(recon))]
                else:
                    out = sample_views(self.model, batch["cond"], batch["camera"], sc.steps, sc.guidance_scale,
                                       sc.eta, seed=self.config.seed)
                    rows = [[batch["cond"][i], batch["target"][i], out[i]] for i in range(len(out))]
        finally:
            if use_ema:
                self.ema.restore(self.trainable)
        return save_image_grid(rows, self.out / SAMPLES_DIR / f"step_{step:08d}.png")

    # ----- export ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def latent_std(self, num_draws: int = 64) -> float:
        """Std of VAE posterior samples over training images (the scaling factor is its inverse)."""
        vals = []
        batch_size = self.config.batch_size
        for start in range(0, num_draws, batch_size):
            draws = list(range(start, min(num_draws, start + batch_size)))
            batch = self._to_device(self._fixed_batch(self.train_set, self.collate, draws))
            dist = self.model.encode(batch["target"].to(self.model.dtype)).latent_dist
            vals.append((dist.mean + dist.std * batch["posterior_noise"]).float().flatten())
        return float(torch.cat(vals).std())

    def export(self, folder=None) -> Path | None:
        """Main process: the EMA (else current) weights to ``folder`` (default ``OUTPUT/final``)."""
        acc = self.accelerator
        folder = Path(folder or self.out / FINAL_DIR)
        if not acc.is_main_process:
            return None
        if self.ema is not None:
            self.ema.store(self.trainable)
            self.ema.copy_to(self.trainable)
        try:
            if self.is_vae_stage:
                if not self.config.model.vae_decoder_only:  # a frozen encoder keeps its latents and their scale
                    std = self.latent_std()
                    if not math.isfinite(std) or std <= 0:
                        raise Zero123Error(f"the trained VAE's latents have std {std}: cannot set its scaling "
                                           "factor")
                    self.model.register_to_config(scaling_factor=1.0 / std)
                return export_vae(self.model, folder)
            return export_model(self.model, folder)
        finally:
            if self.ema is not None:
                self.ema.restore(self.trainable)

    # ----- the loop ----------------------------------------------------------------------------------------
    def _rewrite_log(self, keep_until_step: int | None) -> None:
        """Fresh run: empty the log. Resume: drop the lines after the resumed step (they will be redone)."""
        log = self.out / LOG_NAME
        lines = []
        if keep_until_step is not None and log.is_file():
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until_step:
                        lines.append(line)
                except json.JSONDecodeError:
                    continue
        from ..utils.atomic import atomic_write_text

        atomic_write_text(log, "".join(line + "\n" for line in lines))

    def _out_of_time(self, t_start: float) -> bool:
        """Whether ``max_minutes`` has run out on any process (a reduction, so all processes stop together)."""
        if self.config.max_minutes is None:
            return False
        flag = torch.tensor(float(time.perf_counter() - t_start > 60.0 * self.config.max_minutes),
                            device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def train(self, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
        """Run until ``max_steps`` (default ``config.max_steps``) optimizer steps. ``resume``: ``"latest"`` (the
        newest checkpoint of ``output_dir``, or a fresh start when there is none) or a checkpoint folder."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        max_steps = int(max_steps or cfg.max_steps)  # where to stop; an lr decay still ends at cfg.max_steps
        ckpt = find_checkpoint(self.out, resume) if resume else None
        if ckpt is None and find_checkpoint(self.out, "latest") is not None:
            raise Zero123Error(f"{self.out} already holds checkpoints of a run: pass --resume latest to continue "
                               "it, or choose another --output-dir")
        self.setup()
        acc.wait_for_everyone()
        step, draws = self.load_checkpoint(ckpt) if ckpt is not None else (0, 0)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
            self._rewrite_log(step if ckpt is not None else None)
            if ckpt is not None:
                self._print(f"resumed from {ckpt} at step {step}")
        acc.wait_for_everyone()

        accum = cfg.gradient_accumulation_steps
        remaining = max(0, max_steps - step)
        sampler = DrawSampler(DrawStream(len(self.train_set), cfg.seed), cfg.batch_size, start_draw=draws,
                              num_processes=acc.num_processes, process_index=acc.process_index,
                              num_micro_steps=remaining * accum)
        loader = self._loader(self.train_set, self.collate, sampler, cfg.data.num_workers)
        bar = tqdm(total=max_steps, initial=step, desc=f"train ({cfg.stage})", unit="step",
                   disable=not acc.is_main_process, dynamic_ncols=True)
        window: list[torch.Tensor] = []
        micro_losses: list[torch.Tensor] = []
        t_window = t_start = time.perf_counter()
        paused = 0.0
        last_loss, last_ckpt = None, ckpt
        lr = self._set_lr(step)
        out_of_time = False
        self.objective.train()
        for batch in loader:
            loss, stepped = self.micro_step(self._to_device(batch), step)
            micro_losses.append(loss)
            if not stepped:
                continue
            lr = self.optimizer.param_groups[0]["lr"]
            step += 1
            draws += self.global_batch
            window.append(torch.stack(micro_losses).mean())
            micro_losses = []
            bar.update(1)
            if step % cfg.log_every == 0 or step == max_steps:
                losses = acc.reduce(torch.stack(window), reduction="mean")  # [k] per-step global losses
                if not bool(torch.isfinite(losses).all()):
                    raise Zero123Error(f"the training loss is not finite at step {step}: lower optim.lr, set "
                                       "optim.max_grad_norm, or use bf16 instead of fp16")
                elapsed = time.perf_counter() - t_window - paused
                record = {"step": step, "loss": float(losses.mean()), "loss_last": float(losses[-1]), "lr": lr,
                          "draws": draws, "epoch": draws / len(self.train_set),
                          "samples_per_s": len(window) * self.global_batch / max(elapsed, 1e-9),
                          "elapsed_s": time.perf_counter() - t_start, "num_processes": acc.num_processes,
                          "global_batch": self.global_batch}
                if acc.device.type == "cuda":
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
                last_loss = record["loss_last"]
                if acc.is_main_process:
                    with open(self.out / LOG_NAME, "a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                window, t_window, paused = [], time.perf_counter(), 0.0
                out_of_time = self._out_of_time(t_start)
            t_pause = time.perf_counter()  # validation, samples and checkpoints do not count as training time
            if cfg.val_every and step % cfg.val_every == 0:
                val = self.evaluate_losses()
                record = {"step": step, "val_loss": val["loss"]}
                if val.get("diffusion_loss", val["loss"]) != val["loss"]:  # weighted or + VAE loss: also the plain MSE
                    record["val_mse"] = val["diffusion_loss"]
                if acc.is_main_process:
                    with open(self.out / LOG_NAME, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if cfg.sample.every and step % cfg.sample.every == 0:
                self.save_samples(step)
                acc.wait_for_everyone()
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == max_steps or out_of_time:
                last_ckpt = self.save_checkpoint(step, draws)
            paused += time.perf_counter() - t_pause
            if out_of_time:
                self._print(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached "
                            "(continue with --resume latest)")
                break
        bar.close()
        export_dir = None
        if cfg.export:
            export_dir = self.export()
            acc.wait_for_everyone()
        return TrainResult(step=step, loss=last_loss, output_dir=self.out, log_path=self.out / LOG_NAME,
                           checkpoint=last_ckpt, export_dir=export_dir)


def train(config: TrainConfig, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
    """``Trainer(config).train(resume, max_steps)``."""
    return Trainer(config).train(resume=resume, max_steps=max_steps)
