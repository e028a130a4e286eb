"""3D representations that image-to-3D optimises, behind one interface (:class:`Representation`, :mod:`.base`).

``REPRESENTATIONS`` maps the config key ``ImageTo3DConfig.representation`` to a class; ``build_representation``
builds the one a config names. Built in: ``"nerf"`` (:class:`NeRFRepresentation`: hash-grid field + occupancy grid
+ volume rendering) and ``"gaussians"`` (:class:`GaussianRepresentation`: 3D Gaussian splatting, DreamGaussian's
route, :mod:`.gaussians`). Adding one: ``docs/architecture.md``, "Adding a representation".
"""

from .base import REPRESENTATIONS, Representation, RenderResult, build_representation, register_representation
from .nerf import NeRFRepresentation  # registered first: the default, listed first in errors
from .gaussians.representation import GaussianRepresentation  # noqa: E402,I001

__all__ = ["Representation", "RenderResult", "REPRESENTATIONS", "build_representation", "register_representation",
           "NeRFRepresentation", "GaussianRepresentation"]
