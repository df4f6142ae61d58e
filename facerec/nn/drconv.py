"""DRConv2d: Dynamic Region-Aware Convolution (Chen et al., CVPR 2021, arXiv 2003.12243, section 3).

A k x k ``guide`` conv (C -> m) gives the guided feature F; its argmax over channels is the guided mask (Eq.4).
A filter generator (``filter_generator``, see generators.py) makes m filters per sample; every output pixel
uses the filter of its region (Eq.3, 5); the mask learns through the paper's softmax straight-through
gradient (Eq.6-8). The maths is ``facerec.nn.functional.region_conv2d``; with generator="basis" the layer can
instead use the dense-basis form (``facerec.nn.basis_functional.basis_mix``), chosen per shape.

``guide_modules(model)`` lists every guide conv of a model (DRConv-owned or block-owned) for mask hooks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from facerec.nn import _fused
from facerec.nn.basis_functional import basis_mix, basis_pointwise
from facerec.nn.functional import _pair, region_conv2d
from facerec.nn.generators import BasisFilterGenerator, PaperFilterGenerator
from facerec.nn.guide import GuideConv
from facerec.nn.structured import paper_region_conv2d

__all__ = ["DRConv2d", "GENERATORS", "BASIS_PATHS", "PAPER_PATHS", "guide_modules"]

GENERATORS = ("paper", "basis")
BASIS_PATHS = ("auto", "dense", "gather")
PAPER_PATHS = ("auto", "structured", "gather")

# "auto" uses the dense-basis form (cost ~ r convs) when the output has at most this many pixels per
# sample, or, when gradients are recorded, r <= 3/4 m at any size; otherwise the gathered form (~ m + 2 conv
# units, with gather/scatter and per-group GEMM overheads). Measured with benchmarks/drconv_layer.py (m=8,
# CPU): at 56x56 gathered beats dense for r=8 (6.3x vs 8.6x a conv's training step) and loses for r=4
# (6.3x vs 4.9x), while its forward alone is the faster (3.2x vs 3.6x); at 14x14 and 7x7 dense wins.
_DENSE_BASIS_MAX_PIXELS = 14 * 14

# paper_path="auto" uses the structured form (facerec.nn.structured: m region GEMMs against the generator's
# static kernels, no per-sample filters) up to this many output pixels per sample and the gathered form above.
# Measured with benchmarks/drconv_layer.py (m=8, batch 32, 1 thread CPU time, fwd / fwd+bwd ratio to a conv):
# 7x7 128->512 structured 2.75 / 6.13 vs gathered 9.58 / 13.08; 14x14 128->128 2.82 / 7.26 vs 4.35 / 7.87;
# 28x28 128->64 4.14 / 8.31 vs 3.93 / 7.91; 56x56 64->128 3.31 / 6.05 vs 2.65 / 4.86. At 28x28 and above the
# per-sample filters are small next to the activations and the gathered form does 1 conv of MACs, not 2.
_STRUCTURED_PAPER_MAX_PIXELS = 14 * 14


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
        basis_path: "auto" (by output size, r and grad mode), "dense" (one conv with r*O outputs + mix) or
            "gather" (materialise the m filters, region_conv2d). Only for generator="basis".
        paper_path: "auto" (structured for 1x1 kernels without padding at outputs of at most 14x14, else
            gather), "structured" (``facerec.nn.structured.paper_region_conv2d``: per-region GEMMs against the
            generator's static kernels, no per-sample filter tensor; 1x1 only) or "gather" (materialise the m
            filters, region_conv2d). Only for generator="paper".
        guide_norm, guide_grad_scale: the guide's BatchNorm (affine-free) and gradient scale (see
            ``facerec.nn.guide.GuideConv`` for why); they apply to the layer's own guide (not external_guide).
        init: "static" (default: every region starts as the same filter and the dynamic part at zero, so the
            layer starts as a conv and its step-0 output scale is a default nn.Conv2d's) or "spread" (regions
            start correlated but distinct). See docs/drconv-training.md for the measurements behind it.

    Inference: with the "auto" paths, a 1x1 layer run without gradients (``torch.no_grad()`` /
    ``torch.inference_mode()``) on a CPU float32 input uses the fused kernel of ``facerec.nn._fused`` (built on
    first use; AVX-512 CPUs; ``FACEREC_FUSED=0`` turns it off), except the basis generator below 2*r*m output
    pixels, where the dense-basis form is faster. Same outputs as the other paths (float32 rounding).

    Shapes: x (B, C, H, W) [, guide_feature (B, m, Ho, Wo)] -> (B, O, Ho, Wo).
    Submodules: ``guide`` (a GuideConv, an nn.Conv2d C -> m, k x k, same stride/padding/dilation, with its
    norm) unless external_guide;
    ``filter_generator`` (PaperFilterGenerator or BasisFilterGenerator).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 regions: int = 8, generator: str = "paper", *, bias: bool = False, external_guide: bool = False,
                 hidden_channels: int | None = None, num_bases: int = 4, basis_path: str = "auto",
                 paper_path: str = "auto", guide_norm: bool = True, guide_grad_scale: float = 1.0,
                 init: str = "static") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("regions", regions)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; valid generators: {', '.join(GENERATORS)}")
        if basis_path not in BASIS_PATHS:
            raise ValueError(f"unknown basis_path {basis_path!r}; valid: {', '.join(BASIS_PATHS)}")
        if paper_path not in PAPER_PATHS:
            raise ValueError(f"unknown paper_path {paper_path!r}; valid: {', '.join(PAPER_PATHS)}")
        self.in_channels, self.out_channels, self.regions = in_channels, out_channels, regions
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.generator, self.basis_path, self.external_guide = generator, basis_path, external_guide
        self.paper_path = paper_path
        if generator == "paper" and paper_path == "structured" and (self.kernel_size, self.padding) != ((1, 1), (0, 0)):
            raise ValueError(f"paper_path='structured' needs a 1x1 kernel without padding, got kernel_size="
                             f"{self.kernel_size}, padding={self.padding}")
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
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _use_dense_basis(self, out_pixels: int) -> bool:
        if self.generator != "basis":
            return False
        if self.basis_path == "auto":
            if out_pixels <= _DENSE_BASIS_MAX_PIXELS:
                return True
            # Without a backward only the forward counts, and the gathered one (1 conv of MACs) is the faster.
            return torch.is_grad_enabled() and 4 * self.filter_generator.num_bases <= 3 * self.regions
        return self.basis_path == "dense"

    def _use_structured_paper(self, out_pixels: int) -> bool:
        if self.generator != "paper" or self.paper_path == "gather":
            return False
        if self.kernel_size != (1, 1) or self.padding != (0, 0):
            return False
        return self.paper_path == "structured" or out_pixels <= _STRUCTURED_PAPER_MAX_PIXELS

    def forward(self, x: Tensor, guide_feature: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DRConv2d expects a 4-D input (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DRConv2d expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        fused = self._use_fused(x)
        if fused and x.stride(1) != 1:
            # The fused kernel reads pixel rows: one channels_last copy here also saves the guide conv's own
            # reorder of an NCHW input.
            x = x.contiguous(memory_format=torch.channels_last)
        if self.external_guide:
            if guide_feature is None:
                raise ValueError("this DRConv2d has external_guide=True: call forward(x, guide_feature) with "
                                 f"guide_feature of shape (B, {self.regions}, Ho, Wo)")
        elif guide_feature is not None:
            raise ValueError("this DRConv2d owns its guide conv; pass only x (build it with external_guide=True "
                             "to take the guided feature from outside)")
        else:
            guide_feature = self.guide(x)
        if guide_feature.dim() != 4 or guide_feature.shape[1] != self.regions:
            raise ValueError(f"guide feature must have shape (B, m={self.regions}, Ho, Wo), got "
                             f"{tuple(guide_feature.shape)}")
        gen = self.filter_generator
        if fused:
            return self._add_bias(self._fused_forward(x, guide_feature))
        if self._use_fused_training(x):
            if self.generator == "paper":
                static, dynamic = gen.static_kernels()
                out = _fused.paper_region_conv2d(x, guide_feature, gen.coefficients(x), static, dynamic,
                                                 self.stride)
            else:
                out = _fused.basis_region_conv2d(x, guide_feature, gen.routing(x), gen.bases()[..., 0, 0],
                                                 self.stride)
            return self._add_bias(out)
        if self._use_structured_paper(guide_feature.shape[2] * guide_feature.shape[3]):
            static, dynamic = gen.static_kernels()
            out = paper_region_conv2d(x, guide_feature, gen.coefficients(x), static, dynamic, self.stride)
            return self._add_bias(out)
        if self._use_dense_basis(guide_feature.shape[2] * guide_feature.shape[3]):
            if self.kernel_size == (1, 1) and self.padding == (0, 0) and self.in_channels <= self.out_channels:
                return self._add_bias(basis_pointwise(x, gen.basis.weight, gen.routing(x), guide_feature,
                                                      self.stride))
            z = gen.basis(x)
            if tuple(guide_feature.shape) != (x.shape[0], self.regions, z.shape[2], z.shape[3]):
                raise ValueError(f"guide feature must have shape {(x.shape[0], self.regions, *z.shape[2:])}, "
                                 f"got {tuple(guide_feature.shape)}")
            out = basis_mix(z, gen.routing(x), guide_feature)
        else:
            out = region_conv2d(x, gen(x), guide_feature, self.stride, self.padding, self.dilation)
        return self._add_bias(out)

    def _fusable(self, x: Tensor) -> bool:
        """A 1x1 layer without padding on its "auto" path: what both fused paths need of the layer."""
        path = self.paper_path if self.generator == "paper" else self.basis_path
        return path == "auto" and self.kernel_size == (1, 1) and self.padding == (0, 0)

    def _out_pixels(self, x: Tensor) -> int:
        return ((x.shape[2] - 1) // self.stride[0] + 1) * ((x.shape[3] - 1) // self.stride[1] + 1)

    def _use_fused(self, x: Tensor) -> bool:
        """Inference (no grad) with the "auto" path of a 1x1 layer, where the fused CPU kernel runs."""
        if not self._fusable(x) or torch.is_grad_enabled():
            return False
        # Each basis (sample, region) filter costs r kernel reads to build; with few pixels per region (7x7) the
        # dense-basis form is the faster (measured: 128->512 @7x7 8.4x a conv fused vs 5.0x dense).
        if self.generator == "basis" and self._out_pixels(x) < 2 * self.filter_generator.num_bases * self.regions:
            return False
        return _fused.available(x)

    def _use_fused_training(self, x: Tensor) -> bool:
        """With gradients, the "auto" path of CPU float32 1x1 layers uses the fused forward and backward kernels
        (facerec.nn._fused) where they are built: always for the paper generator; for the basis generator from
        64*m output pixels (28x28 and up with m = 8), where they beat its gathered / dense paths (layer
        forward+backward, 2 threads: 64->128 @56x56 4.20x a conv vs 5.38x, 128->64 @28x28 4.68x vs 6.47x; at
        14x14 and 7x7 mixed or worse: 128->256 @14x14 6.19x vs 5.38x, 128->512 @7x7 7.21x vs 4.15x)."""
        if not self._fusable(x) or not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            return False
        if self.generator == "basis" and self._out_pixels(x) < 64 * self.regions:
            return False
        return _fused.trainable(x)

    def _fused_forward(self, x: Tensor, guide_feature: Tensor) -> Tensor:
        """facerec.nn._fused.region_forward with this layer's generator as kernels and coefficients."""
        gen = self.filter_generator
        if self.generator == "paper":
            coef = _fused.with_unit_term(gen.coefficients(x))                               # (B, m, 1+t)
        else:
            coef = gen.routing(x)                                                           # (B, m, r)
        xs = x if self.stride == (1, 1) else x[:, :, ::self.stride[0], ::self.stride[1]]
        if tuple(guide_feature.shape) != (x.shape[0], self.regions, xs.shape[2], xs.shape[3]):
            raise ValueError(f"guide feature must have shape {(x.shape[0], self.regions, *xs.shape[2:])}, got "
                             f"{tuple(guide_feature.shape)}")
        return _fused.region_forward(xs, guide_feature, coef.float(), self._packed_kernels(), self.out_channels)

    def _packed_kernels(self) -> Tensor:
        """(m, T, C*O) kernels in the fused kernel's layout, rebuilt only when a parameter changed (in-place
        updates bump a tensor's version; assignments change its storage)."""
        gen = self.filter_generator
        params = (gen.shared, gen.expand.weight, gen.expand.bias) if self.generator == "paper" else (gen.basis.weight,)
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        cached = getattr(self, "_kernel_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        if self.generator == "paper":
            static, dynamic = gen.static_kernels()
            kernels = torch.cat([static.unsqueeze(1), dynamic], 1)                          # (m, 1+t, O, C)
            packed = _fused.pack_kernels(kernels.flatten(0, 1).transpose(1, 2))
            packed = packed.view(self.regions, kernels.shape[1], -1)
        else:
            bases = gen.bases()[..., 0, 0]                                                  # (r, O, C)
            packed = _fused.pack_kernels(bases.transpose(1, 2)).unsqueeze(0).expand(self.regions, -1, -1)
        self._kernel_cache = (key, packed)
        return packed

    def _add_bias(self, out: Tensor) -> Tensor:
        if self.bias is None:
            return out
        return out + self.bias.view(1, -1, 1, 1).to(out.dtype)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, regions={self.regions}, "
                f"generator={self.generator!r}")
        if self.generator == "basis":
            text += f", basis_path={self.basis_path!r}"
        elif self.paper_path != "auto":
            text += f", paper_path={self.paper_path!r}"
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
