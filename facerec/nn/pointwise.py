"""create_pointwise_conv: the one place where a string becomes a 1x1 conv class (DRConv paper Table 1/2 rows).

Kinds and their extra keywords (anything else raises TypeError naming the allowed ones):

* "standard": nn.Conv2d(in, out, 1, stride, bias=bias). No extra keywords.
* "drconv": DRConv2d (regions=8, generator="paper", external_guide=False, hidden_channels=None,
  num_bases=4, basis_path="auto").
* "condconv": CondConv2d (experts=8).
* "local": LocallyConnected2d (input_size=(H, W), required).

All kinds share ``create_pointwise_conv(kind, in_channels, out_channels, *, stride=1, bias=False, **kw)`` and
map (B, in, H, W) -> (B, out, H/stride, W/stride). DRConv2d with external_guide=True is called as
``conv(x, guide_feature)``; every other kind as ``conv(x)``.
"""
from __future__ import annotations

from torch import nn

from facerec.nn.condconv import CondConv2d
from facerec.nn.drconv import DRConv2d
from facerec.nn.local_conv import LocallyConnected2d

__all__ = ["POINTWISE_KINDS", "create_pointwise_conv"]

POINTWISE_KINDS = ("standard", "drconv", "condconv", "local")

_KIND_KEYWORDS = {
    "standard": (),
    "drconv": ("regions", "generator", "external_guide", "hidden_channels", "num_bases", "basis_path"),
    "condconv": ("experts",),
    "local": ("input_size",),
}


def create_pointwise_conv(kind: str, in_channels: int, out_channels: int, *, stride=1, bias: bool = False,
                          **kw) -> nn.Module:
    """Build a 1x1 convolution of the given kind (see the module docstring for kind-specific keywords)."""
    if kind not in POINTWISE_KINDS:
        raise ValueError(f"unknown pointwise kind {kind!r}; valid kinds: {', '.join(POINTWISE_KINDS)}")
    unknown = sorted(set(kw) - set(_KIND_KEYWORDS[kind]))
    if unknown:
        allowed = ", ".join(_KIND_KEYWORDS[kind]) or "none"
        raise TypeError(f"create_pointwise_conv(kind={kind!r}) got unexpected keywords {unknown}; "
                        f"allowed for this kind: {allowed}")
    if kind == "standard":
        return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
    if kind == "drconv":
        regions = kw.pop("regions", 8)
        generator = kw.pop("generator", "paper")
        return DRConv2d(in_channels, out_channels, 1, stride, 0, 1, regions, generator, bias=bias, **kw)
    if kind == "condconv":
        return CondConv2d(in_channels, out_channels, 1, stride, bias=bias, **kw)
    return LocallyConnected2d(in_channels, out_channels, 1, stride, bias=bias, **kw)
