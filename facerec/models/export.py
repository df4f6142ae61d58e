"""ONNX export of a backbone, DRConv included, and the check of the file against PyTorch.

The training forwards of two layers do not export as they are: ``DRConv2d`` runs ``region_conv2d``, a custom
autograd Function (per-region gathers, the paper's straight-through backward), and ``CondConv2d`` runs one
grouped conv with ``groups = batch``, which a traced graph would freeze at the export batch size. For export,
:func:`exportable` returns a copy of the model in which every such layer is wrapped by a module that computes
the same maths with plain ONNX operators (MatMul, ArgMax, Equal, ReduceSum), sharing the original parameters:

* DRConv (paper Eq.3-5): all m region outputs ``y_j = W_j * x`` (im2col + one batched matmul with the
  generated filters (B, m, O, C, kh, kw) of ``DRConv2d.filter_generator``), then a one-hot select by the guided
  mask ``argmax_j F[:, j, p]`` (ties to the lowest index, as ``facerec.nn.functional.guided_mask`` and ONNX
  ArgMax), plus the static bias. F is the layer's ``guide`` conv, or the guided feature the block passes in
  (``external_guide``). It costs m times a conv: fine for deployment of MobileFaceNet-size models, and
  exactly the layer's forward.
* CondConv: the per-sample mixed kernel (B, O, C, kh, kw) applied by a batched matmul over im2col columns.

:func:`export_onnx` writes ``images`` (B, 3, H, W) float, normalised as ``facerec.data.transforms.normalize``
-> ``embeddings`` (B, D) (not normalised), batch size dynamic. :func:`compare_onnx` runs the file with
onnxruntime (optional extra ``export``) and returns the largest absolute difference of the L2-normalised
embeddings against the PyTorch model in eval mode.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerec.nn import CondConv2d, DRConv2d

__all__ = ["ExportCondConv2d", "ExportDRConv2d", "compare_onnx", "export_onnx", "exportable"]

DEFAULT_OPSET = 17


def _columns(x: Tensor, kernel_size, stride, padding, dilation) -> Tensor:
    """im2col: x (B, C, H, W) -> (B, C*kh*kw, Ho*Wo); a strided slice for unpadded 1x1 kernels."""
    if tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0):
        return x[:, :, ::stride[0], ::stride[1]].flatten(2)
    return F.unfold(x, kernel_size, dilation, padding, stride)


class ExportDRConv2d(nn.Module):
    """Export forward of a ``DRConv2d`` (same parameters, same outputs): all m outputs, one-hot select.

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
        batch, regions = x.shape[0], layer.regions
        filters = layer.filter_generator(x)  # (B, m, O, C, kh, kw)
        cols = _columns(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation)  # (B, C*k*k, L)
        weight = filters.reshape(batch, regions * layer.out_channels, -1)  # (B, m*O, C*k*k)
        out = torch.matmul(weight, cols)  # (B, m*O, L)
        out = out.reshape(batch, regions, layer.out_channels, guide_feature.shape[2], guide_feature.shape[3])
        region = torch.argmax(guide_feature, dim=1, keepdim=True)  # (B, 1, Ho, Wo), first maximum
        index = torch.arange(regions, device=x.device).view(1, regions, 1, 1)
        mask = (region == index).to(out.dtype).unsqueeze(2)  # (B, m, 1, Ho, Wo) one-hot
        out = (out * mask).sum(dim=1)
        if layer.bias is not None:
            out = out + layer.bias.view(1, -1, 1, 1).to(out.dtype)
        return out


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


_WRAPPERS = {DRConv2d: ExportDRConv2d, CondConv2d: ExportCondConv2d}


def exportable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every DRConv2d / CondConv2d wrapped for export.

    The copy computes the same outputs as ``model.eval()``; ``model`` itself is not changed.
    """
    if type(model) in _WRAPPERS:
        return _WRAPPERS[type(model)](copy.deepcopy(model)).eval()
    clone = copy.deepcopy(model).eval()
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            wrapper = _WRAPPERS.get(type(child))
            if wrapper is not None:
                setattr(parent, name, wrapper(child))
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
        opset: ONNX opset (default 17).

    Uses the TorchScript-based exporter (``dynamo=False``), which every torch in the supported range has and
    which needs no extra package.
    """
    size = _input_size(model, input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(iter(model.parameters()), torch.zeros(())).device
    dummy = torch.zeros(2, 3, *size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes on shape checks
        torch.onnx.export(exportable(model), (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    return path


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare_onnx(model: nn.Module, path: str | Path, images: Tensor | None = None, *, batch_size: int = 3,
                 seed: int = 0) -> float:
    """Largest |difference| of L2-normalised embeddings, onnxruntime (CPU) against ``model.eval()`` (float64).

    Args:
        images: (B, 3, H, W) normalised float inputs; default ``batch_size`` random ones (``seed``) in [-1, 1].

    Raises:
        ImportError: onnxruntime is missing (``pip install "facerec[export]"``).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError('checking an ONNX file needs onnxruntime: pip install "facerec[export]"') from exc
    if images is None:
        size = _input_size(model, None)
        gen = torch.Generator().manual_seed(seed)
        images = torch.rand(batch_size, 3, *size, generator=gen) * 2 - 1
    device = next(iter(model.parameters()), torch.zeros(())).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(images.to(device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": images.cpu().numpy().astype(np.float32)})[0]
    if got.shape != want.shape:
        raise ValueError(f"{path}: ONNX output {got.shape} vs PyTorch {want.shape}")
    return float(np.abs(_l2(got) - _l2(want)).max())
