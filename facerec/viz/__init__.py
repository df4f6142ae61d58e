"""facerec.viz: the DRConv guided masks (paper arXiv 2003.12243, section 3.2 and Fig. 3) made visible.

``masks`` captures the masks of chosen DRConv layers with forward hooks (the model code is untouched),
``figures`` renders them as Fig. 3 grids (PNG / PDF / SVG, raw .npy masks, region-area JSON), ``palette``
holds the fixed colour-blind-safe region colours, ``inputs`` reads faces from image files, folders,
``.rec`` and ``.bin``. Command line: ``python visualize_masks.py --help``.
"""
from facerec.viz.figures import FIGURE_FORMATS, compose_grid, figure_inches, grid_pixel_size, render_mask_figure
from facerec.viz.figures import save_mask_figure
from facerec.viz.inputs import LoadedImages, fit_image, load_images, read_image_file
from facerec.viz.masks import MaskLayer, capture_masks, find_mask_layers, mask_shapes, overlay_mask, region_areas
from facerec.viz.masks import select_layers, upsample_nearest
from facerec.viz.palette import MAX_REGIONS, PALETTE, PALETTE_HEX, PALETTE_NAMES, palette_rgb

__all__ = [
    "FIGURE_FORMATS",
    "LoadedImages",
    "MAX_REGIONS",
    "MaskLayer",
    "PALETTE",
    "PALETTE_HEX",
    "PALETTE_NAMES",
    "capture_masks",
    "compose_grid",
    "figure_inches",
    "find_mask_layers",
    "fit_image",
    "grid_pixel_size",
    "load_images",
    "mask_shapes",
    "overlay_mask",
    "palette_rgb",
    "read_image_file",
    "region_areas",
    "render_mask_figure",
    "save_mask_figure",
    "select_layers",
    "upsample_nearest",
]
