"""Renderers: the CPU mesh rasteriser (``mesh_rasterizer``) and the differentiable renderers of the 3D fields
(``volume``: volume rendering of a :class:`zero123.fields.NeRFField`; ``cameras``: ray bundles and the image-to-3D
camera sampling).

Submodules are imported explicitly (``from zero123.rendering.mesh_rasterizer import render_mesh``,
``from zero123.rendering.volume import render``) to keep ``import zero123`` light.
"""
