"""Small helpers shared by every area: image conversion, PNG grids, feature pictures, atomic writes."""

from .files import atomic_path
from .images import from_uint8, pca_rgb, save_image_grid, to_pil, to_uint8

__all__ = ["atomic_path", "from_uint8", "pca_rgb", "save_image_grid", "to_pil", "to_uint8"]
