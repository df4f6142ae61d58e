"""Region-gathered export form of the paper's 1x1 DRConv (Chen et al., CVPR 2021, Eq.3-5) in standard ONNX operators.

A 1x1 DRConv with the paper generator gives pixel p of sample b in region j (``argmax_j F[b, j, p]``) the filter
``A_j + sum_t s_bjt V_jt`` (``PaperFilterGenerator.static_kernels()`` and ``coefficients()``; t = h/m terms, 1 in
the shipped models). With the pixels as rows (N = B*H*W rows of C channels) that is, per region, one matmul of
the region's rows against static kernels:

    y_p = [x_p, s_b,j,1 x_p, ..., s_b,j,t x_p] @ [A_j; V_j1; ...; V_jt]^T          ((1+t)*C inputs -> O outputs)

so the exported graph does a conv's work per term and never forms the m region outputs of a pixel:

1. routing (:func:`region_routing`, once per guided mask): a counting sort of the rows by region (Equal,
   CumSum, GatherElements, ScatterElements): the rows of each region, ascending, and each row's place in that
   order;
2. the scaled rows ``[x, s x]`` (one broadcast Mul, the coefficient of each row's sample and region picked by
   one Gather);
3. per region: Gather of its rows, one Gemm with its stacked kernels (+ bias);
4. Concat of the m results and one Gather by the inverse permutation back to pixel order.

:class:`ExportRegionBottleneck` exports a whole MobileFaceNet bottleneck whose two 1x1 DRConvs share the block's
guide: one routing per mask (the projection of a stride-1 block reuses the expansion's), the BatchNorm after
each DRConv folded into its kernels and bias, and the block on rows from its input to its output (the guide as a
Gemm with its norm folded, the generators' global pooling as a MatMul of the rows by 1/P, the PReLUs and the
shortcut on rows, so that onnxruntime cancels the layout transposes between blocks); only the depthwise conv and
its BatchNorm run in NCHW, and with nothing between them and the layout transposes onnxruntime folds those into
the depthwise conv's NCHWc reorders (batch 32, three interleaved runs against the PReLUs in NCHW: 0-7% faster
at 1 thread, 7-9% at 2).
``facerec.models.export`` uses it; cost and measurements: ``benchmarks/onnx_speed.py``, docs/models.md.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerec.nn import DRConv2d

from .mobilefacenet import Bottleneck

__all__ = ["ExportRegionBottleneck", "RegionRouting", "guide_rows", "mean_over_pixels", "paper_pointwise_rows",
           "region_pointwise_supported", "region_routing", "split_rows", "to_rows"]


class RegionRouting(NamedTuple):
    """N rows (B samples of L pixels, sample-major) grouped by region.

    ``order`` (N,): the rows of region 0, then region 1, ..., each ascending; ``sizes`` (m,): rows per region;
    ``inverse`` (N,): the position of every row in ``order``; ``sample_region`` (N,): b*m + j for the row's sample
    b and region j, the row of its coefficients in a (B*m, t) table.
    """

    order: Tensor
    sizes: Tensor
    inverse: Tensor
    sample_region: Tensor


def region_routing(region: Tensor, regions: int) -> RegionRouting:
    """region (B, L) int64 in [0, m) -> :class:`RegionRouting` of its B*L rows.

    A counting sort: a row's place is its rank among the earlier rows of its region plus the rows of all lower
    regions. A region no row uses gets size 0. L is read as a constant (an export has a dynamic batch only).
    """
    pixels = int(region.shape[1])
    flat = region.reshape(-1)
    onehot = (flat.unsqueeze(1) == torch.arange(regions, device=region.device)).long()  # (N, m)
    running = torch.cumsum(onehot, 0)  # rows of each region up to and including this one
    sizes = running[-1]
    starts = torch.cumsum(sizes, 0) - sizes
    inverse = torch.gather(running, 1, flat.unsqueeze(1)).reshape(-1) - 1 + starts.index_select(0, flat)
    rows = torch.arange(flat.shape[0], device=region.device)
    order = torch.zeros_like(inverse).scatter(0, inverse, rows)
    sample_region = torch.div(rows, pixels, rounding_mode="trunc") * regions + flat
    return RegionRouting(order, sizes, inverse, sample_region)


class _SplitRowsFunction(torch.autograd.Function):
    """One ONNX Split with sizes computed in the graph (a traced ``torch.split`` would freeze them)."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: Tensor, parts: int):
        return tuple(torch.split(x, sizes.tolist()))

    @staticmethod
    def symbolic(g, x, sizes, parts: int):
        return g.op("Split", x, sizes, axis_i=0, outputs=parts)


def split_rows(x: Tensor, sizes: Tensor) -> tuple[Tensor, ...]:
    """x (N, ...), sizes (m,) int64 summing to N -> m tensors (sizes[j], ...); exported as one Split."""
    return _SplitRowsFunction.apply(x, sizes, int(sizes.shape[0]))


def to_rows(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B*H*W, C), pixels sample-major."""
    return x.permute(0, 2, 3, 1).reshape(-1, int(x.shape[1]))


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm2d as y = x * scale + shift: (scale (C,), shift (C,))."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return scale, shift


def guide_rows(guide: nn.Conv2d, rows: Tensor) -> Tensor:
    """A 1x1 unpadded, unstrided guide conv (``facerec.nn.GuideConv``, its eval-mode norm folded) on rows:
    (N, C) -> guided feature (N, m)."""
    weight = guide.weight.reshape(guide.out_channels, -1).t().to(rows.dtype)  # (C, m)
    bias = guide.bias.to(rows.dtype) if guide.bias is not None else torch.zeros_like(weight[0])
    norm = getattr(guide, "norm", None)
    if norm is not None:
        scale, shift = (v.to(rows.dtype) for v in _bn_affine(norm))
        weight, bias = weight * scale, bias * scale + shift
    return torch.addmm(bias, rows, weight)


def _pointwise_guide(guide: nn.Module) -> bool:
    return (isinstance(guide, nn.Conv2d) and tuple(guide.kernel_size) == (1, 1) and tuple(guide.stride) == (1, 1)
            and tuple(guide.padding) == (0, 0) and guide.groups == 1)


def region_pointwise_supported(layer: nn.Module) -> bool:
    """True for a DRConv2d the region-gathered form computes: paper generator, 1x1 kernel, no padding."""
    return (isinstance(layer, DRConv2d) and layer.generator == "paper" and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.padding) == (0, 0))


def paper_pointwise_rows(layer: DRConv2d, rows: Tensor, routing: RegionRouting, coefficients: Tensor,
                         bn: nn.BatchNorm2d | None = None) -> Tensor:
    """A 1x1 paper-generator DRConv2d on rows [+ an eval-mode BatchNorm after it, folded].

    Args:
        layer: the DRConv2d; its ``filter_generator.static_kernels()`` and ``bias`` are read.
        rows: (N, C) input pixels, N = B*L sample-major (after the layer's stride).
        routing: ``region_routing(region, m)`` of the (B, L) mask of these pixels.
        coefficients: (B, m, t) ``layer.filter_generator.coefficients(x)`` of the layer input x.
        bn: a BatchNorm2d applied to the layer output.

    Returns:
        (N, O) the output of every row, in the order of ``rows``.
    """
    static, dynamic = layer.filter_generator.static_kernels()  # (m, O, C), (m, t, O, C)
    regions, terms = int(dynamic.shape[0]), int(dynamic.shape[1])
    kernels = torch.cat([static.unsqueeze(1), dynamic], 1).to(rows.dtype)  # (m, 1+t, O, C)
    bias = None if layer.bias is None else layer.bias.to(rows.dtype)
    if bn is not None:
        scale, shift = (v.to(rows.dtype) for v in _bn_affine(bn))
        kernels = kernels * scale[:, None]
        bias = shift if bias is None else bias * scale + shift
    kernels = kernels.transpose(2, 3).reshape(regions, -1, layer.out_channels)  # (m, (1+t)C, O)
    table = F.pad(coefficients.reshape(-1, terms), (1, 0), value=1.0)  # (B*m, 1+t): [1, s_1, ..., s_t]
    scale_rows = table.index_select(0, routing.sample_region).unsqueeze(2)  # (N, 1+t, 1)
    inputs = (rows.unsqueeze(1) * scale_rows).reshape(-1, int(kernels.shape[1]))  # (N, (1+t)C)
    outs = []
    for j, index in enumerate(split_rows(routing.order, routing.sizes)):
        picked = inputs.index_select(0, index)
        outs.append(picked @ kernels[j] if bias is None else torch.addmm(bias, picked, kernels[j]))
    return torch.cat(outs).index_select(0, routing.inverse)


def mean_over_pixels(rows: Tensor, pixels: int) -> Tensor:
    """rows (B*P, C) -> (B, C, 1, 1): each sample's mean over its P pixels, as a MatMul by a constant row of 1/P.

    onnxruntime 1.31's ReduceMean over the middle axis of (B, P, C) took 3-7x the MatMul's time at batch 1
    (MobileFaceNet's shapes, 1 thread) and the same at batch 32.
    """
    channels = int(rows.shape[1])
    weights = torch.full((1, pixels), 1.0 / pixels, dtype=rows.dtype, device=rows.device)
    return torch.matmul(weights, rows.reshape(-1, pixels, channels)).reshape(-1, channels, 1, 1)


class ExportRegionBottleneck(nn.Module):
    """Export forward of a MobileFaceNet ``Bottleneck`` whose shared guide drives a 1x1 paper DRConv expansion and
    projection (``drconv_mobilefacenet``'s blocks): same parameters and outputs (float rounding aside).

    Shapes: x (B, C, H, W) -> (B, O, Ho, Wo).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not self.supports(block):
            raise TypeError("ExportRegionBottleneck needs a Bottleneck with a shared guide and 1x1 paper-generator "
                            f"DRConvs as expansion and projection, got {type(block).__name__}")
        self.block = block

    @staticmethod
    def supports(block: nn.Module) -> bool:
        """A guided Bottleneck whose expansion and projection are unstrided 1x1 paper DRConvs fed by its guide."""
        if not isinstance(block, Bottleneck) or not block.guided or not _pointwise_guide(block.guide):
            return False
        layers = (block.expand, block.project)
        return all(region_pointwise_supported(layer) and layer.external_guide and tuple(layer.stride) == (1, 1)
                   for layer in layers)

    def forward(self, x: Tensor) -> Tensor:
        blk = self.block
        height, width = int(x.shape[2]), int(x.shape[3])
        regions = blk.expand.regions
        rows = to_rows(x)  # the block works on rows; x itself is not read again (its transposes cancel)
        region = torch.argmax(guide_rows(blk.guide, rows), dim=1)  # first maximum as the guided mask
        routing = region_routing(region.reshape(-1, height * width), regions)
        pooled = mean_over_pixels(rows, height * width)  # (B, C, 1, 1)
        h = paper_pointwise_rows(blk.expand, rows, routing, blk.expand.filter_generator.coefficients(pooled),
                                 blk.expand_bn)
        h = blk.expand_act(h).reshape(-1, height, width, int(h.shape[1])).permute(0, 3, 1, 2)
        h = blk.depthwise_bn(blk.depthwise(h))
        out_h, out_w = int(h.shape[2]), int(h.shape[3])
        h = blk.depthwise_act(to_rows(h))
        if blk.stride > 1:
            region = region.reshape(-1, height, width)[:, ::blk.stride, ::blk.stride]
            routing = region_routing(region.reshape(-1, out_h * out_w), regions)
        pooled = mean_over_pixels(h, out_h * out_w)  # (B, hidden, 1, 1)
        out = paper_pointwise_rows(blk.project, h, routing, blk.project.filter_generator.coefficients(pooled),
                                   blk.project_bn)
        if blk.use_shortcut:
            out = out + rows
        return out.reshape(-1, out_h, out_w, int(out.shape[1])).permute(0, 3, 1, 2)
