"""zero123: one photo of an object to novel views and a 3D model with Zero123-family diffusion models.

Importable without a GPU; heavy submodules (diffusers, transformers) load on first use.
"""

from .errors import CheckpointError, Zero123Error

__version__ = "0.1.0"

__all__ = ["Zero123Error", "CheckpointError", "__version__", "Zero123Pipeline", "load_model", "to3d"]


def __getattr__(name):  # lazy imports keep `import zero123` light
    if name == "Zero123Pipeline":
        from .pipelines.zero123_pipeline import Zero123Pipeline

        return Zero123Pipeline
    if name == "load_model":
        from .loading import load_model

        return load_model
    if name == "to3d":
        from .pipelines.image_to_3d import to3d

        return to3d
    raise AttributeError(f"module 'zero123' has no attribute {name!r}")
