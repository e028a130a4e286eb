"""The :class:`Representation` interface: the 3D scene that image-to-3D optimises, behind one base class.

A representation renders a batch of cameras (:class:`zero123.rendering.cameras.Cameras`; conventions:
:mod:`zero123.camera`, z-up world, angles in degrees) to RGB / opacity / depth / normals, owns its regularisers,
its optimiser's parameter groups, its per-step hooks, its state for checkpoints (``nn.Module.state_dict``) and its
export to a mesh. :class:`zero123.pipelines.image_to_3d_trainer.ImageTo3DTrainer` only calls the methods below, so
a new representation is one class registered in :data:`REPRESENTATIONS` (``docs/architecture.md``).

One training step, as the trainer drives it::

    rep.before_step(step, schedule_step, generator)
    out = rep.render(random_cameras, res, background=bg, ...)          # + guidance + rep.regularisers(out, True)
    out_r = rep.render(reference_camera, res_r, background=white, ...) # + RGB/mask + rep.regularisers(out_r, False)
    rep.after_backward(step, schedule_step, optimizer)
    optimizer.step(); optimizer.zero_grad()
    rep.after_step(step, schedule_step, optimizer)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..utils.registry import lookup, registrar

if TYPE_CHECKING:  # pragma: no cover
    import trimesh

    from ..export.mesh import MeshExtractionConfig
    from ..pipelines.image_to_3d_config import ImageTo3DConfig
    from ..rendering.cameras import Cameras


@dataclass
class RenderResult:
    """What every representation's :meth:`Representation.render` returns (a subclass may add fields; the NeRF's
    :class:`zero123.rendering.volume.RenderOutput` has these and its packed per-sample tensors).

    ``rgb`` [B,H,W,3] in [0,1] composited on the background; ``opacity`` [B,H,W,1] in [0,1]; ``depth`` [B,H,W,1]
    (world units along the unit ray, opacity-weighted); ``comp_normal`` [B,H,W,3] in [0,1] (world normals mapped
    by ``(n + 1) / 2``, times opacity) or None; ``stats``: plain numbers for logs (``samples``: the trainer logs it).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    comp_normal: Optional[Tensor] = None
    stats: dict = field(default_factory=dict)


class Representation(torch.nn.Module):
    """Base of the 3D scenes image-to-3D optimises. Subclasses set :attr:`name`, implement the abstract methods and
    ``from_config``; they register with :func:`register_representation` (or an entry in :data:`REPRESENTATIONS`).

    The hooks default to doing nothing. State: ``state_dict()`` / ``load_state_dict()`` of ``nn.Module`` hold
    everything a resume needs (a representation whose tensors change length, e.g. Gaussians, overrides
    ``load_state_dict`` to accept a state of another length).
    """

    name: ClassVar[str] = ""
    #: regulariser names that need normals in the render (``with_normals=True`` when any has weight > 0)
    normal_terms: ClassVar[Tuple[str, ...]] = ()
    #: regulariser names that need perturbed normals (``normal_perturb_std`` > 0 when any has weight > 0)
    perturbed_normal_terms: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: "ImageTo3DConfig") -> "Representation":
        """A new representation (on CPU, initialised from torch's global RNG) from the run's config."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU when there is none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    # ----- rendering ----------------------------------------------------------------------------------------
    def render(self, cameras: "Cameras", resolution: int, *, background: Tensor, shading: str = "albedo",
               ambient_ratio: float = 1.0, with_normals: bool = False, normal_perturb_std: float = 0.0,
               generator: Optional[torch.Generator] = None) -> RenderResult:
        """Differentiable render of ``cameras`` at ``resolution`` x ``resolution`` px on ``background`` [B,3] in
        [0,1]; ``shading``: ``"albedo"``, ``"diffuse"`` or ``"textureless"`` (``ambient_ratio`` of the light
        ambient, the rest from a point light at ``cameras.light_positions``); ``generator``: the device generator
        of any random draw (sample offsets, perturbations)."""
        raise NotImplementedError

    def render_chunked(self, cameras: "Cameras", resolution: int, **kwargs) -> RenderResult:
        """As :meth:`render` (same keywords) without gradients and with bounded memory (videos, previews)."""
        raise NotImplementedError

    def render_backward(self, cameras: "Cameras", resolution: int, weights: Dict[str, float], *,
                        background: Tensor, with_sparsity: bool, image_terms=None, targets=None,
                        max_samples: Optional[int] = None, max_whole_samples: Optional[int] = None,
                        **render_kwargs) -> Tuple[Dict[str, Tensor], dict]:
        """Render ``cameras``, take the loss terms and back-propagate ``sum(weights[k] * term_k)`` (a missing
        weight is 0). Terms, in this order: ``image_terms(rgb)`` (``{name: loss}`` of the whole images, e.g. the
        guidance), with ``targets = (gt_rgb [B,H,W,3], gt_mask [B,H,W,1])`` ``"rgb"`` / ``"mask"``
        (:func:`zero123.guidance.losses.reference_rgb_loss` / ``mask_loss`` on ``background``), then
        :meth:`regularisers`. ``render_kwargs``: as :meth:`render`. Returns ``(detached terms, render stats)``.

        ``max_samples``: the most a render part may hold, ``max_whole_samples``: the most a render made whole may
        hold (``zero123.utils.memory.MemoryPlan.limits``); a representation that renders in parts with the same
        gradient (the NeRF: ``zero123.rendering.chunked``) keeps to them, this default renders whole."""
        out = self.render(cameras, resolution, background=background, **render_kwargs)
        terms = dict(image_terms(out.rgb)) if image_terms is not None else {}
        if targets is not None:
            terms.update(reference_terms(out, targets, background))
        terms.update(self.regularisers(out, with_sparsity=with_sparsity))
        loss = sum(weights.get(k, 0.0) * v for k, v in terms.items())
        if isinstance(loss, Tensor) and loss.requires_grad:
            loss.backward()
        return {k: v.detach() for k, v in terms.items()}, dict(out.stats)

    def regularisers(self, out: RenderResult, *, with_sparsity: bool) -> Dict[str, Tensor]:
        """Its own loss terms of one render by name (scalars); the trainer weights them with ``cfg.losses`` (a
        name missing from :class:`zero123.guidance.losses.LossWeights` has weight 0) and sums them.
        ``with_sparsity``: random views (True) or the reference view (False)."""
        return {}

    # ----- optimisation -------------------------------------------------------------------------------------
    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of its parameters (its own param groups and learning rates)."""
        raise NotImplementedError

    def before_step(self, step: int, schedule_step: int, generator: Optional[torch.Generator]) -> None:
        """Before the step's renders (NeRF: occupancy-grid update). ``generator``: the device generator."""

    def after_backward(self, step: int, schedule_step: int, optimizer: torch.optim.Optimizer) -> None:
        """After both backward passes, before ``optimizer.step()`` (gradients are there to read)."""

    def after_step(self, step: int, schedule_step: int, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.step()`` (may edit the optimiser's parameters in place, e.g. densify/prune)."""

    # ----- export -------------------------------------------------------------------------------------------
    def extract_mesh(self, config: "MeshExtractionConfig") -> "trimesh.Trimesh":
        """A surface mesh in the world frame of :mod:`zero123.camera` (world units)."""
        raise NotImplementedError

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo ``[N,3]`` in [0,1] at world points ``[N,3]`` (texture baking, vertex colours)."""
        raise NotImplementedError


def reference_terms(out: RenderResult, targets, background: Tensor) -> Dict[str, Tensor]:
    """The reference view's ``rgb`` and ``mask`` terms of a whole render against ``targets = (gt_rgb, gt_mask)``."""
    from ..guidance.losses import mask_loss, reference_rgb_loss

    gt_rgb, gt_mask = targets
    return {"rgb": reference_rgb_loss(out.rgb, gt_rgb, gt_mask, background), "mask": mask_loss(out.opacity, gt_mask)}


#: registry key (``ImageTo3DConfig.representation``) -> class; filled by :func:`register_representation`
REPRESENTATIONS: Dict[str, type] = {}


#: class decorator: add a class to :data:`REPRESENTATIONS` under its ``name``
register_representation = registrar(REPRESENTATIONS)


def build_representation(config: "ImageTo3DConfig", device, *, seed: Optional[int] = None) -> Representation:
    """The representation ``config.representation`` names, built from ``config`` and moved to ``device``.
    ``seed``: seed torch's global RNG first (the initialisation ``to3d`` uses: ``torch.manual_seed(seed)``)."""
    from . import REPRESENTATIONS as registry  # the package import registers the built-in ones

    cls = lookup(registry, config.representation, "representation")
    if seed is not None:
        torch.manual_seed(seed)
    return cls.from_config(config).to(device)
