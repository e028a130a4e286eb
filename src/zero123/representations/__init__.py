"""3D representations that image-to-3D optimises, behind one interface (:class:`Representation`, :mod:`.base`).

``REPRESENTATIONS`` maps the config key ``ImageTo3DConfig.representation`` to a class; ``build_representation``
builds the one a config names. Built in: ``"nerf"`` (:class:`NeRFRepresentation`: hash-grid field + occupancy grid
+ volume rendering). Adding one: ``docs/architecture.md``, "Adding a representation".
"""

from .base import REPRESENTATIONS, Representation, RenderResult, build_representation, register_representation
from .nerf import NeRFRepresentation

__all__ = ["Representation", "RenderResult", "REPRESENTATIONS", "build_representation", "register_representation",
           "NeRFRepresentation"]
