"""DRConv2d: Dynamic Region-Aware Convolution (Chen et al., CVPR 2021, arXiv 2003.12243, section 3).

A k x k ``guide`` conv (C -> m) gives the guided feature F; its argmax over channels is the guided mask (Eq.4).
A filter generator (``filter_generator``, see generators.py) makes m filters per sample; every output pixel
uses the filter of its region (Eq.3, 5); the mask learns through the paper's softmax straight-through
gradient (Eq.6-8). The maths is ``facerec.nn.functional.region_conv2d`` (any kernel) and, for 1x1 layers, the
operator ``facerec::region_conv`` (``facerec.nn.ops``); which implementation runs is ``facerec.nn.paths``'s choice.

``guide_modules(model)`` lists every guide conv of a model (DRConv-owned or block-owned) for mask hooks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from facerec.nn import ops
from facerec.nn.basis_functional import basis_mix, basis_pointwise
from facerec.nn.functional import _output_size, _pair, all_regions_conv2d, region_conv2d
from facerec.nn.generators import BasisFilterGenerator, PaperFilterGenerator
from facerec.nn.guide import GuideConv
from facerec.nn.paths import PATHS, LayerFacts, check_path, select_path
from facerec.nn.structured import paper_region_conv2d, structured_region_conv2d

__all__ = ["DRConv2d", "GENERATORS", "PATHS", "guide_modules"]

GENERATORS = ("paper", "basis")
# Paths through the operator in eager mode: kernels that need only the operator's inputs in their backward. The
# composite paths keep intermediates between forward and backward in their own autograd Functions, so the layer
# calls those directly, and the operator (which recomputes them) only while compiling or exporting.
_EAGER_OP_PATHS = ("fused", "triton")


class DRConv2d(nn.Module):
    """Dynamic region-aware convolution.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as nn.Conv2d (no groups).
        regions: m, the number of regions (filters per sample), >= 1.
        generator: "paper" (two 1x1 convs, paper Fig. 2b) or "basis" (official code: routing over shared
            static kernels).
        bias: add a static per-output-channel bias.
        external_guide: when True the layer owns no guide (``guide is None``) and ``forward(x, guide_feature)``
            takes F from outside, e.g. one mask shared by a block's 1x1 convs.
        hidden_channels: hidden width h of the paper generator (a multiple of m). Default m: one hidden unit
            per region, so the generator's parameters are 2m x a conv's (m^2 as in the unofficial code gives
            72x and would dominate MobileFaceNet's size) and its MACs (h*O*C*k^2 per sample) keep the model
            near the paper's +6% MADDs over MobileFaceNet (Table 2: 201M vs 189M).
        num_bases: r, the shared kernels of the basis generator. Default 4 (the official code uses 8): the
            dense-basis form costs about r convs, so r=4 halves it; r=8 is the official setting.
        path: how the layer computes: "auto" (``facerec.nn.paths.select_path`` per call, by device, dtype, output
            size, generator and grad mode) or one of ``facerec.nn.paths.PATHS``: "fused", "triton", "structured"
            (1x1 kernels without padding), "dense_mix" (generator="basis"), "dense_pointwise" (both), "gather",
            "all_regions" (any layer). Every path gives the same outputs and gradients (float rounding apart);
            ``path`` is an attribute, so it can be changed on a built layer.
        guide_norm, guide_grad_scale: the guide's BatchNorm (affine-free) and gradient scale (see
            ``facerec.nn.guide.GuideConv`` for why); they apply to the layer's own guide (not external_guide).
        init: "static" (default: every region starts as the same filter and the dynamic part at zero, so the
            layer starts as a conv and its step-0 output scale is a default nn.Conv2d's) or "spread" (regions
            start correlated but distinct). See docs/drconv-training.md for the measurements behind it.

    Shapes: x (B, C, H, W) [, guide_feature (B, m, Ho, Wo)] -> (B, O, Ho, Wo).
    Attributes: ``path`` (above) and ``facts`` (the ``facerec.nn.paths.LayerFacts`` that ``select_path`` reads).
    Submodules: ``guide`` (a GuideConv, an nn.Conv2d C -> m, k x k, same stride/padding/dilation, with its
    norm) unless external_guide;
    ``filter_generator`` (PaperFilterGenerator or BasisFilterGenerator).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 regions: int = 8, generator: str = "paper", *, bias: bool = False, external_guide: bool = False,
                 hidden_channels: int | None = None, num_bases: int = 4, path: str = "auto",
                 guide_norm: bool = True, guide_grad_scale: float = 1.0, init: str = "static") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("regions", regions)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; valid generators: {', '.join(GENERATORS)}")
        self.in_channels, self.out_channels, self.regions = in_channels, out_channels, regions
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.generator, self.external_guide = generator, external_guide
        self.guide = None if external_guide else GuideConv(in_channels, regions, self.kernel_size, self.stride,
                                                           self.padding, self.dilation, norm=guide_norm,
                                                           grad_scale=guide_grad_scale)
        if generator == "paper":
            self.hidden_channels = regions if hidden_channels is None else hidden_channels
            self.filter_generator = PaperFilterGenerator(in_channels, out_channels, self.kernel_size, regions,
                                                         self.hidden_channels, init)
        else:
            if hidden_channels is not None:
                raise ValueError("hidden_channels applies to generator='paper' only; use num_bases for 'basis'")
            self.hidden_channels = None
            self.filter_generator = BasisFilterGenerator(in_channels, out_channels, self.kernel_size, self.stride,
                                                         self.padding, self.dilation, regions, num_bases, init)
        pointwise = self.kernel_size == (1, 1) and self.padding == (0, 0)
        self.facts = LayerFacts(generator, pointwise, regions, num_bases if generator == "basis" else 0,
                                in_channels, out_channels)
        check_path(self.facts, path)
        self.path = path
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _out_size(self, x: Tensor) -> tuple[int, int]:
        """(Ho, Wo) of input x (B, C, H, W)."""
        return (_output_size(x.shape[2], self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]),
                _output_size(x.shape[3], self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1]))

    def forward(self, x: Tensor, guide_feature: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DRConv2d expects a 4-D input (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DRConv2d expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if self.path != "auto":
            check_path(self.facts, self.path)
        out_h, out_w = self._out_size(x)
        path = select_path(self.facts, x, out_h * out_w, self.path)
        if path == "fused" and x.stride(1) != 1:
            # The fused kernel reads pixel rows: one channels_last copy here also saves the guide conv's own
            # reorder of an NCHW input.
            x = x.contiguous(memory_format=torch.channels_last)
        guide_feature = self._guide_feature(x, guide_feature)
        return self._add_bias(self._compute(path, x, guide_feature))

    def _guide_feature(self, x: Tensor, guide_feature: Tensor | None) -> Tensor:
        if self.external_guide:
            if guide_feature is None:
                raise ValueError("this DRConv2d has external_guide=True: call forward(x, guide_feature) with "
                                 f"guide_feature of shape (B, {self.regions}, Ho, Wo)")
        elif guide_feature is not None:
            raise ValueError("this DRConv2d owns its guide conv; pass only x (build it with external_guide=True "
                             "to take the guided feature from outside)")
        else:
            guide_feature = self.guide(x)
        expected = (x.shape[0], self.regions, *self._out_size(x))
        if tuple(guide_feature.shape) != expected:
            raise ValueError(f"guide feature must have shape (B, m, Ho, Wo) = {expected}, got "
                             f"{tuple(guide_feature.shape)}")
        return guide_feature

    def _compute(self, path: str, x: Tensor, guide: Tensor) -> Tensor:
        """The region convolution by ``path`` (see facerec.nn.paths): (B, O, Ho, Wo)."""
        gen = self.filter_generator
        if path in _EAGER_OP_PATHS or (self.facts.pointwise and path != "all_regions"
                                       and torch.compiler.is_compiling()):
            return self._operator(path, x, guide)
        if path == "structured":
            if self.generator == "paper":
                static, dynamic = gen.static_kernels()
                return paper_region_conv2d(x, guide, gen.coefficients(x), static, dynamic, self.stride)
            return structured_region_conv2d(x, guide, gen.term_coefficients(x), gen.stacked_kernels(), self.stride)
        if path == "dense_pointwise":
            return basis_pointwise(x, gen.basis.weight, gen.routing(x), guide, self.stride)
        if path == "dense_mix":
            return basis_mix(gen.basis(x), gen.routing(x), guide)
        if path == "all_regions":
            return all_regions_conv2d(x, gen(x), guide, self.stride, self.padding, self.dilation)
        return region_conv2d(x, gen(x), guide, self.stride, self.padding, self.dilation)

    def _operator(self, path: str, x: Tensor, guide: Tensor) -> Tensor:
        """``facerec.nn.ops.region_conv`` with this layer's generator as coefficients and kernels. While exporting
        the implementation is left to the operator ("auto"), so the exported program runs on any device."""
        gen = self.filter_generator
        coef = gen.term_coefficients(x)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            kernels = gen.stacked_kernels()
        else:
            kernels = self._inference_kernels()
        device_type = x.device.type
        if path != "fused" and torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x, kernels = x.to(dtype), kernels.to(dtype)
        impl = "auto" if torch.compiler.is_exporting() else ops.impl_for_path(path)
        return ops.region_conv(x, guide, coef, kernels, self.stride, impl)

    def _inference_kernels(self) -> Tensor:
        """``stacked_kernels()`` without autograd, rebuilt only when a parameter changed (in-place updates bump a
        tensor's version; assignments change its storage): the same tensor every call, so the fused kernel's
        packing of it is cached too."""
        gen = self.filter_generator
        params = (gen.shared, gen.expand.weight, gen.expand.bias) if self.generator == "paper" else (gen.basis.weight,)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = getattr(self, "_kernel_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        kernels = gen.stacked_kernels()
        self._kernel_cache = (key, kernels)
        return kernels

    def _add_bias(self, out: Tensor) -> Tensor:
        if self.bias is None:
            return out
        return out + self.bias.view(1, -1, 1, 1).to(out.dtype)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, regions={self.regions}, "
                f"generator={self.generator!r}")
        if self.path != "auto":
            text += f", path={self.path!r}"
        if self.external_guide:
            text += ", external_guide=True"
        return text


def guide_modules(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every nn.Conv2d in ``model`` whose qualified name ends in "guide", in model order.

    These produce guided features F (B, m, Ho, Wo); argmax over channels of a forward hook's output is the
    guided mask.
    """
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and name.endswith("guide")]
