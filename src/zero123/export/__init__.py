"""Export of reconstructed fields: marching-cubes meshes, baked UV textures, OBJ/GLB/PLY, MP4/GIF, previews.

``from zero123.export import extract_mesh, bake_texture, write_obj, write_glb, write_ply, write_mp4, write_gif``.
"""

from .mesh import MeshExtractionConfig, clean_mesh, extract_mesh, marching_cubes, sample_grid
from .texture import bake_texture, rasterize_uv, uv_parametrize, vertex_colors
from .writers import (atomic_write_bytes, atomic_write_with, from_export_frame, image_grid, to_export_frame, write_gif,
                      write_glb, write_mp4, write_obj, write_ply, write_png)

__all__ = ["MeshExtractionConfig", "extract_mesh", "clean_mesh", "marching_cubes", "sample_grid", "bake_texture",
           "rasterize_uv", "uv_parametrize", "vertex_colors", "atomic_write_bytes", "atomic_write_with", "write_obj",
           "write_glb", "write_ply", "write_png", "write_mp4", "write_gif", "image_grid", "to_export_frame",
           "from_export_frame"]
