"""Dense-basis form of DRConv with the shared-basis generator (the DRConv implementations survey, section 5.3).

When every region's filter is a mix of r shared static kernels, ``W_{b,j} = sum_t a[b, j, t] B_t``, the layer
output is ``Y_p = sum_t a[b, M_p, t] (B_t * X)_p``: one dense conv with r*O outputs (``Z``) followed by a
per-pixel mix with the coefficients of the pixel's region. No per-sample filters are materialised. The
paper's Eq.7 comes from the same ``Z``: ``g_j(p) = sum_t a[b, j, t] <dY_p, Z_t(p)>``, then Eq.8.

Two equivalent forms, picked by the layer (the narrow side carries the r-fold tensor):

* output side, ``basis_mix(z, coef, guide)``: z = conv(x, all bases) (B, r*O, Ho, Wo), then the per-pixel
  mix. Gradients: z and coef exact hard-mask; guide Eq.7-8 with ``h_t(p) = <dY_p, Z_t(p)>``.
* input side (1x1 kernels), ``basis_pointwise(x, basis_weight, coef, guide, stride)``: scale the input by the
  pixel's coefficients, ``Xs = [c_1 X, ..., c_r X]`` (B, r*C, Ho, Wo), then one 1x1 conv with the bases side by
  side (O x r*C). Autograd gives ``dL/dc_t(p) = <(B_t^T dY)_p, X_p> = h_t(p)``; a straight-through
  coefficient ``c = c_hard`` in value with the gradient also reaching ``c_soft = sum_j softmax(F)_j a_j``
  (a detached) yields exactly Eq.7 (``sum_t a_jt h_t``) and Eq.8 (autograd's softmax backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facerec.nn.functional import guided_mask, softmax_straight_through_grad

__all__ = ["basis_mix", "basis_pointwise"]


def _pixel_coefficients(coef: Tensor, mask: Tensor) -> Tensor:
    """c[b, t, p] = coef[b, mask[b, p], t]: (B, m, r), (B, Ho, Wo) -> (B, r, Ho, Wo)."""
    batch, _, bases = coef.shape
    index = mask.reshape(batch, 1, -1).expand(batch, bases, -1)
    return torch.gather(coef.transpose(1, 2), 2, index).view(batch, bases, *mask.shape[1:])


class _BasisMixFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, coef, guide, raw_eq7):
        bases = coef.shape[2]
        out_channels = z.shape[1] // bases
        mask = guided_mask(guide)
        pixel_coef = _pixel_coefficients(coef.to(z.dtype), mask)
        out = z[:, :out_channels] * pixel_coef[:, :1]
        for t in range(1, bases):
            out.addcmul_(z[:, t * out_channels:(t + 1) * out_channels], pixel_coef[:, t:t + 1])
        ctx.save_for_backward(z, coef, guide, mask)
        ctx.raw_eq7 = raw_eq7
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, coef, guide, mask = ctx.saved_tensors
        batch, regions, bases = coef.shape
        out_channels = z.shape[1] // bases
        grad_out = grad_out.to(z.dtype)
        grad_z = grad_coef = grad_guide = None
        pixel_coef = _pixel_coefficients(coef.to(z.dtype), mask)
        if ctx.needs_input_grad[0]:
            grad_z = torch.cat([grad_out * pixel_coef[:, t:t + 1] for t in range(bases)], dim=1)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # h[b, t, p] = <dY_p, Z_t(p)>, accumulated in float32 or better.
            work = torch.promote_types(z.dtype, torch.float32)
            h = torch.stack([(z[:, t * out_channels:(t + 1) * out_channels] * grad_out).sum(1, dtype=work)
                             for t in range(bases)], dim=1).view(batch, bases, -1)
            if ctx.needs_input_grad[1]:
                index = mask.reshape(batch, 1, -1).expand(batch, bases, -1)
                per_region = h.new_zeros(batch, bases, regions).scatter_add_(2, index, h)
                grad_coef = per_region.transpose(1, 2).to(coef.dtype)
            if ctx.needs_input_grad[2]:
                eq7 = torch.bmm(coef.to(work), h).view(batch, regions, *mask.shape[1:])
                grad_guide = eq7 if ctx.raw_eq7 else softmax_straight_through_grad(guide, eq7)
        return grad_z, grad_coef, grad_guide, None


def basis_mix(z: Tensor, coef: Tensor, guide: Tensor, *, raw_eq7: bool = False) -> Tensor:
    """Per-pixel mix of basis outputs by the pixel's region coefficients (see module docstring).

    z (B, r*O, Ho, Wo); coef (B, m, r); guide (B, m, Ho, Wo) -> (B, O, Ho, Wo). ``raw_eq7``: the guide's gradient
    is Eq.7 itself (B, m, Ho, Wo), not Eq.8's result (``facerec.nn.ops`` applies Eq.8 itself).
    """
    if z.dim() != 4 or coef.dim() != 3 or guide.dim() != 4:
        raise ValueError(f"expected z (B, r*O, Ho, Wo), coef (B, m, r), guide (B, m, Ho, Wo); got shapes "
                         f"{tuple(z.shape)}, {tuple(coef.shape)}, {tuple(guide.shape)}")
    batch, regions, bases = coef.shape
    if z.shape[0] != batch or z.shape[1] % bases != 0:
        raise ValueError(f"z shape {tuple(z.shape)} does not fit coef {tuple(coef.shape)}: expected "
                         f"(B={batch}, r*O with r={bases}, Ho, Wo)")
    expected = (batch, regions, z.shape[2], z.shape[3])
    if tuple(guide.shape) != expected:
        raise ValueError(f"guide must have shape {expected}, got {tuple(guide.shape)}")
    return _BasisMixFunction.apply(z, coef, guide, raw_eq7)


class _StraightThroughFunction(torch.autograd.Function):
    """Value of ``hard``; the incoming gradient goes unchanged to both ``hard`` and ``soft``."""

    @staticmethod
    def forward(ctx, hard, soft):
        ctx.soft_dtype = soft.dtype
        return hard.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.to(ctx.soft_dtype)


def basis_pointwise(x: Tensor, basis_weight: Tensor, coef: Tensor, guide: Tensor, stride=(1, 1)) -> Tensor:
    """Input-side dense-basis DRConv for 1x1 kernels (see module docstring).

    x (B, C, H, W); basis_weight (r*O, C, 1, 1) (block t is B_t); coef (B, m, r); guide (B, m, Ho, Wo)
    -> (B, O, Ho, Wo).
    """
    batch, regions, bases = coef.shape
    if basis_weight.dim() != 4 or basis_weight.shape[2:] != (1, 1) or basis_weight.shape[0] % bases != 0:
        raise ValueError(f"basis_weight must be (r*O, C, 1, 1) with r={bases}, got {tuple(basis_weight.shape)}")
    if stride != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    expected = (batch, regions, x.shape[2], x.shape[3])
    if tuple(guide.shape) != expected:
        raise ValueError(f"guide must have shape {expected}, got {tuple(guide.shape)}")
    out_channels, channels = basis_weight.shape[0] // bases, basis_weight.shape[1]
    mask = guided_mask(guide)
    hard = _pixel_coefficients(coef, mask)
    if torch.is_grad_enabled() and guide.requires_grad:
        work = torch.promote_types(guide.dtype, torch.float32)
        soft = torch.softmax(guide.to(work), dim=1).flatten(2)
        soft_coef = torch.bmm(coef.detach().to(work).transpose(1, 2), soft).view_as(hard)
        pixel_coef = _StraightThroughFunction.apply(hard, soft_coef).to(x.dtype)
    else:
        pixel_coef = hard.to(x.dtype)
    # One 1x1 conv over r*C channels on pixel rows (channels_last memory: oneDNN runs this GEMM about twice
    # as fast as torch.mm on CPU).
    height, width = x.shape[2], x.shape[3]
    rows = x.permute(0, 2, 3, 1).unsqueeze(3)
    scaled = (pixel_coef.permute(0, 2, 3, 1).unsqueeze(-1) * rows).reshape(batch, height, width,
                                                                          bases * channels)
    weight = basis_weight.view(bases, out_channels, channels).transpose(0, 1).reshape(
        out_channels, bases * channels, 1, 1)
    return F.conv2d(scaled.permute(0, 3, 1, 2), weight.to(scaled.dtype))
