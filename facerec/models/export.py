"""ONNX export of a backbone, DRConv included, and the check of the file against PyTorch.

The training forwards of two layers do not export as they are: ``DRConv2d`` runs the region convolution operator
(per-region gathers, the paper's straight-through backward), and ``CondConv2d`` runs one grouped conv with
``groups = batch``, which a traced graph would freeze at the export batch size. For export, :func:`exportable`
returns a copy of the model in which such layers are replaced by modules that compute the same maths with
standard ONNX operators, sharing the original parameters:

* MobileFaceNet bottleneck whose shared guide drives two 1x1 paper-generator DRConvs (``drconv_mobilefacenet``):
  ``facerec.models.export_regions.ExportRegionBottleneck``. The pixels become rows, sorted by region once per
  mask; each region's rows meet its static kernels ``[A_j; V_j]`` in one Gemm after the rows are scaled by the
  per-sample coefficients, ``[x, s x]``; the results go back to pixel order with one Gather. About (1 + t)
  convolutions of work per layer (t = h/m = 1 in the shipped model), never the m region outputs of a pixel.
* Other DRConv2d layers (``ExportDRConv2d``): a 1x1 paper-generator layer without padding takes the same
  region-gathered form on its own; the basis generator the dense-basis form (its ``num_bases`` shared kernels
  on every pixel as one conv, mixed per pixel by the routing weights of its region: r convolutions of work, r =
  4 by default, m = 8); a k x k paper-generator layer keeps the plain form: all m region outputs ``W_j * x``
  (im2col + a batched matmul with the generated filters), then a one-hot select by the mask (m convolutions of
  work). The guided mask is ``argmax_j F[:, j, p]`` (ties to the lowest index, as
  ``facerec.nn.functional.guided_mask`` and ONNX ArgMax); F is the layer's ``guide`` conv or the guided feature
  the block passes in (``external_guide``).
* CondConv: the per-sample mixed kernel (B, O, C, kh, kw) applied by a batched matmul over im2col columns.
* PReLU (every variant): ``max(x, w x)`` for slopes <= 1, else ``relu(x) + w min(x, 0)`` (:class:`ExportPReLU`),
  bit-equal and several times faster than onnxruntime's PRelu kernel.

:func:`export_onnx` writes ``images`` (B, 3, H, W) float, normalised as ``facerec.data.transforms.normalize``
-> ``embeddings`` (B, D) (not normalised), batch size dynamic, spatial size fixed. :func:`compare_onnx` runs the
file with onnxruntime (optional extra ``export``) and returns the largest absolute difference of the
L2-normalised embeddings against the PyTorch model in eval mode, over inputs on which no guided-mask pixel is
within float rounding of a tie (:func:`near_tied_samples`). Speed in onnxruntime against the plain
backbone: ``benchmarks/onnx_speed.py`` (docs/models.md).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerec.nn import CondConv2d, DRConv2d, guide_modules

from .export_regions import (ExportRegionBottleneck, paper_pointwise_rows, region_pointwise_supported,
                             region_routing, to_rows)

__all__ = ["TIE_MARGIN", "ExportCondConv2d", "ExportDRConv2d", "ExportPReLU", "ExportRegionBottleneck", "compare_onnx",
           "export_onnx", "exportable", "near_tied_samples"]

DEFAULT_OPSET = 17
MIN_REGION_OPSET = 13  # Split with its sizes as an input


def _columns(x: Tensor, kernel_size, stride, padding, dilation) -> Tensor:
    """im2col: x (B, C, H, W) -> (B, C*kh*kw, Ho*Wo); a strided slice for unpadded 1x1 kernels."""
    if tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0):
        return x[:, :, ::stride[0], ::stride[1]].flatten(2)
    return F.unfold(x, kernel_size, dilation, padding, stride)


class ExportDRConv2d(nn.Module):
    """Export forward of a ``DRConv2d`` (same parameters, same outputs), by generator and kernel:

    * paper generator, 1x1, no padding: the region-gathered form (``facerec.models.export_regions``);
    * basis generator: the dense-basis form, the r shared kernels as one conv (``filter_generator.basis``) mixed
      per pixel by the routing weights of the pixel's region;
    * paper generator, k x k: all m region outputs, then a one-hot select by the mask.

    Shapes: x (B, C, H, W) [, guide_feature (B, m, Ho, Wo)] -> (B, O, Ho, Wo).
    """

    def __init__(self, layer: DRConv2d) -> None:
        super().__init__()
        if not isinstance(layer, DRConv2d):
            raise TypeError(f"ExportDRConv2d wraps a DRConv2d, got {type(layer).__name__}")
        self.layer = layer

    def forward(self, x: Tensor, guide_feature: Tensor | None = None) -> Tensor:
        layer = self.layer
        if guide_feature is None:
            if layer.guide is None:
                raise ValueError("this DRConv2d has external_guide=True: call forward(x, guide_feature)")
            guide_feature = layer.guide(x)
        if region_pointwise_supported(layer):
            return self._region_pointwise(x, guide_feature)  # the bias included
        if layer.generator == "basis":
            out = self._dense_basis(x, guide_feature)
        else:
            out = self._all_regions(x, guide_feature)
        if layer.bias is not None:
            out = out + layer.bias.view(1, -1, 1, 1).to(out.dtype)
        return out

    def _region_pointwise(self, x: Tensor, guide_feature: Tensor) -> Tensor:
        layer = self.layer
        coefficients = layer.filter_generator.coefficients(x)  # of the unstrided input, as the layer
        if tuple(layer.stride) != (1, 1):
            x = x[:, :, ::layer.stride[0], ::layer.stride[1]]
        height, width = int(x.shape[2]), int(x.shape[3])
        region = torch.argmax(guide_feature, dim=1).reshape(-1, height * width)  # first maximum
        routing = region_routing(region, layer.regions)
        out = paper_pointwise_rows(layer, to_rows(x), routing, coefficients)
        return out.reshape(-1, height, width, layer.out_channels).permute(0, 3, 1, 2)

    def _dense_basis(self, x: Tensor, guide_feature: Tensor) -> Tensor:
        gen = self.layer.filter_generator
        bases = gen.basis(x)  # (B, r*O, Ho, Wo): every shared kernel on every pixel
        height, width = int(bases.shape[2]), int(bases.shape[3])
        region = torch.argmax(guide_feature, dim=1).reshape(-1, 1, height * width)  # (B, 1, L)
        weights = gen.routing(x).transpose(1, 2)  # (B, r, m)
        per_pixel = torch.gather(weights, 2, region.expand(-1, gen.num_bases, -1))  # (B, r, L)
        bases = bases.reshape(-1, gen.num_bases, self.layer.out_channels, height * width)
        out = (bases * per_pixel.unsqueeze(2)).sum(1)  # (B, O, L)
        return out.reshape(-1, self.layer.out_channels, height, width)

    def _all_regions(self, x: Tensor, guide_feature: Tensor) -> Tensor:
        layer = self.layer
        batch, regions = x.shape[0], layer.regions
        filters = layer.filter_generator(x)  # (B, m, O, C, kh, kw)
        cols = _columns(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation)  # (B, C*k*k, L)
        weight = filters.reshape(batch, regions * layer.out_channels, -1)  # (B, m*O, C*k*k)
        out = torch.matmul(weight, cols)  # (B, m*O, L)
        out = out.reshape(batch, regions, layer.out_channels, guide_feature.shape[2], guide_feature.shape[3])
        region = torch.argmax(guide_feature, dim=1, keepdim=True)  # (B, 1, Ho, Wo), first maximum
        index = torch.arange(regions, device=x.device).view(1, regions, 1, 1)
        mask = (region == index).to(out.dtype).unsqueeze(2)  # (B, m, 1, Ho, Wo) one-hot
        return (out * mask).sum(dim=1)


class ExportCondConv2d(nn.Module):
    """Export forward of a ``CondConv2d``: the per-sample mixed kernel by a batched matmul (dynamic batch).

    Shapes: x (B, C, H, W) -> (B, O, Ho, Wo).
    """

    def __init__(self, layer: CondConv2d) -> None:
        super().__init__()
        if not isinstance(layer, CondConv2d):
            raise TypeError(f"ExportCondConv2d wraps a CondConv2d, got {type(layer).__name__}")
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        batch = x.shape[0]
        route = torch.sigmoid(layer.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))  # (B, E)
        weight = torch.matmul(route, layer.weight.flatten(1)).reshape(batch, layer.out_channels, -1)
        cols = _columns(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        out = torch.matmul(weight, cols)  # (B, O, L)
        if layer.bias is not None:
            out = out + torch.matmul(route, layer.bias).unsqueeze(-1)
        ho = (x.shape[2] + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) \
            // layer.stride[0] + 1
        return out.reshape(batch, layer.out_channels, ho, -1)


class ExportPReLU(nn.Module):
    """Export forward of an ``nn.PReLU``, equal to it bit for bit, in elementwise ONNX operators:

    * every slope <= 1 (trained PReLUs): ``max(x, w x)`` (Mul, Max), since x >= w x exactly when x >= 0;
    * otherwise ``relu(x) + w min(x, 0)`` (Relu, Min, Mul, Add).

    onnxruntime's CPU PRelu kernel is slow: in one profile (``benchmarks/onnx_speed.py --profile``, batch 32, 1
    thread) the plain MobileFaceNet exported with PRelu spent 288 of its 488 ms of kernel time in its 33 PRelu
    nodes, and 34 ms in their ``max(x, w x)`` form. So every variant exports its PReLUs this way; the form is
    chosen from the slopes at export time.

    Shapes: x (B, C, ...) with C = ``num_parameters`` (or any C when it is 1) -> same shape.
    """

    def __init__(self, layer: nn.PReLU) -> None:
        super().__init__()
        if not isinstance(layer, nn.PReLU):
            raise TypeError(f"ExportPReLU wraps an nn.PReLU, got {type(layer).__name__}")
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        weight = self.layer.weight.to(x.dtype)
        at_most_one = bool((weight <= 1).all())
        if weight.numel() > 1:
            weight = weight.reshape(-1, *([1] * (x.dim() - 2)))
        if at_most_one:
            return torch.maximum(x, x * weight)
        return torch.relu(x) + weight * torch.clamp(x, max=0.0)


_WRAPPERS = {DRConv2d: ExportDRConv2d, CondConv2d: ExportCondConv2d}


def _replace_prelu(parent: nn.Module) -> None:
    for name, child in list(parent.named_children()):
        if isinstance(child, nn.PReLU):
            setattr(parent, name, ExportPReLU(child))
        else:
            _replace_prelu(child)


def _export_module(module: nn.Module) -> nn.Module | None:
    """The export replacement of ``module``, or None when it exports as it is."""
    if ExportRegionBottleneck.supports(module):
        return ExportRegionBottleneck(module)
    wrapper = _WRAPPERS.get(type(module))
    return None if wrapper is None else wrapper(module)


def _replace_for_export(parent: nn.Module) -> None:
    for name, child in list(parent.named_children()):
        replacement = _export_module(child)
        if replacement is None:
            _replace_for_export(child)
        else:
            setattr(parent, name, replacement)


def exportable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with its DRConv blocks and layers, CondConv layers and PReLUs
    replaced by their export forms (see the module docstring).

    The copy computes the same outputs as ``model.eval()`` (float rounding aside); ``model`` itself is not
    changed.
    """
    clone = copy.deepcopy(model).eval()
    if isinstance(clone, nn.PReLU):
        return ExportPReLU(clone).eval()
    _replace_prelu(clone)  # first: the block replacements call their blocks' activations
    replacement = _export_module(clone)
    if replacement is not None:
        return replacement.eval()
    _replace_for_export(clone)
    return clone


def _input_size(model: nn.Module, input_size) -> tuple[int, int]:
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        raise ValueError("input_size is needed for a model without an input_size attribute")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be (H, W), got {size}")
    return size


def export_onnx(model: nn.Module, path: str | Path, *, input_size=None, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (a backbone: (B, 3, H, W) -> (B, D)) as ONNX with a dynamic batch axis.

    Args:
        model: e.g. ``facerec.models.load_backbone(ckpt)``; not modified (a copy is exported).
        path: output ``.onnx`` file (parent folders are created).
        input_size: (H, W); default ``model.input_size``.
        opset: ONNX opset (default 17; >= 13 for a model with 1x1 paper-generator DRConvs).

    Uses the TorchScript-based exporter (``dynamo=False``), which every torch in the supported range has and
    which needs no extra package.
    """
    size = _input_size(model, input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(iter(model.parameters()), torch.zeros(())).device
    dummy = torch.zeros(2, 3, *size, device=device)
    module = exportable(model)
    if opset < MIN_REGION_OPSET and any(isinstance(m, ExportRegionBottleneck) or (
            isinstance(m, ExportDRConv2d) and region_pointwise_supported(m.layer)) for m in module.modules()):
        raise ValueError(f"opset {opset} is too old for the region-gathered DRConv export (a Split with sizes "
                         f"computed in the graph needs opset >= {MIN_REGION_OPSET})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes on shape checks
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    return path


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


#: A pixel whose two largest guided features differ by at most this fraction of the largest |F| (of its sample and
#: guide) is near-tied: two correct float32 implementations may put it in different regions. Measured with the
#: shipped DRConv model on 512 random inputs in [-1, 1] (onnxruntime 1.31.1 against PyTorch 2.13, CPU): the 2
#: samples whose embeddings differed by more than rounding (9e-4) had the smallest gaps, 3.1e-8 and 8.7e-8; every
#: other sample agreed within 1.9e-7. 5.7% of the samples have a gap below 1e-6 (37% below 1e-5).
TIE_MARGIN = 1e-6


def _forward_with_ties(model: nn.Module, images: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """One forward of ``model`` in eval mode (its mode restored after) on its device -> (outputs, near_tied (B,)
    bool on the CPU): whether any pixel of any guided mask of the sample (``facerec.nn.guide_modules``) has its two
    largest guided features within ``margin`` of the largest |F|."""
    device = next(iter(model.parameters()), torch.zeros(())).device
    features = []
    handles = [module.register_forward_hook(lambda _m, _i, out: features.append(out.detach()))
               for _, module in guide_modules(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images.to(device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    tied = torch.zeros(images.shape[0], dtype=torch.bool, device=device)
    for feature in features:
        if feature.shape[1] < 2:
            continue
        feature = feature.float().flatten(2)  # (B, m, P)
        top = feature.topk(2, dim=1).values
        gap = (top[:, 0] - top[:, 1]).amin(1)
        scale = feature.abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
        tied |= gap < margin * scale
    return out, tied.cpu()


def near_tied_samples(model: nn.Module, images: Tensor, *, margin: float = TIE_MARGIN) -> Tensor:
    """images (B, 3, H, W) -> (B,) bool: the samples on which ``model`` (run in eval mode) has a near-tied guided
    mask pixel (see :data:`TIE_MARGIN`); all False for a model without guides."""
    return _forward_with_ties(model, images, margin)[1]


def compare_onnx(model: nn.Module, path: str | Path, images: Tensor | None = None, *, batch_size: int = 3,
                 seed: int = 0, tie_margin: float = TIE_MARGIN, max_draws: int = 50) -> float:
    """Largest |difference| of L2-normalised embeddings, onnxruntime (CPU) against ``model.eval()`` (float64).

    A DRConv's guided mask is an argmax, so a pixel whose two best regions score within float rounding of each
    other may go to different regions in two correct float32 implementations, and that sample's embedding then
    differs by far more than rounding. Such near-tied samples (:func:`near_tied_samples`, ``tie_margin``; 0 keeps
    every sample) are left out: random inputs are drawn again in their place, given ``images`` are dropped.

    Args:
        images: (B, 3, H, W) normalised float inputs; default ``batch_size`` random ones (``seed``) in [-1, 1].
        max_draws: rounds of drawing random inputs before giving up.

    Raises:
        ImportError: onnxruntime is missing (``pip install "facerec[export]"``).
        ValueError: every given image is near-tied, or ``max_draws`` rounds found too few untied random ones.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError('checking an ONNX file needs onnxruntime: pip install "facerec[export]"') from exc
    if images is None:
        size = _input_size(model, None)
        gen = torch.Generator().manual_seed(seed)
        kept_images, kept_out, have = [], [], 0
        for _ in range(max_draws):
            draw = torch.rand(batch_size - have, 3, *size, generator=gen) * 2 - 1
            out, tied = _forward_with_ties(model, draw, tie_margin)
            kept_images.append(draw[~tied])
            kept_out.append(out.float().cpu()[~tied])
            have += int((~tied).sum())
            if have == batch_size:
                break
        else:
            raise ValueError(f"{max_draws} draws of random inputs gave {have} of {batch_size} without a near-tied "
                             f"guided mask (tie_margin={tie_margin:g})")
        images, want = torch.cat(kept_images), torch.cat(kept_out).numpy()
    else:
        out, tied = _forward_with_ties(model, images, tie_margin)
        if bool(tied.all()):
            raise ValueError(f"all {len(tied)} images have a near-tied guided mask (tie_margin={tie_margin:g}); "
                             "nothing to compare")
        images, want = images.cpu()[~tied], out.float().cpu()[~tied].numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": images.cpu().numpy().astype(np.float32)})[0]
    if got.shape != want.shape:
        raise ValueError(f"{path}: ONNX output {got.shape} vs PyTorch {want.shape}")
    return float(np.abs(_l2(got) - _l2(want)).max())
