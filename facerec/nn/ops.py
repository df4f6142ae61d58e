"""The region convolution as one registered operator, ``facerec::region_conv`` (DRConv, Chen et al., CVPR 2021,
arXiv 2003.12243, Eq.3-8), with its fake kernel and autograd formula; its backward is an operator too,
``facerec::region_conv_backward``, so ``torch.compile`` and ``torch.export`` see two opaque calls.

Contract (the structure both filter generators give a 1x1 DRConv: ``W_bj = sum_t coef[b, j, t] K[j, t]``):

    facerec::region_conv(Tensor x, Tensor guide, Tensor coef, Tensor kernels, SymInt[] stride, str impl="auto")
        -> Tensor out
    facerec::region_conv_backward(Tensor grad_out, Tensor x, Tensor guide, Tensor coef, Tensor kernels,
        SymInt[] stride, str impl, bool[] needs) -> (Tensor grad_x, Tensor eq7, Tensor grad_coef, Tensor grad_kernels)

* x (B, C, H, W); guide (B, m, Ho, Wo) the guided feature F, Ho = ceil(H / sh); coef (B, m, T); kernels (M, T, O,
  C) with M = m or 1 (one set shared by all regions); stride (sh, sw): the 1x1 conv reads ``x[:, :, ::sh, ::sw]``.
  The paper generator passes coef = [1, s] and kernels = [A_j, V_j] stacked, the basis generator coef = routing and
  kernels = bases (1, r, O, C) (``term_coefficients`` / ``stacked_kernels`` of ``facerec.nn.generators``).
* out (B, O, Ho, Wo), x's dtype, channels_last strides: ``out[b, :, p] = sum_t coef[b, j, t] K[j|0, t] @ x_p`` with
  j = argmax_j F[b, :, p] (Eq.4: first maximum, NaN the largest, as ``facerec.nn.functional.guided_mask``).
* backward: exact gradients of that hard-mask forward for x, coef and kernels (summed over regions when M = 1) and
  ``eq7[b, j, p] = <dY_p, W_bj x_p>`` (Eq.7) for every region j, which the autograd formula turns into the guide's
  gradient by Eq.8 (``softmax_straight_through_grad``). ``needs``: which of the four to compute (the others come
  back as empty tensors). grad_x: x's dtype, channels_last; eq7: float32 (float64 for a float64 guide), NCHW.
* impl: "auto" (``facerec.nn.paths.select_path`` for the tensors given), or one of ``IMPLS``: "fused" (the CPU C++
  kernels, ``facerec.nn.kernels.fused_cpu``), "triton" (``facerec.nn.kernels.triton_region``: CUDA, or CPU under
  ``TRITON_INTERPRET=1``), and the composite PyTorch forms "structured", "gather", "dense_mix" (reference and
  fallback on every device, ``facerec.nn.kernels.composite``).

``region_conv(x, guide, coef, kernels, stride=1, impl="auto")`` checks its arguments and calls the operator.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from facerec.nn import paths
from facerec.nn.functional import _pair, softmax_straight_through_grad
from facerec.nn.kernels import composite, fused_cpu, triton_region

__all__ = ["IMPLS", "impl_for_path", "region_conv"]

IMPLS = ("auto", "fused", "triton", "structured", "gather", "dense_mix")
_PATH_IMPLS = {"fused": "fused", "triton": "triton", "structured": "structured", "gather": "gather",
               "dense_mix": "dense_mix", "dense_pointwise": "dense_mix"}


def impl_for_path(path: str) -> str:
    """The operator implementation that computes layer path ``path`` ("dense_pointwise" -> "dense_mix": the same
    maths, its output-side form)."""
    if path not in _PATH_IMPLS:
        raise ValueError(f"path {path!r} has no operator implementation; these do: {', '.join(_PATH_IMPLS)}")
    return _PATH_IMPLS[path]


def _resolve(impl: str, x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, grad: bool) -> str:
    if impl != "auto":
        return impl
    regions = guide.shape[1]
    shared = kernels.shape[0] == 1 and regions > 1
    facts = paths.LayerFacts("basis" if shared else "paper", True, regions, coef.shape[2] if shared else 0,
                             x.shape[1], kernels.shape[2])
    return impl_for_path(paths.select_path(facts, x, guide.shape[2] * guide.shape[3], grad=grad, compiling=False))


def _layout(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` with the strides the fake kernels promise (a copy only where they differ)."""
    if channels_last:
        batch, channels, height, width = t.shape
        strides = (height * width * channels, 1, width * channels, channels)
    else:
        strides, step = [], 1
        for size in reversed(t.shape):
            strides.insert(0, step)
            step *= size
        strides = tuple(strides)
    if t.stride() == strides:
        return t
    out = torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device)
    return out.copy_(t)


def _empty_channels_last(like: Tensor, shape, dtype) -> Tensor:
    return torch.empty_permuted(shape, (0, 2, 3, 1), dtype=dtype, device=like.device)


@torch.library.custom_op("facerec::region_conv", mutates_args=())
def _region_conv(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride: Sequence[int],
                 impl: str = "auto") -> Tensor:
    impl = _resolve(impl, x, guide, coef, kernels, grad=False)
    if impl == "fused":
        out = fused_cpu.region_conv_forward(x, guide, coef, kernels, stride)
    elif impl == "triton":
        out = triton_region.region_conv_forward(x, guide, coef, kernels, stride)
    else:
        out = composite.region_conv_forward(x, guide, coef, kernels, stride, impl)
    return _layout(out.to(x.dtype), channels_last=True)


@_region_conv.register_fake
def _region_conv_fake(x, guide, coef, kernels, stride, impl="auto"):
    shape = (guide.shape[0], kernels.shape[2], guide.shape[2], guide.shape[3])
    return _empty_channels_last(x, shape, x.dtype)


@torch.library.custom_op("facerec::region_conv_backward", mutates_args=())
def _region_conv_backward(grad_out: Tensor, x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor,
                          stride: Sequence[int], impl: str, needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor,
                                                                                            Tensor]:
    impl = _resolve(impl, x, guide, coef, kernels, grad=True)
    needs = tuple(bool(n) for n in needs)
    if impl == "fused":
        per_group = paths.filter_grads_in_kernel(guide.shape[2] * guide.shape[3], guide.shape[1])
        grads = fused_cpu.region_conv_backward(grad_out, x, guide, coef, kernels, stride, needs, per_group)
    elif impl == "triton":
        grads = triton_region.region_conv_backward(grad_out, x, guide, coef, kernels, stride, needs)
    else:
        grads = composite.region_conv_backward(grad_out, x, guide, coef, kernels, stride, impl, needs)
    grad_x, eq7, grad_coef, grad_kernels = _backward_placeholders(x, guide, coef, kernels, needs)
    if needs[0]:
        grad_x = _layout(grads[0].to(x.dtype), channels_last=True)
    if needs[1]:
        eq7 = _layout(grads[1].to(eq7.dtype), channels_last=False)
    if needs[2]:
        grad_coef = _layout(grads[2].to(coef.dtype), channels_last=False)
    if needs[3]:
        grad_kernels = _layout(grads[3].to(kernels.dtype), channels_last=False)
    return grad_x, eq7, grad_coef, grad_kernels


def _backward_placeholders(x, guide, coef, kernels, needs) -> list[Tensor]:
    """Empty (0,) tensors of each result's dtype: the results not needed."""
    eq7_dtype = torch.promote_types(guide.dtype, torch.float32)
    return [x.new_empty(0), guide.new_empty(0, dtype=eq7_dtype), coef.new_empty(0), kernels.new_empty(0)]


@_region_conv_backward.register_fake
def _region_conv_backward_fake(grad_out, x, guide, coef, kernels, stride, impl, needs):
    grad_x, eq7, grad_coef, grad_kernels = _backward_placeholders(x, guide, coef, kernels, needs)
    if needs[0]:
        grad_x = _empty_channels_last(x, x.shape, x.dtype)
    if needs[1]:
        eq7 = guide.new_empty(guide.shape, dtype=eq7.dtype)
    if needs[2]:
        grad_coef = coef.new_empty(coef.shape)
    if needs[3]:
        grad_kernels = kernels.new_empty(kernels.shape)
    return grad_x, eq7, grad_coef, grad_kernels


def _setup_context(ctx, inputs, output) -> None:
    x, guide, coef, kernels, stride, impl = inputs
    ctx.save_for_backward(x, guide, coef, kernels)
    ctx.stride, ctx.impl = stride, impl


def _backward(ctx, grad_out):
    x, guide, coef, kernels = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:4]]
    if not any(needs):
        return None, None, None, None, None, None
    grad_x, eq7, grad_coef, grad_kernels = torch.ops.facerec.region_conv_backward(
        grad_out, x, guide, coef, kernels, ctx.stride, ctx.impl, needs)
    grad_guide = softmax_straight_through_grad(guide, eq7) if needs[1] else None
    return (grad_x if needs[0] else None, grad_guide, grad_coef if needs[2] else None,
            grad_kernels if needs[3] else None, None, None)


_region_conv.register_autograd(_backward, setup_context=_setup_context)


def region_conv(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride=1, impl: str = "auto") -> Tensor:
    """The 1x1 region convolution through the operator (contract in the module docstring).

    Args:
        x: (B, C, H, W).
        guide: (B, m, Ho, Wo), the guided feature F on the strided grid.
        coef: (B, m, T) coefficients.
        kernels: (m, T, O, C) per-region kernels, or (1, T, O, C) shared by all regions.
        stride: int or pair.
        impl: "auto" or one of ``IMPLS``.

    Returns:
        (B, O, Ho, Wo) in x's dtype, channels_last strides. Differentiable in x, guide (Eq.7-8), coef and kernels.
    """
    stride = _pair(stride, "stride")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if x.dim() != 4 or guide.dim() != 4 or coef.dim() != 3 or kernels.dim() != 4:
        raise ValueError(f"expected x (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, T), kernels (M, T, O, C); got "
                         f"{tuple(x.shape)}, {tuple(guide.shape)}, {tuple(coef.shape)}, {tuple(kernels.shape)}")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    batch, channels, height, width = x.shape
    regions = guide.shape[1]
    expected = (batch, regions, (height - 1) // stride[0] + 1, (width - 1) // stride[1] + 1)
    if (tuple(guide.shape) != expected or tuple(coef.shape[:2]) != (batch, regions)
            or kernels.shape[0] not in (regions, 1) or kernels.shape[1] != coef.shape[2]
            or kernels.shape[3] != channels):
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, guide {tuple(guide.shape)} (expected {expected}), "
                         f"coef {tuple(coef.shape)} (B, m, T), kernels {tuple(kernels.shape)} (m or 1, T, O, C)")
    return torch.ops.facerec.region_conv.default(x, guide, coef, kernels, list(stride), impl)
