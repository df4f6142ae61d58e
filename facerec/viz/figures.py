"""Guided-mask figures as the DRConv paper's Fig. 3 (arXiv 2003.12243): one row per face, the original
first, then one column per chosen DRConv layer with its region map blended over the face.

Two renderings of the same grid:

* ``compose_grid``: a lossless raster (numpy, no text) of exactly ``grid_pixel_size`` pixels, saved
  as ``grid.png``;
* ``save_mask_figure``: a matplotlib figure for papers with column titles and a legend of the region
  colours, as PNG at a chosen DPI and as vector PDF / SVG (text stays text; the face images are
  embedded without resampling). Its size is ``figure_inches`` times the DPI, exactly.

``render_mask_figure`` runs the whole chain for a model held in memory (the demo calls it) and writes
the raw masks (.npy) and per-layer region-area statistics (JSON) beside the figures.
"""
import json
import logging
import math
import re
import textwrap
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch import nn

from facerec._quote import quote
from facerec.viz.masks import MaskLayer, LayerSpec, capture_masks, overlay_mask, region_areas, select_layers
from facerec.viz.palette import MAX_REGIONS, PALETTE, PALETTE_HEX, PALETTE_NAMES

__all__ = [
    "FIGURE_FORMATS",
    "grid_pixel_size",
    "compose_grid",
    "figure_inches",
    "save_mask_figure",
    "render_mask_figure",
]

logger = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "pdf", "svg")

# Figure layout, in inches.
_MARGIN = 0.08
_GAP = 0.05
_TITLE_H = 0.46
_NAME_W = 0.18
_LEGEND_ENTRY_W = 0.95
_LEGEND_ROW_H = 0.17
_LEGEND_PAD_H = 0.22


def _check_inputs(images: np.ndarray, masks: Sequence[np.ndarray]) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be uint8 RGB (N, H, W, 3), got {got}")
    for k, m in enumerate(masks):
        if np.ndim(m) != 3 or len(m) != len(images):
            raise ValueError(f"masks[{k}] must be (N={len(images)}, Ho, Wo), got shape {np.shape(m)}")


def grid_pixel_size(n_images: int, n_layers: int, image_size: tuple[int, int], scale: int = 2, gap: int = 4) -> tuple:
    """(height, width) in pixels of ``compose_grid``'s raster: N rows and 1 + L columns of cells
    (H * scale, W * scale), with ``gap`` pixels between cells and around the border."""
    h, w = image_size
    return (n_images * h * scale + (n_images + 1) * gap, (n_layers + 1) * w * scale + (n_layers + 2) * gap)


def compose_grid(
    images: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    alpha: float = 0.5,
    scale: int = 2,
    gap: int = 4,
    background: int = 255,
) -> np.ndarray:
    """Fig. 3 grid as one uint8 RGB raster.

    Args:
        images: uint8 RGB faces (N, H, W, 3).
        masks: one integer array (N, Ho, Wo) per layer (values < 16); each is upsampled with nearest
            neighbour to the face and blended with ``overlay_mask(alpha=alpha)``.
        alpha: weight of the region colours (1: bare region maps).
        scale: integer enlargement of every cell (nearest neighbour, so pixels stay crisp).
        gap: pixels between cells and around the border, filled with ``background``.

    Returns:
        uint8 (Hg, Wg, 3), (Hg, Wg) = ``grid_pixel_size(N, L, (H, W), scale, gap)``.
    """
    _check_inputs(images, masks)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {quote(scale)}")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"gap must be a non-negative int, got {quote(gap)}")
    n, h, w, _ = images.shape
    out = np.full(grid_pixel_size(n, len(masks), (h, w), scale, gap) + (3,), background, dtype=np.uint8)
    ch, cw = h * scale, w * scale
    for i in range(n):
        cells = [images[i]] + [overlay_mask(images[i], m[i], alpha=alpha) for m in masks]
        y = gap + i * (ch + gap)
        for j, cell in enumerate(cells):
            x = gap + j * (cw + gap)
            out[y:y + ch, x:x + cw] = np.repeat(np.repeat(cell, scale, axis=0), scale, axis=1)
    return out


def _legend_layout(width_in: float, regions: int) -> tuple[int, int]:
    ncol = max(1, min(regions, int((width_in - 2 * _MARGIN) // _LEGEND_ENTRY_W)))
    return ncol, math.ceil(regions / ncol)


def figure_inches(n_images: int, n_layers: int, image_size: tuple[int, int], regions: int,
                  cell_inches: float = 1.2, names: bool = True) -> tuple[float, float]:
    """(width, height) in inches of ``save_mask_figure``'s figure, multiples of 1/8 inch, so its PNG is
    exactly floor(inches * dpi) pixels each way."""
    width, height = _content_inches(n_images, n_layers, image_size, regions, cell_inches, names)
    return math.ceil(width * 8) / 8, math.ceil(height * 8) / 8


def _content_inches(n_images: int, n_layers: int, image_size: tuple[int, int], regions: int,
                    cell_inches: float, names: bool) -> tuple[float, float]:
    h, w = image_size
    cell_w, cell_h = cell_inches * w / max(h, w), cell_inches * h / max(h, w)
    width = 2 * _MARGIN + (_NAME_W if names else 0.0) + (n_layers + 1) * cell_w + n_layers * _GAP
    width = max(width, 2 * _MARGIN + min(regions, 3) * _LEGEND_ENTRY_W)
    _, legend_rows = _legend_layout(width, regions)
    height = 2 * _MARGIN + _TITLE_H + n_images * cell_h + (n_images - 1) * _GAP
    height += _LEGEND_PAD_H + legend_rows * _LEGEND_ROW_H
    return width, height


def _column_title(layer: MaskLayer, mask_size: tuple[int, int]) -> str:
    wrapped = textwrap.wrap(layer.label.replace(".", ". "), width=22)
    name = "\n".join(part.replace(". ", ".") for part in wrapped[:2]) + ("\u2026" if len(wrapped) > 2 else "")
    return f"L{layer.index} {name}\nm={layer.regions}, {mask_size[0]}\u00d7{mask_size[1]}"


def save_mask_figure(
    images: np.ndarray,
    masks: Sequence[np.ndarray],
    layers: Sequence[MaskLayer],
    path_stem: Union[str, Path],
    *,
    formats: Sequence[str] = ("png",),
    dpi: int = 300,
    alpha: float = 0.5,
    names: Optional[Sequence[str]] = None,
    cell_inches: float = 1.2,
) -> dict[str, Path]:
    """Paper figure (Fig. 3 layout) with column titles and a legend of region colours.

    Args:
        images: uint8 RGB faces (N, H, W, 3).
        masks: one integer array (N, Ho, Wo) per layer, in the order of ``layers``.
        layers: the layers the masks belong to (titles and region counts).
        path_stem: output path without extension; ``.png`` / ``.pdf`` / ``.svg`` are appended.
        formats: any of ``png``, ``pdf``, ``svg``.
        dpi: resolution of the PNG (and of rasterised parts of PDF/SVG), 10..2400.
        alpha: weight of the region colours over the face.
        names: one short label per face, written beside its row (None: no labels).
        cell_inches: edge of one face cell, in inches.

    Returns:
        ``{format: path written}``.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    _check_inputs(images, masks)
    formats = _check_formats(formats)
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 2400:
        raise ValueError(f"dpi must be an int in 10..2400, got {quote(dpi)}")
    if len(layers) != len(masks):
        raise ValueError(f"got {len(masks)} mask arrays for {len(layers)} layers")
    _check_palette(layers)
    if not cell_inches > 0:
        raise ValueError(f"cell_inches must be positive, got {quote(cell_inches)}")
    if names is not None and len(names) != len(images):
        raise ValueError(f"got {len(names)} names for {len(images)} images")
    n, h, w, _ = images.shape
    regions = max([layer.regions for layer in layers] + [1])
    width, height = figure_inches(n, len(layers), (h, w), regions, cell_inches, names is not None)
    cell_w, cell_h = cell_inches * w / max(h, w), cell_inches * h / max(h, w)
    content_w, _ = _content_inches(n, len(layers), (h, w), regions, cell_inches, names is not None)
    left = _MARGIN + (_NAME_W if names is not None else 0.0) + (width - content_w) / 2
    top = height - _MARGIN - _TITLE_H
    rc = {"pdf.fonttype": 42, "svg.fonttype": "none", "font.size": 6.5, "font.family": "DejaVu Sans"}
    with rc_context(rc):
        fig = Figure(figsize=(width, height), dpi=dpi)
        titles = ["input"] + [_column_title(layer, m.shape[1:]) for layer, m in zip(layers, masks)]
        for i in range(n):
            cells = [images[i]] + [overlay_mask(images[i], m[i], alpha=alpha) for m in masks]
            y = top - (i + 1) * cell_h - i * _GAP
            for j, cell in enumerate(cells):
                x = left + j * (cell_w + _GAP)
                ax = fig.add_axes((x / width, y / height, cell_w / width, cell_h / height))
                ax.imshow(cell, interpolation="none", resample=False)
                ax.set_axis_off()
                if i == 0:
                    ax.set_title(titles[j], fontsize=6, pad=2, loc="center", va="bottom")
                if j == 0 and names is not None:
                    fig.text((x - 0.03) / width, (y + cell_h / 2) / height, str(names[i])[:24], rotation=90,
                             ha="right", va="center", fontsize=5)
        ncol, _ = _legend_layout(width, regions)
        handles = [Patch(facecolor=PALETTE_HEX[j], edgecolor="#666666", linewidth=0.3,
                         label=f"{j} {PALETTE_NAMES[j].split(' (')[0]}") for j in range(regions)]
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, _MARGIN / height), ncol=ncol,
                   frameon=False, fontsize=5.5, title="guided-mask region (argmax of the guided feature)",
                   title_fontsize=6, handlelength=1.2, handleheight=1.0, columnspacing=0.8, borderaxespad=0.0)
        written = {}
        stem = Path(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
        for fmt in formats:
            path = stem.with_name(stem.name + "." + fmt)
            fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata[fmt])
            written[fmt] = path
    return written


def _check_palette(layers: Sequence[MaskLayer]) -> None:
    for layer in layers:
        if layer.regions > MAX_REGIONS:
            raise ValueError(f"layer {quote(layer.name)} has {layer.regions} regions; the region palette has "
                             f"{MAX_REGIONS} colours, so only layers with m <= {MAX_REGIONS} can be drawn "
                             "(capture_masks still returns its masks)")


def _check_formats(formats: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in re.split(r"[,\s]+", formats) if f]
    out = []
    for fmt in formats:
        key = str(fmt).lower().lstrip(".")
        if key not in FIGURE_FORMATS:
            raise ValueError(f"unknown figure format {quote(fmt)}; valid formats: {', '.join(FIGURE_FORMATS)}")
        if key not in out:
            out.append(key)
    return tuple(out)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def render_mask_figure(
    model: nn.Module,
    images: np.ndarray,
    out_dir: Union[str, Path],
    layers: LayerSpec = "all",
    formats: Union[str, Sequence[str]] = ("png",),
    *,
    dpi: int = 300,
    alpha: float = 0.5,
    names: Optional[Sequence[str]] = None,
    normalize: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
    batch_size: int = 16,
    scale: int = 2,
    notes: Sequence[str] = (),
) -> dict:
    """Guided masks of ``model`` for ``images``, written as Fig. 3 figures, raw masks and statistics.

    Args:
        model: a backbone with DRConv layers, in memory (e.g. the demo's, or ``load_backbone(path)``).
        images: uint8 RGB faces (N, H, W, 3) at the model's input size.
        out_dir: created if needed.
        layers: ``"all"``, names, indices (see ``select_layers``).
        formats: figure formats among png, pdf, svg (a list or ``"png,pdf"``).
        dpi: PNG resolution.
        alpha: weight of region colours over the face.
        names: one label per face (default ``face 0``, ``face 1``, ...).
        normalize: uint8 -> model input; default ``facerec.data.transforms.normalize``.
        batch_size: faces per forward pass.
        scale: enlargement of the cells of ``grid.png``.
        notes: free-text notes (e.g. how images were resized) stored in the statistics JSON.

    Returns:
        ``{"grid": grid.png, "stats": region_stats.json, "masks": {layer name: .npy}, "<format>": figure}``.

    Raises:
        ValueError: model without DRConv layers, unknown layer, bad images, unknown format.
    """
    formats = _check_formats(formats)
    chosen = select_layers(model, layers)
    _check_palette(chosen)
    names = [f"face {i}" for i in range(len(images))] if names is None else [str(s) for s in names]
    masks = capture_masks(model, images, chosen, batch_size=batch_size, normalize=normalize)
    arrays = [masks[layer.name] for layer in chosen]
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written: dict = {"masks": {}}
    stats_layers = []
    for layer, array in zip(chosen, arrays):
        path = out / "masks" / f"L{layer.index:02d}_{_safe(layer.label)}.npy"
        np.save(path, array)
        written["masks"][layer.name] = path
        stats_layers.append({"index": layer.index, "name": layer.name, "npy": str(path.relative_to(out)),
                             **region_areas(array, layer.regions)})
    grid = compose_grid(images, arrays, alpha=alpha, scale=scale)
    grid_path = out / "grid.png"
    if not cv2.imwrite(str(grid_path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {grid_path}")
    written["grid"] = grid_path
    written.update(save_mask_figure(images, arrays, chosen, out / "figure", formats=formats, dpi=dpi,
                                    alpha=alpha, names=names))
    stats = {
        "images": names,
        "image_size": list(images.shape[1:3]),
        "notes": list(notes),
        "palette": [{"region": j, "rgb": PALETTE[j].tolist(), "hex": PALETTE_HEX[j], "name": PALETTE_NAMES[j]}
                    for j in range(max(layer.regions for layer in chosen))],
        "layers": stats_layers,
    }
    stats_path = out / "region_stats.json"
    stats_path.write_text(json.dumps(stats, indent=1) + "\n")
    written["stats"] = stats_path
    logger.info("wrote guided-mask figures for %d faces x %d layers to %s", len(images), len(chosen), out)
    return written
