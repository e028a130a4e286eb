"""The training objectives of ``zero123.training`` and their pure pieces (no accelerate, no files).

Diffusion (Zero123's ``LatentDiffusion`` with hybrid conditioning): ``z0 = VAE posterior sample(target) x
scaling_factor``; concat latent = posterior MODE of the input view (unscaled); ``z_t = sqrt(acp[t]) z0 +
sqrt(1 - acp[t]) eps``; CFG dropout per sample from ``u ~ U(0,1)``; loss = eps MSE, optionally Min-SNR-weighted.
VAE (``stage: vae``): mean L1 + ``kl_weight`` x KL per pixel (LDM's weighting). The lr multipliers of the loop
(``warmup_factor`` x ``decay_factor``) live here too.

All randomness of a sample (``t``, ``u``, ``eps``, the posterior noise) is ``draw_noise``'s pure function of
``(seed, draw number)``, so resumed and multi-process runs see the same noise as one uninterrupted run.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import Zero123Error
from ..schedulers import NUM_TRAIN_TIMESTEPS
from .config import LR_DECAYS

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
    then 1 (LDM ``LambdaLinearScheduler`` with ``f_start``, ``f_max = f_min = 1``).

    Kept instead of diffusers' ``get_scheduler``: its warm-ups start at 0, not at ``start_factor`` (LDM's
    ``f_start = 1e-6``), and a pure function of the step sets the lr of a resumed run without scheduler state.
    With ``start_factor = 0`` it equals diffusers' ``constant_with_warmup`` (tests/test_train_objective.py)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def decay_factor(step: int, warmup_steps: int, max_steps: int, decay: str = "constant",
                 final_factor: float = 0.0) -> float:
    """lr multiplier after the warm-up at optimizer step ``step`` (0-based): 1 until ``warmup_steps``, then
    ``constant`` 1, or a ``cosine`` / ``linear`` decay from 1 to ``final_factor`` reached at ``max_steps``.

    Kept instead of diffusers' ``get_scheduler``: its cosine / linear schedules end at 0 (no ``final_factor``).
    With ``final_factor = 0`` it equals diffusers' ``cosine`` / ``linear`` after the warm-up (tested)."""
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
    (high noise) keep weight 1; less noisy ones get ``gamma / SNR``.

    Kept instead of ``diffusers.training_utils.compute_snr``: that one needs a scheduler object and timesteps, while
    the objective has ``acp[t]`` on its device already; its SNR agrees with ours to float32 rounding
    (3.4e-7 relative at most over t = 0..999), not bit for bit (tests/test_train_objective.py)."""
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

