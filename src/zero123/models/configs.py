"""Model sizes as plain dataclasses: the real Zero123 sizes, the tiny test sizes, and builders from them.

``unet``/``vae`` hold diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` config kwargs, ``clip`` holds
transformers ``CLIPVisionConfig`` kwargs. ``Zero123Config.build()`` makes a random-weight ``Zero123Model``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from ..camera import ConditioningVariant

SD_SCALING_FACTOR = 0.18215


def sd_unet_config(model_channels=320, channel_mult=(1, 2, 4, 4), attention_levels=(0, 1, 2), num_res_blocks=2,
                   num_heads=8, context_dim=768, transformer_depth=1, sample_size=32, in_channels=8,
                   out_channels=4) -> dict:
    """diffusers UNet config of an SD1-style LDM UNet (``attention_head_dim`` = number of heads, as in SD1)."""
    n = len(channel_mult)
    down = ["CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(n)]
    up = ["CrossAttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(n))]
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                down_block_types=down, up_block_types=up,
                block_out_channels=[model_channels * m for m in channel_mult], layers_per_block=num_res_blocks,
                cross_attention_dim=context_dim, attention_head_dim=num_heads,
                transformer_layers_per_block=transformer_depth, use_linear_projection=False)


def sd_vae_config(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, resolution=256,
                  scaling_factor=SD_SCALING_FACTOR) -> dict:
    """diffusers AutoencoderKL config of an LDM ``AutoencoderKL`` ddconfig (no attention outside the mid block)."""
    n = len(ch_mult)
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=[ch * m for m in ch_mult],
                latent_channels=z_channels, layers_per_block=num_res_blocks, sample_size=resolution,
                scaling_factor=scaling_factor)


def openai_clip_vision_config(width=1024, layers=24, patch_size=14, image_size=224, embed_dim=768,
                              mlp_ratio=4) -> dict:
    """transformers CLIPVisionConfig kwargs of an OpenAI CLIP image tower (heads = width // 64, QuickGELU)."""
    return dict(hidden_size=width, intermediate_size=width * mlp_ratio, num_hidden_layers=layers,
                num_attention_heads=max(1, width // 64), image_size=image_size, patch_size=patch_size,
                projection_dim=embed_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5)


@dataclass
class Zero123Config:
    """Sizes of the four networks plus the conditioning variant."""

    unet: dict = field(default_factory=sd_unet_config)
    vae: dict = field(default_factory=sd_vae_config)
    clip: dict = field(default_factory=openai_clip_vision_config)
    variant: str = ConditioningVariant.ZERO123.value

    @property
    def embed_dim(self) -> int:
        return int(self.clip["projection_dim"])

    def to_dict(self) -> dict:
        return copy.deepcopy(asdict(self))

    def build(self, dtype=None, device=None, seed: int | None = None):
        """A ``Zero123Model`` with random weights of these sizes (deterministic when ``seed`` is given)."""
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from .camera_projection import CameraProjection
        from .zero123_model import Zero123Model

        if seed is not None:
            torch.manual_seed(seed)
        model = Zero123Model(
            unet=UNet2DConditionModel(**self.unet),
            vae=AutoencoderKL(**self.vae),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**self.clip)),
            camera_projection=CameraProjection(embed_dim=self.embed_dim, variant=self.variant),
        )
        return model.to(device=device, dtype=dtype)


def full_size_config(variant: str = "zero123") -> Zero123Config:
    """The released Zero123 / Stable Zero123 sizes (UNet 859.5 M, VAE 83.7 M, CLIP ViT-L/14 304 M params)."""
    return Zero123Config(variant=ConditioningVariant.parse(variant).value)


def tiny_config(variant: str = "zero123") -> Zero123Config:
    """The sizes of ``shared/fixtures/tiny_zero123_ldm.ckpt``: 32 px images, 8x8 latents; for tests."""
    return Zero123Config(
        unet=sd_unet_config(model_channels=32, channel_mult=(1, 2, 2), attention_levels=(0, 1), num_res_blocks=1,
                            num_heads=2, sample_size=8),
        vae=sd_vae_config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=32),
        clip=openai_clip_vision_config(width=64, layers=2, patch_size=32),
        variant=ConditioningVariant.parse(variant).value,
    )
