"""Guided masks of DRConv layers captured with forward hooks (DRConv paper, arXiv 2003.12243, section 3.2).

A DRConv layer computes its guided feature ``F`` (B, m, Ho, Wo) with a k x k convolution named ``guide``
(a ``DRConv2d`` owns one, or a bottleneck block owns one shared by its 1x1 DRConvs); the guided mask is
``M[u, v] = argmax_j F[j, u, v]`` (paper Eq. 4), values in ``[0, m)``, ties to the lowest index. This
module finds those convolutions with ``facerec.nn.guide_modules``, hooks them for one forward pass
(the model code is never touched and the hooks are always removed), and turns the masks into region
statistics and colour overlays (paper Fig. 3). Figures live in ``facerec.viz.figures``. uint8 faces are
normalised with ``facerec.data.transforms.normalize`` (the project's one normalisation, imported when used)
unless the caller passes its own ``normalize`` or an already normalised tensor.
"""
import dataclasses
import logging
import re
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from facerec._quote import quote
from facerec.nn import guide_modules
from facerec.viz.palette import MAX_REGIONS, PALETTE

__all__ = [
    "MaskLayer",
    "find_mask_layers",
    "select_layers",
    "capture_masks",
    "mask_shapes",
    "region_areas",
    "upsample_nearest",
    "overlay_mask",
]

logger = logging.getLogger(__name__)

LayerSpec = Union[str, int, "MaskLayer", Sequence[Union[str, int, "MaskLayer"]]]


@dataclasses.dataclass(frozen=True)
class MaskLayer:
    """One DRConv guided-mask layer of a model.

    Attributes:
        index: position in ``find_mask_layers(model)`` (forward order of registration).
        name: qualified name of the guide convolution, e.g. ``"blocks.3.guide"``.
        regions: region count m (the guide conv's ``out_channels``).
        module: the guide ``nn.Conv2d`` itself.
    """

    index: int
    name: str
    regions: int
    module: nn.Conv2d = dataclasses.field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """The layer name without the trailing ``.guide`` (the DRConv layer or block it belongs to)."""
        return re.sub(r"\.?guide$", "", self.name) or self.name


def find_mask_layers(model: nn.Module) -> list[MaskLayer]:
    """Every DRConv guided-mask layer of ``model``, in ``named_modules`` order.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model has no DRConv layer (no nn.Conv2d whose name ends in ``guide``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    guides = guide_modules(model)
    if not guides:
        raise ValueError(
            f"model {type(model).__name__} has no DRConv layer (no nn.Conv2d named '*guide'), so it has no "
            "guided masks; use a model with DRConv layers, e.g. create_model('drconv_mobilefacenet')"
        )
    return [MaskLayer(i, name, int(conv.out_channels), conv) for i, (name, conv) in enumerate(guides)]


def _resolve_one(item: Union[str, int, MaskLayer], layers: list[MaskLayer]) -> MaskLayer:
    if isinstance(item, MaskLayer):
        for layer in layers:
            if layer.name == item.name:
                return layer
        raise ValueError(f"layer {quote(item.name)} is not a DRConv layer of this model")
    if isinstance(item, str) and re.fullmatch(r"\s*-?\d+\s*", item):
        item = int(item)
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if not -len(layers) <= item < len(layers):
            raise ValueError(
                f"layer index {item} is out of range: the model has {len(layers)} DRConv layers "
                f"(indices 0..{len(layers) - 1}, or negative from the end)"
            )
        return layers[item]
    if isinstance(item, str):
        key = item.strip()
        for layer in layers:
            if key in (layer.name, layer.label):
                return layer
        shown = ", ".join(layer.label for layer in layers[:12]) + (", ..." if len(layers) > 12 else "")
        raise ValueError(f"unknown DRConv layer {quote(item)}; valid names: {shown} (or an index, or 'all')")
    raise TypeError(f"a layer is given by name (str) or index (int), got {type(item).__name__} {quote(item)}")


def select_layers(model: nn.Module, layers: LayerSpec = "all") -> list[MaskLayer]:
    """Resolve a layer selection against ``model``'s DRConv layers.

    Args:
        model: any module with DRConv layers.
        layers: ``"all"``; an index (negative counts from the end); a name (the guide conv's qualified
            name, or that name without ``.guide``); a comma-separated string of those (``"0,5,-1"``);
            or a sequence of them. Duplicates are kept once, in the order given.

    Returns:
        The selected layers, in the order given.

    Raises:
        ValueError: no DRConv layer, an unknown name (the valid ones are listed), an index out of range,
            or an empty selection.
    """
    available = find_mask_layers(model)
    if isinstance(layers, str):
        items = [part for part in layers.split(",") if part.strip()]
        if [part.strip().lower() for part in items] == ["all"]:
            items = list(available)
    elif isinstance(layers, (int, np.integer, MaskLayer)):
        items = [layers]
    else:
        items = list(layers)
    if not items:
        raise ValueError(f"empty layer selection {quote(layers)}; give names, indices or 'all'")
    chosen: list[MaskLayer] = []
    for item in items:
        layer = _resolve_one(item, available)
        if layer not in chosen:
            chosen.append(layer)
    return chosen


class _MaskRecorder:
    """Context manager: forward hooks that store argmax masks (B, Ho, Wo) per selected guide conv."""

    def __init__(self, layers: Sequence[MaskLayer]):
        self.layers = list(layers)
        self.calls: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in self.layers}
        self._handles: list = []

    def _hook(self, layer: MaskLayer) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[1] != layer.regions:
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(
                    f"guide conv {layer.name!r} returned {got}; expected a guided feature (B, {layer.regions}, Ho, Wo)"
                )
            self.calls[layer.name].append(output.detach().argmax(dim=1).to("cpu"))

        return hook

    def __enter__(self) -> "_MaskRecorder":
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def pop_batch(self) -> dict[str, torch.Tensor]:
        """The masks of the last forward pass, one (B, Ho, Wo) tensor per layer; clears the record."""
        out = {}
        for layer in self.layers:
            calls = self.calls[layer.name]
            if not calls:
                raise ValueError(f"guide conv {layer.name!r} was not called in the forward pass, so it has no mask")
            if len(calls) > 1:
                logger.warning("guide conv %s ran %d times in one forward; using its first call",
                               layer.name, len(calls))
            out[layer.name] = calls[0]
            calls.clear()
        return out


def _to_input(images: Union[np.ndarray, torch.Tensor], normalize: Optional[Callable]) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"a tensor input must be normalised float (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        return images
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"images must be a uint8 numpy array (N, H, W, 3) or a float tensor, got {type(images).__name__}"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 RGB (N, H, W, 3), got {images.dtype} {images.shape}")
    if normalize is None:
        from facerec.data.transforms import normalize
    return torch.as_tensor(normalize(images)).float()


def capture_masks(
    model: nn.Module,
    images: Union[np.ndarray, torch.Tensor],
    layers: LayerSpec = "all",
    *,
    batch_size: int = 16,
    normalize: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
) -> dict[str, np.ndarray]:
    """Guided masks of the chosen layers for a batch of faces (paper Eq. 4).

    The model runs in eval mode under ``torch.no_grad`` (every submodule's train/eval flag is restored
    afterwards), on the device and in the dtype of its parameters.

    Args:
        model: a backbone with DRConv layers.
        images: uint8 RGB faces (N, H, W, 3) at the model's input size, or an already normalised float
            tensor (N, 3, H, W).
        layers: see ``select_layers``.
        batch_size: faces per forward pass.
        normalize: uint8 (N, H, W, 3) -> float (N, 3, H, W); default ``facerec.data.transforms.normalize``
            (the project's one normalisation).

    Returns:
        ``{layer name: masks}`` in selection order; masks is (N, Ho, Wo) with values in [0, m), uint8
        (int32 when m > 256), (Ho, Wo) the resolution of the layer's guided feature.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {quote(batch_size)}")
    chosen = select_layers(model, layers)
    inputs = _to_input(images, normalize)
    if inputs.shape[0] == 0:
        raise ValueError("no images given: images has N = 0")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else inputs.dtype
    parts: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in chosen}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with _MaskRecorder(chosen) as recorder, torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                batch = inputs[start:start + batch_size].to(device=device, dtype=dtype)
                try:
                    model(batch)
                except RuntimeError as err:
                    raise ValueError(
                        f"the model's forward failed on images of size {tuple(batch.shape[-2:])} (H, W): {err}"
                    ) from err
                for name, mask in recorder.pop_batch().items():
                    parts[name].append(mask)
    finally:
        for module, training in modes:
            module.training = training
    dtypes = {layer.name: np.uint8 if layer.regions <= 256 else np.int32 for layer in chosen}
    return {name: torch.cat(chunks).numpy().astype(dtypes[name]) for name, chunks in parts.items()}


def mask_shapes(
    model: nn.Module, input_size: tuple[int, int] = (112, 112), layers: LayerSpec = "all"
) -> list[tuple[MaskLayer, tuple[int, int]]]:
    """Mask resolution (Ho, Wo) of each chosen layer for inputs of ``input_size`` (H, W).

    Runs one zero image (1, 3, H, W) through the model with the hooks on.
    """
    if len(input_size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_size):
        raise ValueError(f"input_size must be (H, W) with positive ints, got {quote(input_size)}")
    chosen = select_layers(model, layers)
    zeros = torch.zeros(1, 3, *input_size, dtype=next(model.parameters()).dtype)
    masks = capture_masks(model, zeros, chosen)
    return [(layer, tuple(masks[layer.name].shape[1:])) for layer in chosen]


def region_areas(masks: np.ndarray, regions: int) -> dict:
    """Area statistics of one layer's masks.

    Args:
        masks: integer (N, Ho, Wo), values in [0, regions).
        regions: region count m of the layer.

    Returns:
        A JSON-ready dict: ``regions``, ``mask_size`` [Ho, Wo], ``area_fraction_mean`` / ``_std`` (m
        floats: share of the mask each region covers, over the N faces), ``area_fraction_per_image``
        (N lists of m), ``regions_used_per_image`` (N ints: regions with at least one pixel),
        ``regions_used_mean`` and ``unused_regions`` (indices no face uses).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"masks must be an integer array (N, Ho, Wo), got {masks.dtype} {masks.shape}")
    if masks.size and (masks.min() < 0 or masks.max() >= regions):
        raise ValueError(f"mask values must lie in [0, {regions}), got [{masks.min()}, {masks.max()}]")
    n, ho, wo = masks.shape
    counts = np.stack([np.bincount(m.ravel(), minlength=regions) for m in masks]) if n else np.zeros((0, regions))
    frac = counts / float(ho * wo)

    def rounded(values: np.ndarray) -> list:
        return np.round(values, 6).tolist()

    return {
        "regions": int(regions),
        "mask_size": [int(ho), int(wo)],
        "area_fraction_mean": rounded(frac.mean(axis=0)),
        "area_fraction_std": rounded(frac.std(axis=0)),
        "area_fraction_per_image": rounded(frac),
        "regions_used_per_image": (counts > 0).sum(axis=1).astype(int).tolist(),
        "regions_used_mean": round(float((counts > 0).sum(axis=1).mean()), 6),
        "unused_regions": [int(j) for j in np.flatnonzero(counts.sum(axis=0) == 0)],
    }


def upsample_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a mask (Ho, Wo) to ``size`` (H, W): pixel (y, x) takes mask cell
    (y * Ho // H, x * Wo // W), so each mask cell becomes an exact block when H, W are multiples."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (Ho, Wo), got shape {mask.shape}")
    h, w = size
    rows = (np.arange(h) * mask.shape[0]) // h
    cols = (np.arange(w) * mask.shape[1]) // w
    return mask[rows[:, None], cols[None, :]]


def overlay_mask(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.5, grey_base: bool = True) -> np.ndarray:
    """Region map blended over a face: ``(1 - alpha) * face + alpha * PALETTE[region]``.

    Args:
        image: uint8 RGB (H, W, 3).
        mask: integer (Ho, Wo), values in [0, 16); upsampled with nearest neighbour to (H, W).
        alpha: weight of the region colour, 0..1 (1 shows the bare region map).
        grey_base: blend over the face's luminance (BT.601) so the region colours stay true.

    Returns:
        uint8 RGB (H, W, 3).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= MAX_REGIONS):
        raise ValueError(f"mask values must lie in [0, {MAX_REGIONS}), got [{mask.min()}, {mask.max()}]")
    colours = PALETTE[upsample_nearest(mask, image.shape[:2])].astype(np.float64)
    base = image.astype(np.float64)
    if grey_base:
        base = np.repeat((base @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=2)
    return np.clip(np.rint((1.0 - alpha) * base + alpha * colours), 0, 255).astype(np.uint8)
