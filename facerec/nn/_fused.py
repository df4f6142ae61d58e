"""Fused 1x1 DRConv forward for inference on CPU (private): builds and loads ``csrc/fused_region.cpp``.

``region_forward(x, mask, coef, kernels_t)`` computes ``y_p = W_{b, M_p} x_p`` with
``W_bj = sum_k coef[b, j, k] kernels[j, k]`` for every pixel in one pass per sample: the filter of each
(sample, region) is built in a per-thread buffer that stays in cache, the region's pixels are gathered into a
small tile and one register-blocked AVX-512 GEMM writes their output rows. Nothing of size B*m*O*C, no sort and
no batch-wide gathers (the structured path makes 4-6 extra passes over the activations and 2 conv units of
multiply-adds; this kernel reads the input once, writes the output once and does 1 unit plus the filter
builds, O*C*T per (sample, region)).

Why a hand-written kernel: the fast GEMM on this CPU is oneDNN's, and libtorch exports none of its symbols;
``at::native::cpublas::brgemm`` (exported) runs float32 at MKL's speed here (125 GMAC/s against oneDNN's
220-240 on 2 threads), and MKL per (sample, region) is the gather path's problem. The kernel is compiled on
first use with ``torch.utils.cpp_extension`` (g++, ninja; about 30 s, cached under ~/.cache/torch_extensions)
and only where torch reports AVX-512 (``torch.backends.cpu.get_cpu_capability()``). Used when: CPU, float32,
no gradient needed (inference), ``ENABLED`` (``FACEREC_FUSED=0`` turns it off) and the build succeeded; a
failed build logs one warning and the layer keeps its other paths.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ENABLED", "TRAIN_ENABLED", "available", "basis_region_conv2d", "pack_kernels", "paper_region_conv2d",
           "region_forward", "trainable", "with_unit_term"]

ENABLED = os.environ.get("FACEREC_FUSED", "1") != "0"
TRAIN_ENABLED = os.environ.get("FACEREC_FUSED_TRAIN", "1") != "0"
_SOURCE = Path(__file__).with_name("csrc") / "fused_region.cpp"
_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-mavx2"]
_module = None
_failed = False
log = logging.getLogger(__name__)


def _load():
    global _module, _failed
    if _module is not None or _failed:
        return _module
    try:
        if torch.backends.cpu.get_cpu_capability() != "AVX512":
            raise RuntimeError(f"torch reports CPU capability {torch.backends.cpu.get_cpu_capability()}, "
                               "the fused kernel needs AVX512")
        if shutil.which("ninja") is None:
            try:   # the pip package (a dependency) puts its binary beside the interpreter, maybe not on PATH
                import ninja
                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            except ImportError:
                pass
        from torch.utils.cpp_extension import load
        _module = load(name="facerec_fused_region_v1", sources=[str(_SOURCE)], extra_cflags=_FLAGS,
                       extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # noqa: BLE001 -- any build or load failure means: use the other paths
        _failed = True
        log.warning("fused DRConv kernel unavailable (%s: %s); using the unfused paths",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return _module


def available(x: Tensor) -> bool:
    """Whether ``region_forward`` can run for input ``x`` now: CPU float32, no grad needed, kernel built."""
    if not ENABLED or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.is_grad_enabled():
        return False
    return _load() is not None


def pack_kernels(kernels_t: Tensor) -> Tensor:
    """(N, C, O) float32 kernels (transposed filters) -> (N, C * O) in the fused kernel's panel layout."""
    module = _load()
    if module is None:
        raise RuntimeError("the fused DRConv kernel is not available (see the warning logged at first use)")
    return module.pack_kernels(kernels_t.float())


def trainable(x: Tensor) -> bool:
    """Whether ``paper_region_conv2d`` (the differentiable fused path) can run for ``x``: CPU float32, enabled
    (``ENABLED``, ``FACEREC_FUSED_TRAIN=0`` turns off only the training path), kernel built."""
    if not (ENABLED and TRAIN_ENABLED) or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    return _load() is not None


def region_forward(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, out_channels: int) -> Tensor:
    """Fused 1x1 region convolution (no autograd).

    Args:
        x: (B, C, Ho, Wo) float32, any strides (pass ``x[:, :, ::s, ::s]`` for stride s).
        guide: (B, m, Ho, Wo) float32 guided feature F; the region of a pixel is its argmax over m (Eq.4: first
            maximum, NaN as the largest, as ``facerec.nn.functional.guided_mask``).
        coef: (B, m, T) float32 coefficients.
        kernels: (m, T, C * O) float32: kernel [j, k] is ``pack_kernels`` of the transposed filter (C, O) (any
            strides on the first two dims; stride 0 on the first shares kernels across regions, as the basis
            generator does).
        out_channels: O.

    Returns:
        (B, O, Ho, Wo) with channels_last strides: ``y[b, :, p] = (sum_k coef[b, j, k] K[j, k]).T @ x[b, :, p]``
        with ``j = argmax_j guide[b, j, p]`` and ``K[j, k]`` the (C, O) kernel behind ``kernels[j, k]``.
    """
    module = _load()
    if module is None:
        raise RuntimeError("the fused DRConv kernel is not available (see the warning logged at first use)")
    batch, _, out_h, out_w = x.shape
    if x.stride(1) != 1:
        # Pixel rows must be contiguous: one channels_last copy (multi-threaded) costs less than gathering
        # every (sample, region) tile from channel planes.
        x = x.contiguous(memory_format=torch.channels_last)
    rows = module.fused_region_forward(x, guide.float(), coef, kernels, out_channels)
    return rows.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)


class _FusedRegionFunction(torch.autograd.Function):
    """Training path: the fused forward, and the fused backward (Eq.7 for all regions with dX in the same GEMM per
    (region, sample), filter and coefficient gradients reduced without storing per-sample filter gradients).

    Inputs: input (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, T), kernels (m, T, O, C) or (1, T, O, C) for
    kernels shared by all regions (the basis generator), stride. Gradients for all four tensors."""

    @staticmethod
    def forward(ctx, input, guide, coef, kernels, stride):
        module = _load()
        x = input if stride == (1, 1) else input[:, :, ::stride[0], ::stride[1]]
        batch, channels, out_h, out_w = x.shape
        regions, terms, out_channels = guide.shape[1], kernels.shape[1], kernels.shape[2]
        rows = x.permute(0, 2, 3, 1).reshape(batch * out_h * out_w, channels)       # a view if channels_last
        kernels = kernels.contiguous()
        packed = module.pack_kernels(kernels.flatten(0, 1).transpose(1, 2)).view(kernels.shape[0], terms, -1)
        packed = packed.expand(regions, -1, -1)
        coef = coef.contiguous()
        image = rows.view(batch, out_h, out_w, channels).permute(0, 3, 1, 2)
        out_rows = module.fused_region_forward(image, guide.float(), coef, packed, out_channels)
        ctx.save_for_backward(rows, guide, coef, kernels)
        ctx.stride, ctx.input_shape, ctx.packed_co = stride, input.shape, packed
        return out_rows.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        from facerec.nn.functional import softmax_straight_through_grad
        module = _load()
        rows, guide, coef, kernels = ctx.saved_tensors
        stride = ctx.stride
        batch, out_channels, out_h, out_w = grad_out.shape
        regions, terms = guide.shape[1], kernels.shape[1]
        dy_rows = grad_out.float().permute(0, 2, 3, 1).reshape(batch * out_h * out_w, out_channels).contiguous()
        packed_oc = module.pack_kernels(kernels.flatten(0, 1)).view(kernels.shape[0], terms, -1)
        plain = kernels.expand(regions, -1, -1, -1)
        per_group = out_h * out_w >= FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION * regions
        rows = rows.contiguous()
        dx_rows, eq7, dk, dcoef = module.fused_region_backward(rows, dy_rows, guide.float(), coef,
                                                               packed_oc.expand(regions, -1, -1), plain, per_group)
        if not per_group and any(ctx.needs_input_grad[2:4]):
            dk, dcoef = module.fused_region_filter_grads(rows, dy_rows, guide.float(), coef, ctx.packed_co,
                                                         out_channels)
        grad_input = grad_guide = None
        if ctx.needs_input_grad[0]:
            dx = dx_rows.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)
            if stride == (1, 1):
                grad_input = dx
            else:
                grad_input = dx.new_zeros(ctx.input_shape)
                grad_input[:, :, ::stride[0], ::stride[1]] = dx
        if ctx.needs_input_grad[1]:
            grad_guide = softmax_straight_through_grad(guide, eq7.to(guide.dtype))
        grad_coef = dcoef if ctx.needs_input_grad[2] else None
        grad_kernels = None
        if ctx.needs_input_grad[3]:
            grad_kernels = dk if kernels.shape[0] == regions else dk.sum(0, keepdim=True)
        return grad_input, grad_guide, grad_coef, grad_kernels, None


# The backward kernel forms each (sample, region)'s filter gradient (O x C) in one GEMM when a region has at least
# this many pixels per sample on average (28x28 and up with m = 8); with fewer, forming and folding B*m such
# matrices costs more than their GEMMs, and fused_region_filter_grads computes the gradients per region over the
# whole batch instead. Measured (layer forward+backward, batch 32, m = 8, 2 threads, ratio to a conv; in the
# kernel / per region): 64->128 @56x56 3.02x / 5.16x, 64->128 @28x28 3.44x / 4.81x, 128->64 @28x28 4.18x / 5.28x;
# 128->128 @14x14 5.07x / 4.91x, 128->256 @14x14 5.08x / 4.98x, 256->128 @14x14 5.16x / 5.01x;
# 128->512 @7x7 9.41x / 5.79x, 512->128 @7x7 10.02x / 6.35x.
FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION = 64


def paper_region_conv2d(input: Tensor, guide: Tensor, coef: Tensor, static: Tensor, dynamic: Tensor,
                        stride=(1, 1)) -> Tensor:
    """Differentiable fused 1x1 DRConv with the paper generator's structure, the same contract as
    ``facerec.nn.structured.paper_region_conv2d`` (input (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, t),
    static (m, O, C), dynamic (m, t, O, C), all float32 on CPU; returns (B, O, Ho, Wo), channels_last strides).
    Needs the kernel built (``trainable``)."""
    kernels = torch.cat([static.unsqueeze(1), dynamic], 1)                             # (m, 1+t, O, C)
    return _FusedRegionFunction.apply(input, guide, with_unit_term(coef), kernels, tuple(stride))


def with_unit_term(coef: Tensor) -> Tensor:
    """The paper generator's coefficients (B, m, t) with the static kernel's constant 1 first: (B, m, 1+t)."""
    return torch.cat([coef.new_ones(coef.shape[0], coef.shape[1], 1), coef], 2)


def basis_region_conv2d(input: Tensor, guide: Tensor, routing: Tensor, bases: Tensor, stride=(1, 1)) -> Tensor:
    """Differentiable fused 1x1 DRConv with the basis generator's structure: region j of sample b uses
    ``sum_r routing[b, j, r] bases[r]``. input (B, C, H, W), guide (B, m, Ho, Wo), routing (B, m, r), bases
    (r, O, C), float32 on CPU; returns (B, O, Ho, Wo), channels_last strides. Needs the kernel built."""
    return _FusedRegionFunction.apply(input, guide, routing, bases.unsqueeze(0), tuple(stride))
