"""The :class:`Guidance` interface: a loss on renders seen from known cameras, and its registry.

A guidance is built once per run from the diffusion model and the prepared input view (:func:`build_guidance`),
then called on every step's random-view renders: ``guidance(rgb, cameras, schedule_step, generator=...)`` with
``rgb`` [B,H,W,3] in [0,1] and :class:`zero123.rendering.cameras.Cameras` (degrees, world units; conventions
:mod:`zero123.camera`). The trainer weights ``out.loss`` with ``cfg.losses.<loss_name>`` and logs it as
``z/<loss_name>``. ``"zero123-sds"`` is :class:`zero123.guidance.sds.SDSGuidance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Dict, Optional

import torch

from ..utils.registry import lookup, registrar

if TYPE_CHECKING:  # pragma: no cover
    from ..pipelines.image_to_3d_config import ImageTo3DConfig
    from ..pipelines.image_to_3d_reference import ReferenceImage
    from ..rendering.cameras import Cameras


@dataclass
class GuidanceOutput:
    """``loss``: a scalar, differentiable w.r.t. the renders. Subclasses add their intermediates."""

    loss: torch.Tensor


class Guidance:
    """Base of the guidances: subclasses set :attr:`name` (registry key) and :attr:`loss_name` (the
    ``LossWeights`` entry that weights it), implement ``__call__`` and ``from_config``."""

    name: ClassVar[str] = ""
    loss_name: ClassVar[str] = "guidance"

    @classmethod
    def from_config(cls, config: "ImageTo3DConfig", model, reference: "ReferenceImage") -> "Guidance":
        raise NotImplementedError

    def __call__(self, rgb: torch.Tensor, cameras: "Cameras", schedule_step: int, *,
                 generator: Optional[torch.Generator] = None, **draws) -> GuidanceOutput:
        """The loss of renders ``rgb`` [B,H,W,3] in [0,1] seen from ``cameras`` at recipe step ``schedule_step``;
        ``generator``: the device generator of its random draws; ``draws``: given draws instead of random ones."""
        raise NotImplementedError


#: registry key (``ImageTo3DConfig.guidance``) -> class; filled by :func:`register_guidance`
GUIDANCES: Dict[str, type] = {}


#: class decorator: add a class to :data:`GUIDANCES` under its ``name``
register_guidance = registrar(GUIDANCES)


def build_guidance(config: "ImageTo3DConfig", model, reference: "ReferenceImage") -> Guidance:
    """The guidance ``config.guidance`` names, for ``model`` conditioned on ``reference`` (its ``condition``) and
    the input camera of ``config.reference``. The model is put in eval mode and frozen (``requires_grad_(False)``;
    ``to3d`` restores its flags afterwards)."""
    from . import sds  # noqa: F401  (registers zero123-sds)

    cls = lookup(GUIDANCES, config.guidance, "guidance")
    model.eval().requires_grad_(False)  # read-only: only the representation is trained
    return cls.from_config(config, model, reference)
