"""Pipelines: novel views (``zero123_pipeline``), image-to-3D (``image_to_3d``), text-to-3D (``text_to_3d``)
and its text-to-image step (``text2image``).

Import the submodules directly; nothing is imported eagerly here so ``import zero123`` stays light.
"""
