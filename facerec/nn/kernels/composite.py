"""The composite PyTorch implementations of the region-convolution operator: reference and fallback of
``facerec::region_conv`` (``facerec.nn.ops``) on every device (DRConv, Chen et al., CVPR 2021, Eq.3-8).

The operator's contract: x (B, C, H, W), guide (B, m, Ho, Wo), coef (B, m, T), kernels (M, T, O, C) with M = m or
1 (shared by all regions), stride (sh, sw) -> (B, O, Ho, Wo) with ``out[b, :, p] = sum_t coef[b, j, t]
kernels[j|0, t] @ x[b, :, p']``, j the region of p (argmax of the guide, Eq.4), p' = (ho * sh, wo * sw). Three
implementations (``IMPLS``), the layer paths of the same names (``facerec.nn.paths``):

* "structured": ``facerec.nn.structured.structured_region_conv2d`` (region GEMMs against the kernels);
* "gather": the filters ``W_bj = sum_t coef[b, j, t] K_jt`` materialised, ``facerec.nn.functional.region_conv2d``;
* "dense_mix": shared kernels only (M = 1): one 1x1 conv with all T*O kernel outputs, then the per-pixel mix
  ``facerec.nn.basis_functional.basis_mix``.

The backward recomputes the forward and differentiates it (the operator keeps no intermediates between its
forward and backward calls), the guide's gradient being Eq.7 itself (``raw_eq7``): one forward's cost more than
the layer's own autograd Functions, which ``DRConv2d`` calls directly in eager mode.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from facerec.nn.basis_functional import basis_mix
from facerec.nn.functional import region_conv2d
from facerec.nn.structured import structured_region_conv2d

__all__ = ["IMPLS", "region_conv_backward", "region_conv_forward"]

IMPLS = ("structured", "gather", "dense_mix")


def _filters(coef: Tensor, kernels: Tensor, regions: int) -> Tensor:
    """W (B, m, O, C) = sum_t coef[b, j, t] kernels[j|0, t]."""
    return torch.einsum("bjt,jtoc->bjoc", coef, kernels.expand(regions, -1, -1, -1))


def _strided(x: Tensor, stride) -> Tensor:
    return x if tuple(stride) == (1, 1) else x[:, :, ::stride[0], ::stride[1]]


def _basis_outputs(x: Tensor, kernels: Tensor, stride) -> Tensor:
    """z (B, T*O, Ho, Wo): every shared kernel applied to the strided input (kernels (1, T, O, C))."""
    if kernels.shape[0] != 1:
        raise ValueError(f"impl 'dense_mix' needs kernels shared by all regions (1, T, O, C), got "
                         f"{tuple(kernels.shape)}")
    terms, out_channels, channels = kernels.shape[1:]
    return F.conv2d(_strided(x, stride), kernels[0].reshape(terms * out_channels, channels, 1, 1))


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown composite impl {impl!r}; valid: {', '.join(IMPLS)}")


def _no_autocast(device_type: str):
    """Autocast is thread state: inside the operator it would cast the implementations' own GEMMs."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def region_conv_forward(x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride, impl: str) -> Tensor:
    """The operator's forward through composite ``impl``: (B, O, Ho, Wo) in x's dtype."""
    _check_impl(impl)
    coef, kernels = coef.to(x.dtype), kernels.to(x.dtype)
    with torch.no_grad(), _no_autocast(x.device.type):
        if impl == "structured":
            return structured_region_conv2d(x, guide, coef, kernels, stride)
        if impl == "gather":
            return region_conv2d(x, _filters(coef, kernels, guide.shape[1])[..., None, None], guide, stride)
        return basis_mix(_basis_outputs(x, kernels, stride), coef, guide)


def _autograd(fn, tensors, needs, grad_out: Tensor) -> list[Tensor | None]:
    """Gradients of ``fn(*leaves)`` for the tensors whose ``needs`` is True (None for the others, zeros where the
    output does not depend on them). The operator runs below autograd's dispatch, where only autograd Functions
    record a graph: ``fn`` must take its leaves straight into one."""
    leaves = [t.detach().requires_grad_(bool(need)) for t, need in zip(tensors, needs)]
    wanted = [t for t in leaves if t.requires_grad]
    if not wanted:
        return [None] * len(leaves)
    out = fn(*leaves)
    grads = iter(torch.autograd.grad(out, wanted, grad_out.to(out.dtype), allow_unused=True))
    result = []
    for leaf in leaves:
        grad = next(grads) if leaf.requires_grad else None
        result.append(torch.zeros_like(leaf) if leaf.requires_grad and grad is None else grad)
    return result


def region_conv_backward(grad_out: Tensor, x: Tensor, guide: Tensor, coef: Tensor, kernels: Tensor, stride,
                         impl: str, needs):
    """(grad_x, eq7, grad_coef, grad_kernels) of the operator through composite ``impl``, None where ``needs`` (four
    bools) is False. eq7 (B, m, Ho, Wo) = ``<dY_p, W_bj x_p>`` for every region j (Eq.7), in float32 or float64."""
    _check_impl(impl)
    need_x, need_eq7, need_coef, need_kernels = (bool(n) for n in needs)
    regions, dtype = guide.shape[1], x.dtype
    guide = guide.to(torch.promote_types(guide.dtype, torch.float32))        # Eq.7 in float32 at least
    coef_x, kernels_x = coef.to(dtype), kernels.to(dtype)
    with torch.enable_grad(), _no_autocast(x.device.type):
        if impl == "structured":
            grad_x, eq7, grad_coef, grad_kernels = _autograd(
                lambda *t: structured_region_conv2d(*t, stride, raw_eq7=True), (x, guide, coef_x, kernels_x), needs,
                grad_out)
        elif impl == "gather":
            filters = _filters(coef_x, kernels_x, regions)[..., None, None]
            grad_x, eq7, grad_filters = _autograd(
                lambda *t: region_conv2d(t[0], t[2], t[1], stride, raw_eq7=True), (x, guide, filters),
                (need_x, need_eq7, need_coef or need_kernels), grad_out)
            grad_coef = grad_kernels = None
            if need_coef:
                grad_coef = torch.einsum("bjoc,jtoc->bjt", grad_filters[..., 0, 0],
                                         kernels_x.expand(regions, -1, -1, -1))
            if need_kernels:
                grad_kernels = torch.einsum("bjoc,bjt->jtoc", grad_filters[..., 0, 0], coef_x)
                if kernels.shape[0] != regions:
                    grad_kernels = grad_kernels.sum(0, keepdim=True)
        else:
            xs = _strided(x, stride)
            z = _basis_outputs(x, kernels_x, stride)
            grad_z, grad_coef, eq7 = _autograd(lambda *t: basis_mix(t[0], t[1], t[2], raw_eq7=True),
                                               (z, coef_x, guide), (need_x or need_kernels, need_coef, need_eq7),
                                               grad_out)
            grad_x = grad_kernels = None
            terms, out_channels, channels = kernels.shape[1:]
            flat_grad = grad_z.flatten(2) if grad_z is not None else None              # (B, T*O, Ho*Wo)
            if need_x:
                grad_xs = torch.einsum("bkp,kc->bcp", flat_grad, kernels_x[0].reshape(terms * out_channels,
                                                                                      channels))
                grad_x = x.new_zeros(x.shape)
                _strided(grad_x, stride).copy_(grad_xs.view(xs.shape))
            if need_kernels:
                grad_kernels = torch.einsum("bkp,bcp->kc", flat_grad, xs.flatten(2)).view(kernels.shape)
    return (grad_x, eq7, None if grad_coef is None else grad_coef.to(coef.dtype),
            None if grad_kernels is None else grad_kernels.to(kernels.dtype))
