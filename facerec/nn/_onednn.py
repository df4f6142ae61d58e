"""Row GEMMs through oneDNN's 1x1 convolution on CPU (private).

``rows_matmul(rows, weight)`` computes ``rows @ weight.T`` for rows (n, K) and weight (M, K) by calling
``torch.ops.aten.mkldnn_convolution`` on the rows viewed as a (1, K, n, 1) channels_last image: the oneDNN
kernel that ``nn.Conv2d`` uses, called directly (``F.conv2d`` would route a batch-1 image to the slow native
kernel at one thread). Why not ``torch.mm``: torch's CPU GEMM is MKL's ``sgemm``, which on this AMD CPU takes
no AVX-512 code path (``MKL_VERBOSE=1``: "Intel(R) Architecture processors"); oneDNN does. Measured on this
project's 2-core AMD EPYC VM (float32, the same MACs; docs/drconv-speed.md): 6272 x 128 -> 256 takes 0.84 ms
through oneDNN and 1.91 ms through ``torch.mm`` at 2 threads (1.64 / 4.01 ms at 1 thread), i.e. MKL is ~2x
slower per MAC on this CPU. A call costs ~40 us of fixed overhead (weight reorder, primitive lookup) against
~4 us for ``mm``, so callers use it only for GEMMs large enough (``facerec.nn.paths.use_onednn_gemm``).

Used when: CPU, float32, oneDNN built in and enabled (``torch.backends.mkldnn``), the ``onednn`` setting
(``facerec.nn.settings``; ``FACEREC_ONEDNN=0`` makes it default to off) and a one-time probe call agrees with
``torch.mm``. Elsewhere these functions fall back to ``torch.mm`` / ``bmm``. Whether a GEMM is large enough to pay
the fixed cost is decided by ``facerec.nn.paths.use_onednn_gemm`` (threshold and measurement there).
"""
from __future__ import annotations

import torch
from torch import Tensor

from facerec.nn import settings

__all__ = ["available", "batched_matmul", "interleaved_matmul", "rows_matmul"]

_PROBED: bool | None = None


def _call(rows: Tensor, weight: Tensor) -> Tensor:
    n, k = rows.shape
    image = rows.view(1, n, 1, k).permute(0, 3, 1, 2)                     # (1, K, n, 1), channels_last
    out = torch.ops.aten.mkldnn_convolution(image, weight.view(weight.shape[0], k, 1, 1), None, [0, 0], [1, 1],
                                            [1, 1], 1)
    return out.permute(0, 2, 3, 1).reshape(n, weight.shape[0])            # a view: out is channels_last


def _interleaved_call(flat: Tensor, b_t: Tensor) -> Tensor:
    """flat (P*G, K) with row l*G + g = row l of group g, b_t (G, M, K) -> (P*G, M) in the same layout."""
    groups, out_cols, inner = b_t.shape
    rows = flat.shape[0] // groups
    image = flat.view(1, rows, 1, groups * inner).permute(0, 3, 1, 2)                 # (1, G*K, P, 1) CL
    out = torch.ops.aten.mkldnn_convolution(image, b_t.reshape(groups * out_cols, inner, 1, 1), None, [0, 0],
                                            [1, 1], [1, 1], groups)                 # (1, G*M, P, 1) channels_last
    return out.permute(0, 2, 3, 1).reshape(rows * groups, out_cols)


def _batched_call(a: Tensor, b_t: Tensor) -> Tensor:
    groups, rows, inner = a.shape
    out = _interleaved_call(a.transpose(0, 1).reshape(rows * groups, inner), b_t)
    return out.view(rows, groups, b_t.shape[1]).transpose(0, 1)


def _probe() -> bool:
    """Small calls checked against torch.mm / bmm; False when the op is missing or disagrees."""
    try:
        gen = torch.Generator().manual_seed(0)
        rows = torch.randn(37, 24, generator=gen)
        weight = torch.randn(40, 24, generator=gen)
        a, b_t = torch.randn(3, 19, 24, generator=gen), torch.randn(3, 40, 24, generator=gen)
        return bool(torch.allclose(_call(rows, weight), rows @ weight.t(), rtol=1e-4, atol=1e-4)
                    and torch.allclose(_batched_call(a, b_t), a @ b_t.transpose(1, 2), rtol=1e-4, atol=1e-4))
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def available(t: Tensor) -> bool:
    """Whether rows_matmul runs through oneDNN for tensors like ``t`` (CPU float32, oneDNN usable)."""
    global _PROBED
    if not settings.use_onednn() or t.device.type != "cpu" or t.dtype != torch.float32:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if _PROBED is None:
        _PROBED = _probe()
    return _PROBED


def rows_matmul(rows: Tensor, weight: Tensor) -> Tensor:
    """rows (n, K) @ weight (M, K).T -> (n, M), through oneDNN when ``available(rows)``, else ``torch.mm``.

    rows and weight are made contiguous if they are not. The result is a contiguous (n, M) tensor.
    """
    if not available(rows) or rows.shape[0] == 0:
        return rows @ weight.t()
    return _call(rows.contiguous(), weight.contiguous())


def batched_matmul(a: Tensor, b_t: Tensor) -> Tensor:
    """a (G, P, K) @ b_t (G, M, K).T per group -> (G, P, M), through oneDNN when ``available(a)``, else bmm.

    The oneDNN form is one grouped 1x1 convolution (groups = G) on ``a`` laid out as a (1, G*K, P, 1)
    channels_last image (a transposed copy of ``a``); the result is a strided (G, P, M) view whose last dim is
    contiguous. Measured (G = 32 samples, P = 196, K = 128, M = 1024, 2 threads): 5.5 ms against 9.6 ms for
    ``torch.bmm``.
    """
    if not available(a) or a.numel() == 0:
        return torch.bmm(a, b_t.transpose(1, 2))
    return _batched_call(a, b_t.contiguous())


def interleaved_matmul(flat: Tensor, b_t: Tensor) -> Tensor:
    """Per-group GEMMs on group-interleaved rows: flat (P*G, K), row ``l*G + g`` being row l of group g, and
    b_t (G, M, K) -> (P*G, M) in the same layout, ``out[l*G + g] = flat[l*G + g] @ b_t[g].T``.

    One oneDNN grouped 1x1 convolution (the interleaved rows are its channels_last image, no copy) when
    ``available(flat)``, else bmm. ``facerec.nn._grouped.GroupPlan`` ("onednn") pads groups into this layout.
    """
    groups, out_cols, inner = b_t.shape
    if not available(flat) or flat.numel() == 0:
        a = flat.view(-1, groups, inner).transpose(0, 1)
        return torch.bmm(a, b_t.transpose(1, 2)).transpose(0, 1).reshape(-1, out_cols)
    return _interleaved_call(flat.contiguous(), b_t.contiguous())
