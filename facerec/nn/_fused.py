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

__all__ = ["ENABLED", "available", "pack_kernels", "region_forward"]

ENABLED = os.environ.get("FACEREC_FUSED", "1") != "0"
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
