"""Score distillation sampling (SDS) from any :class:`zero123.models.Zero123Model`.

threestudio's ``stable-zero123-guidance`` / ``zero123-guidance`` step, for renders ``rgb`` ``[B,H,W,3]`` in [0,1]:

1. resize to the model's image size (bilinear, ``align_corners=False``), map to [-1,1] and VAE-encode **with
   gradient** (a posterior sample times the scaling factor, ``model.encode_latents``);
2. ``t ~ U{min_step, max_step}`` per image with ``min_step = int(1000 * min_step_percent(step))`` (0.7 -> 0.3) and
   ``max_step = int(1000 * max_step_percent(step))`` (0.98 -> 0.8), both linear between steps 50 and 200;
3. ``noisy = sqrt(a_t) latents + sqrt(1 - a_t) noise`` and ONE guided UNet pass without gradient
   (``model.guided_noise``: [uncond; cond] with zeros token and zeros concat latent for the unconditional half,
   guidance scale 3), conditioned on the input image (CLIP embedding and concat latent computed once and cached)
   and on the camera of each render RELATIVE to the input view (``model.camera_embedding``; the input view is at
   elevation 5, azimuth 0, distance 3.8 by default; Stable Zero123 also takes the input elevation absolutely);
4. ``grad = (1 - alphas_cumprod[t]) * (eps_cfg - noise)``, ``nan_to_num``; the loss
   ``0.5 * sum((latents - (latents - grad).detach())^2) / B`` has exactly ``grad / B`` as its latent gradient.

Random draws, in threestudio's order and element order (so a seed-only replay of threestudio's CPU run agrees):
the posterior eps (contiguous ``[B,4,h,w]``), ``t`` (``randint``), then the noise as ``torch.randn_like`` on
channels_last latents draws it (the renders are ``[B,H,W,3]``, so threestudio's latents are channels_last): the
stream fills ``[B,h,w,4]`` memory order. Each draw can instead be given (``posterior_eps``, ``timesteps``,
``noise``), and :class:`SDSOutput` returns every intermediate: a test replays a reference step without
monkeypatching. ``tests/test_threestudio_sds.py`` checks all of it against threestudio's own step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import Zero123Error
from .base import Guidance, GuidanceOutput, register_guidance
from .schedules import ScheduleSpec, scheduled_value


@dataclass
class SDSConfig:
    """SDS settings (defaults: threestudio ``stable-zero123.yaml``). Schedules are in training steps."""

    guidance_scale: float = 3.0
    min_step_percent: ScheduleSpec = (50, 0.7, 0.3, 200)
    max_step_percent: ScheduleSpec = (50, 0.98, 0.8, 200)
    grad_clip: Optional[float] = None
    cuda_graph: bool = False         # replay the guided UNet pass from a captured CUDA graph (CUDA only)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SDSOutput(GuidanceOutput):
    """``loss`` (scalar, differentiable w.r.t. the renders), ``timesteps`` [B] long, ``grad_norm`` (0-dim tensor,
    L2 norm of the latent-space SDS gradient over the whole batch; kept on the device to avoid a synchronisation).

    Intermediates (float32, ``[B,4,h,w]`` unless noted): ``latents`` (scaled posterior sample, still in the
    autograd graph of the renders), ``noise``, ``noisy_latents``, ``eps`` (classifier-free guided UNet eps),
    ``weights`` ``[B,1,1,1]`` (``1 - alphas_cumprod[t]``), ``grad`` (the SDS latent gradient after
    ``nan_to_num``/clipping) and ``camera`` ``[B,4]`` (the camera vector T)."""

    timesteps: torch.Tensor = None
    grad_norm: torch.Tensor = None
    latents: Optional[torch.Tensor] = None
    noise: Optional[torch.Tensor] = None
    noisy_latents: Optional[torch.Tensor] = None
    eps: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None
    grad: Optional[torch.Tensor] = None
    camera: Optional[torch.Tensor] = None


class _GraphedGuidedNoise:
    """One captured ``guided_noise`` call for fixed shapes; inputs are copied into static buffers per replay."""

    def __init__(self, model, noisy, t, token, concat, scale):
        self.model, self.scale = model, scale
        self.noisy, self.t, self.token, self.concat = noisy.clone(), t.clone(), token.clone(), concat.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm-up: cuDNN/cuBLAS handles and algorithm selection outside the graph
                model.guided_noise(self.noisy, self.t, self.token, self.concat, scale)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = model.guided_noise(self.noisy, self.t, self.token, self.concat, scale)

    def __call__(self, noisy, t, token, concat):
        self.noisy.copy_(noisy)
        self.t.copy_(t)
        self.token.copy_(token)
        self.concat.copy_(concat)
        self.graph.replay()
        return self.out.clone()


@register_guidance
class SDSGuidance(Guidance):
    """SDS loss of renders under a Zero123-family model conditioned on one input image (registry key
    ``zero123-sds``, weighted by ``losses.sds``).

    Args:
        model: a ``Zero123Model`` (any dtype/device; it is used read-only and in eval mode).
        image: the input view ``[1,3,H,W]`` in [-1,1], composited on white (resized to the model's size here).
        config: :class:`SDSConfig`.
        input_elevation, input_azimuth, input_distance: the camera of the input view (degrees, world units;
            ``ImageTo3DConfig.reference``): render cameras are conditioned relative to it.
    """

    name = "zero123-sds"
    loss_name = "sds"

    def __init__(self, model, image: torch.Tensor, config: SDSConfig | None = None, *, input_elevation: float = 5.0,
                 input_azimuth: float = 0.0, input_distance: float = 3.8):
        self.model = model
        self.config = config or SDSConfig()
        self.input_elevation, self.input_azimuth = float(input_elevation), float(input_azimuth)
        self.input_distance = float(input_distance)
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise Zero123Error(f"SDS input image must be [1,3,H,W] in [-1,1], got {tuple(image.shape)}")
        size = model.image_size
        img = image.to(model.device, torch.float32)
        if img.shape[-2:] != (size, size):
            img = F.interpolate(img, (size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            self.clip_embedding = model.clip_embedding(img.to(model.dtype))      # [1,1,D]
            self.concat_latent = model.concat_latent(img.to(model.dtype))        # [1,4,h,w]
        self._graphs: dict = {}

    @classmethod
    def from_config(cls, config, model, reference) -> "SDSGuidance":
        """From ``config.sds`` and the input camera ``config.reference``, conditioned on ``reference.condition``."""
        r = config.reference
        return cls(model, reference.condition, config.sds, input_elevation=r.elevation, input_azimuth=r.azimuth,
                   input_distance=r.distance)

    # ----- pieces -----------------------------------------------------------------------------------------
    def timestep_bounds(self, step: float) -> tuple[int, int]:
        """(min_step, max_step) of the noise schedule at training step ``step`` (inclusive bounds)."""
        n = int(self.model.alphas_cumprod.shape[0])
        lo = int(n * scheduled_value(self.config.min_step_percent, step))
        hi = int(n * scheduled_value(self.config.max_step_percent, step))
        lo, hi = max(0, min(lo, n - 1)), max(0, min(hi, n - 1))
        return min(lo, hi), max(lo, hi)

    def camera_embedding(self, elevation, azimuth, radius) -> torch.Tensor:
        """``[B,4]`` embedding of target cameras (degrees / world units) relative to the input view."""
        e = torch.as_tensor(elevation, dtype=torch.float64).reshape(-1)
        a = torch.as_tensor(azimuth, dtype=torch.float64).reshape(-1)
        r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
        return self.model.camera_embedding(e - self.input_elevation, a - self.input_azimuth, r - self.input_distance,
                                           input_elevation=self.input_elevation)

    def _guided_noise(self, noisy, t, token, concat):
        m, scale = self.model, self.config.guidance_scale
        if not (self.config.cuda_graph and noisy.is_cuda):
            return m.guided_noise(noisy, t, token, concat, scale)
        key = (tuple(noisy.shape), noisy.dtype)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = _GraphedGuidedNoise(m, noisy, t, token, concat, scale)
        return g(noisy, t, token, concat)

    # ----- SDS --------------------------------------------------------------------------------------------
    def _given_draws(self, B: int, latent_shape, timesteps, noise, posterior_eps) -> None:
        """Check user-given draws before any work (one-line errors)."""
        if timesteps is not None:
            t = torch.as_tensor(timesteps)
            n = int(self.model.alphas_cumprod.shape[0])
            if t.shape != (B,) or t.is_floating_point() or bool(((t < 0) | (t >= n)).any()):
                raise Zero123Error(f"timesteps must be {B} integers in [0, {n - 1}], got {t.tolist()}")
        for name, x in (("noise", noise), ("posterior_eps", posterior_eps)):
            if x is not None and tuple(x.shape) != latent_shape:
                raise Zero123Error(f"{name} must have shape {latent_shape}, got {tuple(x.shape)}")

    def __call__(self, rgb: torch.Tensor, cameras, schedule_step: float, *,
                 generator: torch.Generator | None = None, timesteps: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, posterior_eps: torch.Tensor | None = None) -> SDSOutput:
        """SDS loss for renders ``rgb`` ``[B,H,W,3]`` in [0,1] seen from ``cameras``
        (:class:`zero123.rendering.cameras.Cameras`: its ``elevation``, ``azimuth`` [B] degrees and ``radius`` [B]
        are used) at recipe step ``schedule_step``. ``generator``: device generator for t, noise and the VAE sample.

        ``timesteps`` ``[B]`` long, ``noise`` and ``posterior_eps`` ``[B,4,h,w]``: use these draws instead of
        drawing them (the ones not given are drawn, in the usual order)."""
        m = self.model
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise Zero123Error(f"SDS expects renders [B,H,W,3], got {tuple(rgb.shape)}")
        B, dev = rgb.shape[0], m.device
        size = m.image_size
        h = size // m.latent_downsample
        self._given_draws(B, (B, m.latent_channels, h, h), timesteps, noise, posterior_eps)
        x = rgb.permute(0, 3, 1, 2).to(dev)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = x * 2 - 1
        latents = m.encode_latents(x.to(m.dtype), generator=generator, posterior_eps=posterior_eps)  # with grad
        if timesteps is None:
            lo, hi = self.timestep_bounds(schedule_step)
            t = torch.randint(lo, hi + 1, (B,), device=dev, generator=generator, dtype=torch.long)
        else:
            t = torch.as_tensor(timesteps, dtype=torch.long).to(dev)
        with torch.no_grad():
            if noise is None:   # = torch.randn_like(latents) on channels_last latents (module docstring)
                noise = torch.empty(latents.shape, device=dev, dtype=torch.float32,
                                    memory_format=torch.channels_last).normal_(generator=generator)
            noise = noise.to(dev, torch.float32)
            a = m.alphas_cumprod.to(dev)[t].float().view(-1, 1, 1, 1)
            noisy = a ** 0.5 * latents.detach().float() + (1 - a) ** 0.5 * noise
            cam = self.camera_embedding(cameras.elevation, cameras.azimuth, cameras.radius).to(dev)
            token, concat = m.conditioning(None, cam, clip_embedding=self.clip_embedding,
                                           concat_latent=self.concat_latent)
            eps = self._guided_noise(noisy.to(m.dtype), t, token, concat).float()
            w = 1 - a
            grad = torch.nan_to_num(w * (eps - noise))
            if self.config.grad_clip is not None:
                grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        lat = latents.float()
        target = (lat - grad).detach()
        loss = 0.5 * F.mse_loss(lat, target, reduction="sum") / B
        return SDSOutput(loss=loss, timesteps=t, grad_norm=grad.norm(), latents=lat, noise=noise,
                         noisy_latents=noisy, eps=eps, weights=w, grad=grad, camera=cam)
