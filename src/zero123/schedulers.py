"""Noise schedules and DDIM timesteps, configured as the Zero123 LDM code has them.

Betas are ``linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2`` (diffusers ``scaled_linear``), eps-prediction.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULE_KWARGS = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                       beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


def make_ddim_scheduler() -> DDIMScheduler:
    """DDIM whose final step goes to ``alphas_cumprod[0]`` (not 1), as LDM's ``DDIMSampler`` does."""
    return DDIMScheduler(**SCHEDULE_KWARGS, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def make_ddpm_scheduler() -> DDPMScheduler:
    """DDPM with the same betas: the source of ``alphas_cumprod`` (the training objective and SDS noise latents
    with it themselves); the tests use its ``add_noise`` as the reference forward process."""
    return DDPMScheduler(**SCHEDULE_KWARGS)


def alphas_cumprod() -> torch.Tensor:
    """``[1000]`` float32 cumulative products of alphas."""
    return make_ddpm_scheduler().alphas_cumprod.clone()


def ldm_ddim_timesteps(num_steps: int) -> torch.Tensor:
    """Descending timesteps that zero123's ``DDIMSampler.sample(S=num_steps)`` visits.

    ``make_ddim_timesteps('uniform')`` gives ``[1, 1 + c, ..., 1 + (S-1) c]`` with ``c = 1000 // S``; its
    ``ddim_sampling`` then drops the last one (``timesteps[:-1]``), so S steps run S-1 UNet evaluations, from
    ``1 + (S-2) c`` down to 1. Returns long ``[S-1]``.
    """
    if num_steps < 2 or num_steps > NUM_TRAIN_TIMESTEPS:
        from .errors import Zero123Error

        raise Zero123Error(f"num_inference_steps must be in [2, {NUM_TRAIN_TIMESTEPS}], got {num_steps}")
    c = NUM_TRAIN_TIMESTEPS // num_steps
    steps = torch.arange(0, NUM_TRAIN_TIMESTEPS, c)[:num_steps] + 1
    return steps[:-1].flip(0).long()


#: ``zero123``: the original ``DDIMSampler``'s timesteps (``ldm_ddim_timesteps``); ``diffusers``: those of diffusers'
#: ``DDIMScheduler(timestep_spacing="leading", steps_offset=1)``, which the community Zero1to3 pipeline runs
#: (``diffusers_ddim_timesteps``).
TIMESTEP_SPACINGS = ("zero123", "diffusers")


def diffusers_ddim_timesteps(num_steps: int) -> torch.Tensor:
    """Descending timesteps of diffusers' ``DDIMScheduler`` with ``timestep_spacing="leading"``, ``steps_offset=1``
    (the scheduler config of the kxic/zero123-* folders): ``1 + (S-1) c`` down to 1, ``c = 1000 // S``, all S of
    them (981 first for S = 50). Returns long ``[S]``."""
    ldm_ddim_timesteps(num_steps)  # same range check
    c = NUM_TRAIN_TIMESTEPS // num_steps
    return (torch.arange(num_steps) * c + 1).flip(0).long()


def check_timestep_spacing(value) -> str:
    """``value`` if it is one of ``TIMESTEP_SPACINGS``, else a one-line ``Zero123Error``."""
    if value not in TIMESTEP_SPACINGS:
        from .errors import Zero123Error

        raise Zero123Error(f"timestep spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {value!r}")
    return value


def ddim_timesteps(num_steps: int, spacing: str = "zero123") -> torch.Tensor:
    """The descending DDIM timesteps of ``spacing`` (one of ``TIMESTEP_SPACINGS``)."""
    if check_timestep_spacing(spacing) == "diffusers":
        return diffusers_ddim_timesteps(num_steps)
    return ldm_ddim_timesteps(num_steps)


class DDIMSampler:
    """DDIM over ``ddim_timesteps(num_steps, spacing)`` (default: the original's), written as
    ``x_prev = cx[i] * x + ce[i] * eps + sigma[i] * noise``.

    The same update as LDM's ``DDIMSampler.p_sample_ddim`` and diffusers' ``DDIMScheduler.step`` (with
    ``set_alpha_to_one=False``; the tests check both), but with every coefficient precomputed into device tensors,
    so a whole sampling loop is a fixed sequence of kernels that a CUDA graph can capture.
    """

    def __init__(self, num_steps: int, eta: float = 0.0, alphas: torch.Tensor | None = None,
                 spacing: str = "zero123"):
        acp = (alphas if alphas is not None else alphas_cumprod()).double().cpu()
        self.timesteps = ddim_timesteps(num_steps, spacing)
        c = NUM_TRAIN_TIMESTEPS // num_steps
        a_t = acp[self.timesteps]
        prev = self.timesteps - c
        a_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], acp[0])
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        self.eta = eta
        self.sigma = sigma.float()
        self.coef_x = torch.sqrt(a_prev / a_t).float()
        self.coef_eps = (torch.sqrt(1 - a_prev - sigma**2) - torch.sqrt(a_prev) * torch.sqrt(1 - a_t) / torch.sqrt(a_t)).float()

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One update at loop index ``i`` (timestep ``self.timesteps[i]``); ``noise`` is needed when eta > 0."""
        out = self.coef_x[i].item() * x + self.coef_eps[i].item() * eps
        if self.eta > 0:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs noise")
            out = out + self.sigma[i].item() * noise
        return out
