"""Neural fields for image-to-3D: the hash-grid encoding, the density/albedo NeRF and its occupancy grid.

``from zero123.fields import NeRFField, FieldConfig, OccupancyGrid, HashGridEncoding`` (pure PyTorch, no custom
CUDA build).
"""

from .hash_grid import HashGridEncoding, level_layout
from .nerf import FieldConfig, FieldOutput, NeRFField
from .occupancy import OccupancyGrid

__all__ = ["HashGridEncoding", "level_layout", "FieldConfig", "FieldOutput", "NeRFField", "OccupancyGrid"]
