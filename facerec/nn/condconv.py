"""CondConv2d: conditionally parameterised convolution (Yang et al., NeurIPS 2019), the DRConv paper's
Table 1/2 comparator.

Per sample, the kernel is ``sum_e r_e W_e`` over E expert kernels with routing ``r = sigmoid(Linear(GAP(x)))``.
The per-sample convolution runs as one grouped conv with the batch folded into the groups.
Initialisation: experts are drawn so that the mixed kernel at r ~ 0.5 has the std of a default nn.Conv2d.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerec.nn.functional import _pair

__all__ = ["CondConv2d"]


class CondConv2d(nn.Module):
    """Per-sample mixture-of-experts convolution.

    Args: as nn.Conv2d (no groups), plus ``experts`` (E, default 8).
    Shapes: x (B, C, H, W) -> (B, O, Ho, Wo).
    Submodules/parameters: ``routing`` nn.Linear(C, E); ``weight`` (E, O, C, kh, kw); ``bias`` (E, O) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 *, experts: int = 8, bias: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("experts", experts)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.in_channels, self.out_channels, self.experts = in_channels, out_channels, experts
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.routing = nn.Linear(in_channels, experts)
        self.weight = nn.Parameter(torch.empty(experts, out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(experts, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        # Mixed kernel = sum_e r_e W_e with r_e ~ 0.5: std(W_e) = conv_std / (0.5 sqrt(E)).
        bound = (1.0 / math.sqrt(fan_in)) / (0.5 * math.sqrt(self.experts))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"CondConv2d expects (B, {self.in_channels}, H, W), got {shape}")
        batch = x.shape[0]
        route = torch.sigmoid(self.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        weight = torch.matmul(route, self.weight.to(route.dtype).flatten(1))
        weight = weight.view(batch * self.out_channels, self.in_channels, *self.kernel_size)
        bias = None if self.bias is None else torch.matmul(route, self.bias.to(route.dtype)).flatten()
        grouped = x.reshape(1, batch * self.in_channels, *x.shape[2:])
        out = F.conv2d(grouped, weight.to(grouped.dtype), None if bias is None else bias.to(grouped.dtype),
                       self.stride, self.padding, self.dilation, groups=batch)
        return out.view(batch, self.out_channels, *out.shape[2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, experts={self.experts}")
