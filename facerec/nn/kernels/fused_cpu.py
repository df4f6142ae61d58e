"""Fused CPU kernels of the 1x1 region convolution (float32; AVX-512 or AVX2): build, load csrc/fused_region.cpp.

Forward (``region_forward``): ``y_p = W_{b, M_p} x_p`` with ``W_bj = sum_k coef[b, j, k] kernels[j, k]`` for every
pixel in one pass per sample: the filter of each (sample, region) is built in a per-thread buffer that stays in
cache, the region's pixels are gathered into a small tile and one register-blocked SIMD GEMM writes their output
rows. Nothing of size B*m*O*C, no sort and no batch-wide gathers: the input is read once and the output written
once, 1 conv unit of multiply-adds plus the filter builds (O*C*T per (sample, region)).

Backward (``region_conv_backward``): per (region j, sample b) with W_bj built in cache, ``T = dY_b W_bj`` for all
of the sample's pixels gives the paper's Eq.7 ``g_j(p) = <T_p, x_p>`` (in the GEMM's epilogue) and the input
gradient of the region's own pixels (m conv units, the floor for Eq.7); the kernel and coefficient gradients come
either per (sample, region) in the same kernel or per region over the batch (``fused_region_filter_grads``), as
``filter_grads_in_kernel`` says (``facerec.nn.paths.filter_grads_in_kernel`` holds the rule and its measurement).

Why a hand-written kernel: the fast GEMM on this CPU is oneDNN's, and libtorch exports none of its symbols;
``at::native::cpublas::brgemm`` (exported) runs float32 at MKL's speed here (125 GMAC/s against oneDNN's
220-240 on 2 threads), and MKL per (sample, region) is the gather path's problem. The kernel is compiled on
first use with ``torch.utils.cpp_extension`` (g++, ninja; 25-50 s, cached under ~/.cache/torch_extensions
or ``TORCH_EXTENSIONS_DIR``) for the instruction set torch reports (``torch.backends.cpu.get_cpu_capability()``,
capped by the CPU's own flags: :func:`instruction_set`):
AVX-512 (micro-steps of 6 rows x 64 outputs) or AVX2 with FMA (6 x 16), one cached build per instruction set;
none on other CPUs;
a failed build logs one warning and ``built()`` stays False. These are the CPU kernels of the operator
``facerec::region_conv`` (``facerec.nn.ops``); whether they run is ``facerec.nn.paths.select_path``'s choice.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["built", "instruction_set", "pack_kernels", "region_conv_backward", "region_conv_forward", "region_forward"]

_SOURCE = Path(__file__).with_name("csrc") / "fused_region.cpp"
# Compiler flags per CPU capability that torch reports (``ATEN_CPU_CAPABILITY=avx2`` selects AVX2 on an AVX-512 CPU).
_FLAGS = {"AVX512": ["-O3", "-fopenmp", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-mavx2"],
          "AVX2": ["-O3", "-fopenmp", "-mavx2", "-mfma"]}
# The builds a capability may take, best first (a CPU without AVX-512 gets the AVX2 build; see instruction_set).
_CANDIDATES = {"AVX512": ("AVX512", "AVX2"), "AVX2": ("AVX2",)}
_module = None
_failed = False
# Packed kernels per kernels tensor (weak keys: an entry lives as long as its tensor), checked against the tensor's
# version: a layer in inference passes the same kernels tensor every call, and the backward the forward's.
_packed = WeakTensorKeyDictionary()
log = logging.getLogger(__name__)


def _load():
    global _module, _failed
    if _module is not None or _failed:
        return _module
    try:
        isa = instruction_set()
        if isa is None:
            raise RuntimeError(f"torch reports CPU capability {torch.backends.cpu.get_cpu_capability()}, "
                               "the fused kernel needs AVX512 or AVX2")
        if shutil.which("ninja") is None:
            try:   # the pip package (a dependency) puts its binary beside the interpreter, maybe not on PATH
                import ninja
                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            except ImportError:
                pass
        from torch.utils.cpp_extension import load
        _module = load(name=f"facerec_fused_region_{isa.lower()}_v2", sources=[str(_SOURCE)],
                       extra_cflags=_FLAGS[isa],
                       extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # noqa: BLE001 -- any build or load failure means: use the other paths
        _failed = True
        log.warning("fused DRConv kernel unavailable (%s: %s); using the unfused paths",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return _module


def _cpu_has(isa: str) -> bool:
    """Whether the CPU itself has the instruction set (cpuinfo, whatever ``ATEN_CPU_CAPABILITY`` says)."""
    probe = {"AVX512": "_is_avx512_supported", "AVX2": "_is_avx2_supported"}[isa]
    return bool(getattr(torch.cpu, probe, lambda: True)())


def instruction_set() -> str | None:
    """The build the kernels get here: "AVX512", "AVX2" or None (no build).

    torch's CPU capability decides (so ``ATEN_CPU_CAPABILITY=avx2`` takes the AVX2 build on an AVX-512 CPU), capped
    by what the CPU has: ``ATEN_CPU_CAPABILITY=avx512`` on a CPU without AVX-512 makes torch report AVX512, and an
    AVX-512 build would die there of an illegal instruction, so the AVX2 build is taken instead.
    """
    candidates = _CANDIDATES.get(torch.backends.cpu.get_cpu_capability(), ())
    return next((isa for isa in candidates if _cpu_has(isa)), None)


def built() -> bool:
    """Whether the kernels are built and loaded (builds them on the first call)."""
    return _load() is not None


def _kernel_module():
    module = _load()
    if module is None:
        raise RuntimeError("the fused DRConv kernel is not available (see the warning logged at first use)")
    return module


def pack_kernels(kernels_t: Tensor) -> Tensor:
    """(N, C, O) float32 kernels (transposed filters) -> (N, C * O) in the fused kernel's panel layout."""
    return _kernel_module().pack_kernels(kernels_t.float())


def _packed_kernels(kernels: Tensor, transposed: bool) -> Tensor:
    """kernels (M, T, O, C) -> (M, T, C*O) packed (C, O) matrices (``transposed``) or (M, T, O*C) packed (O, C)
    ones, cached per kernels tensor and version."""
    entry = _packed.get(kernels)
    if entry is None or entry[0] != kernels._version:
        entry = (kernels._version, {})
        _packed[kernels] = entry
    packed = entry[1].get(transposed)
    if packed is None:
        flat = kernels.detach().float().flatten(0, 1)
        packed = pack_kernels(flat.transpose(1, 2) if transposed else flat).view(kernels.shape[0], kernels.shape[1],
                                                                                 -1)
        entry[1][transposed] = packed
    return packed


def region_forward(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, out_channels: int) -> Tensor:
    """Fused 1x1 region convolution on packed kernels (no autograd).

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
    module = _kernel_module()
    batch, _, out_h, out_w = x.shape
    if x.stride(1) != 1:
        # Pixel rows must be contiguous: one channels_last copy (multi-threaded) costs less than gathering
        # every (sample, region) tile from channel planes.
        x = x.contiguous(memory_format=torch.channels_last)
    rows = module.fused_region_forward(x, guide.float(), coef, kernels, out_channels)
    return rows.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)


def _check_float32(x: Tensor) -> None:
    if x.device.type != "cpu" or x.dtype != torch.float32:
        raise TypeError(f"the fused DRConv kernels take CPU float32 inputs, got {x.dtype} on {x.device}")


def region_conv_forward(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride) -> Tensor:
    """The operator's contract (``facerec.nn.ops.region_conv``) on the fused kernel.

    x (B, C, H, W) float32 CPU; guide (B, m, Ho, Wo); coef (B, m, T); kernels (M, T, O, C), M = m or 1 (shared by
    all regions); stride (sh, sw). Returns (B, O, Ho, Wo) float32, channels_last strides.
    """
    _check_float32(x)
    xs = x if tuple(stride) == (1, 1) else x[:, :, ::stride[0], ::stride[1]]
    packed = _packed_kernels(kernels, transposed=True).expand(guide.shape[1], -1, -1)
    return region_forward(xs, guide, coef.float().contiguous(), packed, kernels.shape[2])


def region_conv_backward(grad_out: Tensor, x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride,
                         needs, filter_grads_in_kernel: bool):
    """Gradients of ``region_conv_forward``: (grad_x (B, C, H, W) channels_last, eq7 (B, m, Ho, Wo) with
    ``eq7[b, j, p] = <dY_p, W_bj x_p>`` (Eq.7; Eq.8 is the caller's), grad_coef (B, m, T), grad_kernels (M, T, O, C)
    summed over regions when M = 1), None where ``needs`` (four bools, in that order) is False.

    ``filter_grads_in_kernel``: kernel and coefficient gradients per (sample, region) inside the backward kernel
    (large regions), else per region over the whole batch (``fused_region_filter_grads``)."""
    _check_float32(x)
    module = _kernel_module()
    need_x, need_eq7, need_coef, need_kernels = needs
    xs = x if tuple(stride) == (1, 1) else x[:, :, ::stride[0], ::stride[1]]
    batch, channels, out_h, out_w = xs.shape
    regions, out_channels = guide.shape[1], kernels.shape[2]
    rows = xs.permute(0, 2, 3, 1).reshape(batch * out_h * out_w, channels).contiguous()
    dy_rows = grad_out.float().permute(0, 2, 3, 1).reshape(batch * out_h * out_w, out_channels).contiguous()
    guide32, coef32 = guide.float(), coef.float().contiguous()
    plain = kernels.detach().float().contiguous()
    in_kernel = filter_grads_in_kernel and (need_coef or need_kernels)
    dx_rows, eq7, dk, dcoef = module.fused_region_backward(
        rows, dy_rows, guide32, coef32, _packed_kernels(kernels, transposed=False).expand(regions, -1, -1),
        plain.expand(regions, -1, -1, -1), in_kernel)
    if not in_kernel and (need_coef or need_kernels):
        packed_co = _packed_kernels(kernels, transposed=True).expand(regions, -1, -1)
        dk, dcoef = module.fused_region_filter_grads(rows, dy_rows, guide32, coef32, packed_co, out_channels)
    grad_x = None
    if need_x:
        dx = dx_rows.view(batch, out_h, out_w, channels).permute(0, 3, 1, 2)
        if tuple(stride) == (1, 1):
            grad_x = dx
        else:
            grad_x = dx.new_zeros(x.shape[0], x.shape[2], x.shape[3], channels).permute(0, 3, 1, 2)
            grad_x[:, :, ::stride[0], ::stride[1]] = dx
    grad_kernels = None
    if need_kernels:
        grad_kernels = (dk if kernels.shape[0] == regions else dk.sum(0, keepdim=True)).to(kernels.dtype)
    return (grad_x, eq7 if need_eq7 else None, dcoef.to(coef.dtype) if need_coef else None, grad_kernels)
