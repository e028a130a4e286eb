"""Model components: the diffusers UNet/VAE and transformers CLIP vision tower, plus our camera projection."""

from .camera_projection import CameraProjection
from .clip_image_encoder import clip_image_embedding, clip_preprocess
from .zero123_model import Zero123Model

__all__ = ["CameraProjection", "Zero123Model", "clip_image_embedding", "clip_preprocess"]
