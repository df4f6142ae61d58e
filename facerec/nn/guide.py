"""The guide of DRConv (Chen et al., CVPR 2021, section 3.2): the conv whose output F gives the guided mask.

``GuideConv`` is an ``nn.Conv2d`` (C -> m regions) whose forward can add two training aids; a forward hook on it
yields the F the layer uses, so ``argmax_j F[:, j]`` is the mask (``guide_modules`` finds it by name):

* ``norm=True``: a ``BatchNorm2d(m, affine=False)`` on the conv output. Why: the guide is the only conv of a
  DRConv network without a normalisation after it, and the paper's straight-through gradient (Eq.7-8) has no
  term that holds its weights' scale. Measured on real faces (``benchmarks/drconv_dynamics.py``,
  docs/drconv-training.md): at lr 0.1 the guide logits' top-1/top-2 gap grew from ~0.5 to 450 in 10 SGD steps
  and to 2e4 by step 20, 80-90% of the pixels changed region every 10 steps, one region took 80% of the
  pixels, and the whole network's gradients blew up while the loss stayed at its start value. With the norm the
  logits keep unit scale per region and the guide's weights are scale-invariant, as every other conv's are.
  The mask is still the argmax of an affine map of the input: in eval mode the norm folds into the conv (a
  per-region scale and bias), so the inference model is the paper's "standard convolution" guide.
* ``grad_scale``: multiplies the gradient reaching F (the official code's ``beta``); with SGD it scales the
  guide's learning rate, so masks move slower than the filters they select.

Shapes: (B, C, H, W) -> F (B, m, Ho, Wo).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GuideConv"]


class _GradScaleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class GuideConv(nn.Conv2d):
    """nn.Conv2d(in_channels, regions, kernel_size, stride, padding, dilation, bias=False) [+ BN] [+ grad scale].

    Args: as nn.Conv2d, plus ``norm`` (BatchNorm2d(regions, affine=False) after the conv) and ``grad_scale``
    (> 0; the gradient reaching the guided feature is multiplied by it).
    """

    def __init__(self, in_channels: int, regions: int, kernel_size=1, stride=1, padding=0, dilation=1, *,
                 norm: bool = True, grad_scale: float = 1.0) -> None:
        super().__init__(in_channels, regions, kernel_size, stride, padding, dilation, bias=False)
        if not isinstance(grad_scale, (int, float)) or isinstance(grad_scale, bool) or not grad_scale > 0:
            raise ValueError(f"guide grad_scale must be a number > 0, got {grad_scale!r}")
        self.norm = nn.BatchNorm2d(regions, affine=False) if norm else None
        self.grad_scale = float(grad_scale)

    def forward(self, x: Tensor) -> Tensor:
        f = super().forward(x)
        if self.norm is not None:
            f = self.norm(f)
        if self.grad_scale != 1.0 and f.requires_grad:
            f = _GradScaleFunction.apply(f, self.grad_scale)
        return f

    def extra_repr(self) -> str:
        return super().extra_repr() + f", norm={self.norm is not None}, grad_scale={self.grad_scale}"
