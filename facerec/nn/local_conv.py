"""LocallyConnected2d: convolution with unshared weights per output position (paper Eq.2), the DRConv
paper's Table 2 comparator (Local-MobileFaceNet).

Needs the input spatial size at construction (``input_size=(H, W)``): it owns one filter per output pixel.
Initialisation: every position's filter is drawn like a default nn.Conv2d (U(+-1/sqrt(fan_in))).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerec.nn.functional import _output_size, _pair

__all__ = ["LocallyConnected2d"]


class LocallyConnected2d(nn.Module):
    """Unshared convolution.

    Args: as nn.Conv2d (no groups), plus ``input_size`` (H, W) (required).
    Shapes: x (B, C, H, W) -> (B, O, Ho, Wo). Parameters: ``weight`` (Ho*Wo, O, C*kh*kw), ``bias`` (O, Ho, Wo).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 *, input_size=None, bias: bool = False) -> None:
        super().__init__()
        if input_size is None:
            raise ValueError("LocallyConnected2d needs input_size=(H, W): it owns one filter per output pixel")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size = _pair(input_size, "input_size")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.output_size = tuple(_output_size(s, k, st, p, d) for s, k, st, p, d in zip(
            self.input_size, self.kernel_size, self.stride, self.padding, self.dilation))
        if min(self.output_size) < 1:
            raise ValueError(f"input_size {self.input_size} is too small for kernel_size {self.kernel_size}")
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        pixels = self.output_size[0] * self.output_size[1]
        self.weight = nn.Parameter(torch.empty(pixels, out_channels, fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels, *self.output_size)) if bias else None
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"LocallyConnected2d expects (B, {self.in_channels}, H, W), got {shape}")
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"LocallyConnected2d was built for input_size={self.input_size}, got spatial size "
                             f"{tuple(x.shape[2:])}")
        batch = x.shape[0]
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            cols = x[:, :, ::self.stride[0], ::self.stride[1]].reshape(batch, self.in_channels, -1)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        # (L, B, Ck) @ (L, Ck, O) -> (L, B, O)
        out = torch.bmm(cols.permute(2, 0, 1), self.weight.to(cols.dtype).transpose(1, 2))
        out = out.permute(1, 2, 0).reshape(batch, self.out_channels, *self.output_size)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, input_size={self.input_size}")
