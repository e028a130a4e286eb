"""``Zero123Model``: the four networks of a Zero123-family model and the operations every feature needs.

Novel-view sampling, SDS guidance and training all go through these methods, so the conditioning is formed in
one place, exactly as the reference LDM code forms it:

* concat conditioning: the VAE posterior **mode** of the input view, NOT multiplied by the scale factor;
* cross-attention: ``camera_projection(cat([CLIP image embedding, T]))`` -> one token ``[B,1,768]``;
* unconditional branch (classifier-free guidance): zeros for the projected token AND zeros for the concat latent;
* guidance: ``e = e_uncond + scale * (e_cond - e_uncond)``.

Images are ``[B,3,H,W]`` in [-1, 1]; latents are ``[B,4,H/f,W/f]`` (``f = latent_downsample``), "scaled" latents
are multiplied by ``vae.config.scaling_factor`` (0.18215), which is what the diffusion model runs on.
"""

from __future__ import annotations

import torch
from torch import nn

from ..camera import ConditioningVariant, relative_camera_embedding
from ..errors import Zero123Error
from .clip_image_encoder import clip_image_embedding


class Zero123Model(nn.Module):
    """Container of ``unet`` (diffusers UNet2DConditionModel, 8 input channels), ``vae`` (AutoencoderKL),
    ``image_encoder`` (transformers CLIPVisionModelWithProjection) and ``camera_projection``."""

    def __init__(self, unet, vae, image_encoder, camera_projection):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        self.camera_projection = camera_projection
        from ..schedulers import alphas_cumprod

        self.register_buffer("alphas_cumprod", alphas_cumprod(), persistent=False)

    # ----- properties -------------------------------------------------------------------------------------
    @property
    def variant(self) -> ConditioningVariant:
        return self.camera_projection.variant

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Input/output image side in pixels (256 for released models)."""
        return int(self.unet.config.sample_size) * self.latent_downsample

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    # ----- encoders ---------------------------------------------------------------------------------------
    def clip_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [-1,1] -> projected CLIP image embedding ``[B,1,D]``."""
        return clip_image_embedding(self.image_encoder, images)

    def concat_latent(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior mode (unscaled) ``[B,4,h,w]``: the 4 extra UNet input channels."""
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()

    def encode_latents(self, images: torch.Tensor, generator: torch.Generator | None = None,
                       sample: bool = True, posterior_eps: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents ``[B,4,h,w]`` of images in [-1,1]: a posterior sample (or mean) x scaling factor.

        The sample is ``mean + std * eps`` with ``eps ~ N(0, 1)`` drawn from ``generator`` in contiguous
        ``[B,4,h,w]`` order (as the LDM's ``torch.randn(mean.shape)``), or the given ``posterior_eps`` (same
        shape) for an exact replay. Gradient flows through both ``mean`` and ``std``."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        if posterior_eps is not None:
            if tuple(posterior_eps.shape) != tuple(dist.mean.shape):
                raise Zero123Error(f"posterior_eps must have shape {tuple(dist.mean.shape)}, "
                                   f"got {tuple(posterior_eps.shape)}")
            z = dist.mean + dist.std * posterior_eps.to(dist.mean)
        else:
            z = dist.sample(generator=generator) if sample else dist.mean
        return z * self.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images ``[B,3,H,W]``, roughly in [-1,1] (not clamped)."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample

    def camera_embedding(self, delta_elevation, delta_azimuth, delta_radius, input_elevation=0.0) -> torch.Tensor:
        """The 4-number embedding ``[N,4]`` for camera changes in degrees / world units (see ``zero123.camera``)."""
        t = relative_camera_embedding(self.variant, delta_elevation, delta_azimuth, delta_radius, input_elevation)
        return t.reshape(-1, 4).to(self.device)

    def conditioning(self, images: torch.Tensor, camera: torch.Tensor, clip_embedding: torch.Tensor | None = None,
                     concat_latent: torch.Tensor | None = None):
        """Conditioning for ``N`` target views of input image(s).

        images ``[1 or N,3,H,W]`` in [-1,1]; camera ``[N,4]``. Precomputed ``clip_embedding`` ``[1 or N,1,D]``
        / ``concat_latent`` may be passed to skip the encoders. Returns ``(token [N,1,D], concat [N,4,h,w])``.
        """
        n = camera.shape[0]
        if clip_embedding is None:
            clip_embedding = self.clip_embedding(images)
        if concat_latent is None:
            concat_latent = self.concat_latent(images)
        clip_embedding = clip_embedding.to(self.dtype).expand(n, -1, -1)
        concat_latent = concat_latent.to(self.dtype).expand(n, -1, -1, -1)
        token = self.camera_projection(clip_embedding.to(self.camera_projection.dtype),
                                       camera.to(self.camera_projection.dtype))
        return token.to(self.dtype), concat_latent

    # ----- denoiser ---------------------------------------------------------------------------------------
    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, token: torch.Tensor,
                      concat_latent: torch.Tensor) -> torch.Tensor:
        """eps ``[B,4,h,w]`` for scaled noisy latents, timesteps ``[B]`` (or scalar), token ``[B,1,D]``."""
        x = torch.cat([noisy_latents.to(self.dtype), concat_latent.to(self.dtype)], dim=1)
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=x.device)
        timesteps = timesteps.to(x.device).expand(x.shape[0]) if timesteps.dim() == 0 else timesteps.to(x.device)
        return self.unet(x, timesteps, encoder_hidden_states=token.to(self.dtype)).sample

    @staticmethod
    def guidance_conditioning(token: torch.Tensor, concat_latent: torch.Tensor):
        """The classifier-free-guidance batch of ``N`` conditions: ``([0; token] [2N,1,D], [0; concat] [2N,4,h,w])``,
        unconditional half FIRST, zeros for the projected token and for the concat latent."""
        return (torch.cat([torch.zeros_like(token), token]),
                torch.cat([torch.zeros_like(concat_latent), concat_latent]))

    def guided_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, token: torch.Tensor,
                     concat_latent: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided eps: one UNet pass on ``[uncond; cond]`` (zeros token and zeros concat)."""
        if guidance_scale == 1.0:
            return self.predict_noise(noisy_latents, timesteps, token, concat_latent)
        if not torch.is_tensor(timesteps) or timesteps.dim() == 0:
            timesteps = torch.as_tensor(timesteps, device=noisy_latents.device).expand(noisy_latents.shape[0])
        eps = self.predict_noise(torch.cat([noisy_latents, noisy_latents]), torch.cat([timesteps, timesteps]),
                                 *self.guidance_conditioning(token, concat_latent))
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def num_parameters(self) -> dict:
        return {name: sum(p.numel() for p in getattr(self, name).parameters())
                for name in ("unet", "vae", "image_encoder", "camera_projection")}
