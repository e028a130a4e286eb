"""The camera projection ``cc_projection``: Linear(embed_dim + 4 -> embed_dim) applied to [CLIP embedding, T]."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..camera import ConditioningVariant


class CameraProjection(ModelMixin, ConfigMixin):
    """Maps ``cat([clip_embedding [B,1,D], T [B,1,4]], -1)`` to the single cross-attention token ``[B,1,D]``.

    Weights are stored as ``projection.weight`` ``[D, D+4]`` / ``projection.bias`` ``[D]``, the names of the
    ``cc_projection/`` of the kxic/zero123-* folders (diffusers' community ``CCProjection``, whose config has no
    arguments); bennyguo/ashawkey folders name them ``clip_camera_projection/proj.*`` (``zero123.loading`` maps
    both, see ``zero123.loading.folder_layouts``). ``variant`` records how T is formed (``zero123`` or
    ``stable_zero123``, see ``zero123.camera``); a written folder keeps it in its top-level ``zero123.json``.
    ``camera_dim`` is 4 for every released model.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, embed_dim: int = 768, camera_dim: int = 4, variant: str = "zero123"):
        super().__init__()
        ConditioningVariant.parse(variant)
        self.projection = nn.Linear(embed_dim + camera_dim, embed_dim)

    @property
    def variant(self) -> ConditioningVariant:
        return ConditioningVariant.parse(self.config.variant)

    def identity_init(self) -> None:
        """As the original starts a new ``cc_projection`` (``ddpm.py``: ``nn.init.eye_`` on ``weight[:D, :D]``,
        ``nn.init.zeros_`` on the bias): identity on the CLIP columns, zero bias, and the 4 camera columns keep
        ``nn.Linear``'s default initialisation (uniform in +-1/sqrt(D + 4), drawn when the layer was built)."""
        d = self.config.embed_dim
        with torch.no_grad():
            self.projection.weight[:, :d].copy_(torch.eye(d))
            self.projection.bias.zero_()

    def forward(self, clip_embedding: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """clip_embedding ``[B,1,D]`` (or ``[B,D]``), camera ``[B,4]`` -> ``[B,1,D]``."""
        if clip_embedding.dim() == 2:
            clip_embedding = clip_embedding[:, None]
        camera = camera.to(clip_embedding.dtype).reshape(clip_embedding.shape[0], 1, -1)
        return self.projection(torch.cat([clip_embedding, camera], dim=-1))
