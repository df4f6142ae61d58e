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

__all__ = ["ENABLED", "TRAIN_ENABLED", "available", "pack_kernels", "paper_region_conv2d", "region_forward",
           "trainable"]

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


class _FusedPaperFunction(torch.autograd.Function):
    """Training path: the fused forward, and the fused backward (Eq.7 for all regions with dX in the same GEMM per
    (region, sample), filter and coefficient gradients reduced without storing per-sample filter gradients)."""

    @staticmethod
    def forward(ctx, input, guide, coef, static, dynamic, stride):
        module = _load()
        x = input if stride == (1, 1) else input[:, :, ::stride[0], ::stride[1]]
        batch, channels, out_h, out_w = x.shape
        regions, out_channels = static.shape[0], static.shape[1]
        rows = x.permute(0, 2, 3, 1).reshape(batch * out_h * out_w, channels)       # a view if channels_last
        kernels = torch.cat([static.unsqueeze(1), dynamic], 1)                       # (m, T, O, C)
        terms = kernels.shape[1]
        coef_full = torch.cat([coef.new_ones(batch, regions, 1), coef], 2).contiguous()
        packed = module.pack_kernels(kernels.flatten(0, 1).transpose(1, 2)).view(regions, terms, -1)
        image = rows.view(batch, out_h, out_w, channels).permute(0, 3, 1, 2)
        guide32 = guide.float()
        out_rows = module.fused_region_forward(image, guide32, coef_full, packed, out_channels)
        ctx.save_for_backward(rows, guide, coef_full, kernels)
        ctx.stride, ctx.input_shape = stride, input.shape
        return out_rows.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        from facerec.nn.functional import softmax_straight_through_grad
        module = _load()
        rows, guide, coef_full, kernels = ctx.saved_tensors
        stride = ctx.stride
        batch, out_channels, out_h, out_w = grad_out.shape
        regions, terms = kernels.shape[:2]
        dy_rows = grad_out.float().permute(0, 2, 3, 1).reshape(batch * out_h * out_w, out_channels).contiguous()
        packed_oc = module.pack_kernels(kernels.flatten(0, 1)).view(regions, terms, -1)
        pixels = out_h * out_w
        per_group = pixels >= FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION * regions
        rows = rows.contiguous()
        dx_rows, eq7, dk, dcoef = module.fused_region_backward(rows, dy_rows, guide.float(), coef_full, packed_oc,
                                                               kernels, per_group)
        if not per_group and any(ctx.needs_input_grad[2:5]):
            dk, dcoef = _filter_grads_by_region(rows, dy_rows, guide, coef_full, kernels)
        grad_input = grad_guide = grad_coef = grad_static = grad_dynamic = None
        if ctx.needs_input_grad[0]:
            dx = dx_rows.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)
            if stride == (1, 1):
                grad_input = dx
            else:
                grad_input = dx.new_zeros(ctx.input_shape)
                grad_input[:, :, ::stride[0], ::stride[1]] = dx
        if ctx.needs_input_grad[1]:
            grad_guide = softmax_straight_through_grad(guide, eq7.to(guide.dtype))
        if ctx.needs_input_grad[2]:
            grad_coef = dcoef[:, :, 1:]
        if ctx.needs_input_grad[3]:
            grad_static = dk[:, 0]
        if ctx.needs_input_grad[4]:
            grad_dynamic = dk[:, 1:]
        return grad_input, grad_guide, grad_coef, grad_static, grad_dynamic, None


# The backward kernel forms each (sample, region)'s filter gradient (O x C) in one GEMM when a region has at least
# this many pixels per sample on average (14x14 and up with m = 8); with fewer, forming and folding B*m such
# matrices costs more than their GEMMs, and the gradients are computed per region over the whole batch instead
# (_filter_grads_by_region). Measured (layer forward+backward, batch 32, m = 8, 2 threads, ratio to a conv):
# in the kernel / by region: 64->128 @56x56 2.98x / 4.63x, 64->128 @28x28 3.34x / 5.12x, 128->128 @14x14
# 5.14x / 6.27x, 128->256 @14x14 4.92x / 5.79x; 128->512 @7x7 9.23x / 7.27x, 512->128 @7x7 10.12x / 7.98x.
FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION = 16


def _filter_grads_by_region(rows: Tensor, dy_rows: Tensor, guide: Tensor, coef_full: Tensor, kernels: Tensor):
    """dK[j, k] = sum_{p in j} coef[b_p, j, k] dY_p x_p^T and dcoef[b, j, k] = sum_{p in (b, j)} <dY_p, K[j, k] x_p>
    from pixel rows sorted by region: per region one GEMM for all T kernels' gradients and one for K x (oneDNN on
    CPU float32, see facerec.nn._onednn)."""
    from facerec.nn import _onednn
    from facerec.nn.functional import guided_mask
    regions, terms, out_channels, channels = kernels.shape
    batch = coef_full.shape[0]
    pixels = rows.shape[0] // batch
    mask = guided_mask(guide).reshape(-1)
    sorted_mask, perm = torch.sort(mask, stable=True)
    counts = torch.bincount(mask, minlength=regions).tolist()
    group = torch.div(perm, pixels, rounding_mode="floor") * regions + sorted_mask
    row_coef = coef_full.reshape(batch * regions, terms).index_select(0, group)           # (N, T)
    sorted_x, sorted_dy = rows.index_select(0, perm), dy_rows.index_select(0, perm)
    dk = rows.new_zeros(regions, terms, out_channels, channels)
    dots = rows.new_empty(rows.shape[0], terms)
    start = 0
    for j, n in enumerate(counts):
        if n:
            xj, dyj, cj = sorted_x[start:start + n], sorted_dy[start:start + n], row_coef[start:start + n]
            left = (dyj.unsqueeze(1) * cj.unsqueeze(2)).reshape(n, terms * out_channels)     # (n, T*O)
            dk[j] = (left.t() @ xj).view(terms, out_channels, channels)
            u = _onednn.rows_matmul(xj, kernels[j].reshape(terms * out_channels, channels))  # (n, T*O)
            dots[start:start + n] = (u.view(n, terms, out_channels) * dyj.unsqueeze(1)).sum(-1)
        start += n
    dcoef = rows.new_zeros(batch * regions, terms).index_add_(0, group, dots)
    return dk, dcoef.view(batch, regions, terms)


def paper_region_conv2d(input: Tensor, guide: Tensor, coef: Tensor, static: Tensor, dynamic: Tensor,
                        stride=(1, 1)) -> Tensor:
    """Differentiable fused 1x1 DRConv with the paper generator's structure, the same contract as
    ``facerec.nn.structured.paper_region_conv2d`` (input (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, t),
    static (m, O, C), dynamic (m, t, O, C), all float32 on CPU; returns (B, O, Ho, Wo), channels_last strides).
    Needs the kernel built (``available``-style checks are the caller's)."""
    return _FusedPaperFunction.apply(input, guide, coef, static, dynamic, tuple(stride))
