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
    so a whole sampling loop is a fixed sequence of kernels that a CUDA graph can capture (``graphable``).
    """

    graphable = True

    def reset(self) -> None:
        """Nothing to reset: the update keeps no state (``MultistepSampler.reset``'s counterpart)."""

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


#: the novel-view samplers: ``ddim`` (``DDIMSampler``, the original's), ``dpmpp`` (diffusers'
#: ``DPMSolverMultistepScheduler``, DPM-Solver++ order 2) and ``unipc`` (diffusers' ``UniPCMultistepScheduler``,
#: bh2 order 2): the two multistep solvers reach DDIM-50's quality in fewer steps (``bench/RESULTS.md``).
SAMPLERS = ("ddim", "dpmpp", "unipc")


def check_sampler(value) -> str:
    """``value`` if it is one of ``SAMPLERS``, else a one-line ``Zero123Error``."""
    if value not in SAMPLERS:
        from .errors import Zero123Error

        raise Zero123Error(f"scheduler must be one of {', '.join(SAMPLERS)}, got {value!r}")
    return value


def betas_from_alphas_cumprod(acp: torch.Tensor) -> torch.Tensor:
    """The betas ``1 - acp[t] / acp[t-1]`` (``acp[-1] = 1``) of a ``[1000]`` cumulative-product schedule, float64:
    the ``trained_betas`` that give a diffusers scheduler exactly that schedule."""
    acp = acp.double().cpu()
    return 1.0 - acp / torch.cat([acp.new_ones(1), acp[:-1]])


class MultistepSampler:
    """DPM-Solver++ (``dpmpp``) or UniPC (``unipc``) from diffusers, on the Zero123 noise schedule (``alphas``,
    default ``alphas_cumprod()``, given to diffusers as ``trained_betas``), eps-prediction, order 2, diffusers' default ``linspace``
    timesteps (S steps = S UNet evaluations, from t = 999) and a last step to the clean sample (``final_sigmas_type
    ="zero"``, lower order on the final steps). Deterministic: no eta.

    Same interface as ``DDIMSampler`` (``timesteps``, ``len``, ``step(i, x, eps)``); the solver keeps its history
    of model outputs, so a sampler runs one loop, in order (``step`` checks it; ``reset`` starts it again).
    ``graphable``: DPM-Solver++'s step is tensor arithmetic on the sample with CPU-scalar coefficients, so the
    CUDA-graph loop can capture it; UniPC's step builds small device tensors (``torch.tensor(..., device=)``) and
    solves a linear system each step, which a capture does not allow: it runs eagerly.
    """

    eta = 0.0

    def __init__(self, name: str, num_steps: int, alphas: torch.Tensor | None = None):
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        check_sampler(name)
        if name == "ddim":
            raise ValueError("MultistepSampler is for dpmpp / unipc; ddim is DDIMSampler")
        if num_steps < 1 or num_steps > NUM_TRAIN_TIMESTEPS:
            from .errors import Zero123Error

            raise Zero123Error(f"num_inference_steps must be in [1, {NUM_TRAIN_TIMESTEPS}], got {num_steps}")
        betas = betas_from_alphas_cumprod(alphas if alphas is not None else alphas_cumprod()).numpy()
        common = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, trained_betas=betas, prediction_type="epsilon",
                      solver_order=2, lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace")
        if name == "dpmpp":
            self.scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint",
                                                         **common)
        else:
            self.scheduler = UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, **common)
        self.name = name
        self.graphable = name == "dpmpp"
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = self.scheduler.timesteps.long().cpu()
        self._next = 0

    def reset(self) -> None:
        """Forget the history: the next ``step`` is step 0 of a new loop."""
        self.scheduler.set_timesteps(len(self.timesteps))
        self._next = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The solver's update at loop index ``i`` (timestep ``self.timesteps[i]``); ``i`` must follow the last."""
        if i != self._next:
            raise ValueError(f"{self.name} steps run in order: expected step {self._next}, got {i}")
        self._next += 1
        return self.scheduler.step(eps, self.timesteps[i], x).prev_sample


def make_sampler(name: str, num_steps: int, eta: float = 0.0, alphas: torch.Tensor | None = None,
                 spacing: str = "zero123"):
    """The sampler ``name`` (one of ``SAMPLERS``) for ``num_steps``: a ``DDIMSampler`` (``eta``, ``spacing``) or a
    ``MultistepSampler`` (deterministic: ``eta`` > 0 is a ``Zero123Error``; ``spacing`` is DDIM's only)."""
    if check_sampler(name) == "ddim":
        return DDIMSampler(num_steps, eta, alphas=alphas, spacing=spacing)
    if eta:
        from .errors import Zero123Error

        raise Zero123Error(f"eta (stochastic DDIM) applies to the ddim scheduler only, got eta={eta:g} with {name}")
    return MultistepSampler(name, num_steps, alphas)
