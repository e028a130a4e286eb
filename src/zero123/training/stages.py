"""The two stages of a training run behind one interface: ``DiffusionStage`` (a ``Zero123Model`` with the
Zero123 objective) and ``VAEStage`` (an ``AutoencoderKL`` alone, so a small model can get its own VAE first).

A stage builds its model, objective and optimizer groups (``build``), says what the data loader must yield
(``data_kwargs``), picks the objective's inputs from a batch (``inputs``), draws the sample grid rows
(``sample_rows``) and exports the trained weights (``export``). ``zero123.training.trainer.Trainer`` runs either
through the same loop; ``STAGES`` maps ``config.stage`` to the class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import Zero123Error
from ..utils.images import save_image_grid  # noqa: F401  (rows of [3,H,W] tensors in [-1,1] -> one PNG)
from .build import build_model, build_vae, start_ema_from_checkpoint
from .checkpointing import vae_fingerprint
from .config import TrainConfig
from .objectives import DiffusionObjective, VAEObjective


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




@dataclass
class BuiltStage:
    """What ``TrainingStage.build`` returns: the model (float32 unless frozen parts were cast), the objective
    module (what ``accelerate`` wraps), the AdamW parameter groups (with ``lr``), the image size (pixels), the
    latent shape ``(C, h, w)`` and, for a frozen VAE, its ``vae_fingerprint`` (else None)."""

    model: nn.Module
    objective: nn.Module
    groups: list
    image_size: int
    latent_shape: tuple
    vae_sha256: str | None = None


class TrainingStage:
    """One stage of training (``config.stage``); subclasses fill in the model-specific parts."""

    name: str = ""
    #: the scalars of the objective that ``Trainer.evaluate_losses`` averages
    loss_keys: tuple = ("loss",)

    def __init__(self, config: TrainConfig):
        self.config = config

    def build(self, device, size_hint: int | None, frozen_dtype: torch.dtype) -> BuiltStage:
        raise NotImplementedError

    def data_kwargs(self, model) -> dict:
        """``ViewPairDataset`` keyword arguments (``image_size`` is added by the trainer)."""
        raise NotImplementedError

    @property
    def uses_latent_cache(self) -> bool:
        """Whether the training batches come without target images, their posteriors looked up in a cache."""
        return False

    def start_ema(self, ema, named_trainable) -> None:
        """Adjust the EMA's start (default: the training weights)."""

    def inputs(self, batch: dict) -> dict:
        """The objective's keyword arguments from a device batch."""
        raise NotImplementedError

    def sample_rows(self, model, batch: dict) -> list:
        """Rows of ``[3,H,W]`` images in [-1,1] for the sample grid of a fixed validation batch."""
        raise NotImplementedError

    def export(self, trainer, folder: Path) -> Path:
        """Write the (EMA-swapped-in) weights of ``trainer.model`` to ``folder``."""
        raise NotImplementedError


class VAEStage(TrainingStage):
    """``stage: vae``: an ``AutoencoderKL`` trained on the target views (``VAEObjective``)."""

    name = "vae"

    def build(self, device, size_hint, frozen_dtype) -> BuiltStage:
        cfg = self.config
        vae = build_vae(cfg.model, size_hint, cfg.seed)
        if cfg.model.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        if cfg.model.vae_decoder_only:  # the encoder (image -> latent) stays as it is
            vae.encoder.requires_grad_(False)
            if vae.quant_conv is not None:
                vae.quant_conv.requires_grad_(False)
        image_size = int(vae.config.sample_size)
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        groups = [{"params": [p for p in vae.parameters() if p.requires_grad], "lr": cfg.optim.vae_lr}]
        return BuiltStage(vae, VAEObjective(vae, cfg.objective.kl_weight), groups, image_size,
                          (vae.config.latent_channels, image_size // down, image_size // down))

    def data_kwargs(self, model) -> dict:
        return {"with_cond": False, "variant": "zero123"}

    def inputs(self, batch: dict) -> dict:
        return {"target": batch["target"], "posterior_noise": batch["posterior_noise"]}

    def sample_rows(self, model, batch: dict) -> list:
        z = model.encode(batch["target"].to(model.dtype)).latent_dist.mode()
        recon = model.decode(z).sample.float().clamp(-1, 1)
        return [[batch["target"][i], recon[i]] for i in range(len(recon))]

    def export(self, trainer, folder: Path) -> Path:
        if not self.config.model.vae_decoder_only:  # a frozen encoder keeps its latents and their scale
            std = trainer.latent_std()
            if not math.isfinite(std) or std <= 0:
                raise Zero123Error(f"the trained VAE's latents have std {std}: cannot set its scaling factor")
            trainer.model.register_to_config(scaling_factor=1.0 / std)
        return export_vae(trainer.model, folder)


class DiffusionStage(TrainingStage):
    """``stage: diffusion``: a ``Zero123Model`` trained with Zero123's objective (``DiffusionObjective``); the
    UNet and camera projection always train, the CLIP encoder and the VAE as the config says."""

    name = "diffusion"
    loss_keys = ("loss", "diffusion_loss")

    def build(self, device, size_hint, frozen_dtype) -> BuiltStage:
        cfg = self.config
        mc = cfg.model
        model = build_model(mc, size_hint, cfg.seed, device=device)
        train_enc = mc.train_image_encoder
        # a loaded checkpoint (init_from) arrives frozen for inference: the trained parts are set explicitly
        model.unet.requires_grad_(True)
        model.camera_projection.requires_grad_(True)
        model.image_encoder.requires_grad_(train_enc).train(train_enc)
        model.vae.requires_grad_(not mc.freeze_vae)
        # the frozen VAE's identity (before any cast), recorded in checkpoints and checked on resume
        vae_sha256 = vae_fingerprint(model.vae) if mc.freeze_vae else None
        if frozen_dtype != torch.float32:  # nn.Module.to: diffusers' override warns about an empty fp32 list
            if not train_enc:
                nn.Module.to(model.image_encoder, frozen_dtype)
            if mc.freeze_vae:
                nn.Module.to(model.vae, frozen_dtype)
        if mc.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            if not mc.freeze_vae:
                model.vae.enable_gradient_checkpointing()
        objective = DiffusionObjective(model, cfg.objective.cfg_dropout, train_vae=not mc.freeze_vae,
                                       kl_weight=cfg.objective.kl_weight, train_image_encoder=train_enc,
                                       snr_gamma=cfg.objective.snr_gamma)
        groups = [{"params": list(model.unet.parameters()), "lr": cfg.optim.lr},
                  {"params": list(model.camera_projection.parameters()),
                   "lr": cfg.optim.lr * cfg.optim.projection_lr_scale}]
        if train_enc:
            groups.append({"params": list(model.image_encoder.parameters()), "lr": cfg.optim.lr})
        if not mc.freeze_vae:
            groups.append({"params": list(model.vae.parameters()), "lr": cfg.optim.vae_lr})
        h = model.unet.config.sample_size
        return BuiltStage(model, objective, groups, model.image_size, (model.latent_channels, h, h), vae_sha256)

    def data_kwargs(self, model) -> dict:
        return {"with_cond": True, "variant": model.variant.value}

    @property
    def uses_latent_cache(self) -> bool:
        return bool(self.config.data.cache_latents)

    def start_ema(self, ema, named_trainable) -> None:
        start_ema_from_checkpoint(ema, named_trainable, self.config.model)

    def inputs(self, batch: dict) -> dict:
        inputs = {k: batch[k] for k in ("cond", "camera", "noise", "posterior_noise", "timesteps", "dropout_u")}
        inputs["target"] = batch.get("target")
        for k in ("target_mean", "target_std", "cond_mean"):
            if k in batch:
                inputs[k] = batch[k]
        return inputs

    def sample_rows(self, model, batch: dict) -> list:
        sc = self.config.sample
        out = sample_views(model, batch["cond"], batch["camera"], sc.steps, sc.guidance_scale, sc.eta,
                           seed=self.config.seed)
        return [[batch["cond"][i], batch["target"][i], out[i]] for i in range(len(out))]

    def export(self, trainer, folder: Path) -> Path:
        return export_model(trainer.model, folder)


#: ``config.stage`` -> its stage class
STAGES = {"diffusion": DiffusionStage, "vae": VAEStage}
