"""create_pointwise_conv: the one place where a string becomes a 1x1 conv class (DRConv paper Table 1/2 rows).

Kinds and their extra keywords (anything else raises TypeError naming the allowed ones):

* "standard": nn.Conv2d(in, out, 1, stride, bias=bias). No extra keywords.
* "drconv": DRConv2d (regions=8, generator="paper", external_guide=False, hidden_channels=None,
  num_bases=4, path="auto", guide_norm=True, guide_grad_scale=1.0, init="static").
* "condconv": CondConv2d (experts=8).
* "local": LocallyConnected2d (input_size=(H, W), required).

All kinds share ``create_pointwise_conv(kind, in_channels, out_channels, *, stride=1, bias=False, **kw)`` and
map (B, in, H, W) -> (B, out, H/stride, W/stride). DRConv2d with external_guide=True is called as
``conv(x, guide_feature)``; every other kind as ``conv(x)``.

Blocks that hold several 1x1 convs (``facerec.models.Bottleneck``) take a ``PointwiseFactory``: the kind and
its keywords fixed once (validated when the factory is made), called per layer with the channel counts, the
layer's input grid (needed by "local") and whether the block supplies the guided feature (``external_guide``,
"drconv" only). ``pointwise_factory(kind, **kw)`` is the only way a model turns a kind name into layers.
"""
from __future__ import annotations

from typing import Tuple

from torch import nn

from facerec.nn.condconv import CondConv2d
from facerec.nn.drconv import DRConv2d
from facerec.nn.local_conv import LocallyConnected2d

__all__ = ["POINTWISE_KINDS", "PointwiseFactory", "create_pointwise_conv", "pointwise_factory"]

POINTWISE_KINDS = ("standard", "drconv", "condconv", "local")

_KIND_KEYWORDS = {
    "standard": (),
    "drconv": ("regions", "generator", "external_guide", "hidden_channels", "num_bases", "path", "guide_norm",
               "guide_grad_scale", "init"),
    "condconv": ("experts",),
    "local": ("input_size",),
}


def _check(kind: str, kw, allowed, caller: str) -> None:
    if kind not in POINTWISE_KINDS:
        raise ValueError(f"unknown pointwise kind {kind!r}; valid kinds: {', '.join(POINTWISE_KINDS)}")
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(f"{caller}(kind={kind!r}) got unexpected keywords {unknown}; "
                        f"allowed for this kind: {', '.join(allowed) or 'none'}")


def create_pointwise_conv(kind: str, in_channels: int, out_channels: int, *, stride=1, bias: bool = False,
                          **kw) -> nn.Module:
    """Build a 1x1 convolution of the given kind (see the module docstring for kind-specific keywords)."""
    _check(kind, kw, _KIND_KEYWORDS[kind] if kind in _KIND_KEYWORDS else (), "create_pointwise_conv")
    if kind == "standard":
        return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
    if kind == "drconv":
        regions = kw.pop("regions", 8)
        generator = kw.pop("generator", "paper")
        return DRConv2d(in_channels, out_channels, 1, stride, 0, 1, regions, generator, bias=bias, **kw)
    if kind == "condconv":
        return CondConv2d(in_channels, out_channels, 1, stride, bias=bias, **kw)
    return LocallyConnected2d(in_channels, out_channels, 1, stride, bias=bias, **kw)


class PointwiseFactory:
    """A pointwise kind with its keywords fixed: ``factory(in_channels, out_channels, input_size=(H, W),
    external_guide=False)`` builds one bias-free 1x1 conv (stride 1) mapping (B, in, H, W) -> (B, out, H, W).

    Attributes: ``kind``; ``accepts_guide`` (True for "drconv": the layer can take the guided feature from its
    block); ``regions`` (m of a "drconv" factory, else None); ``guide_kwargs`` (``norm`` and ``grad_scale`` of a
    block-owned GuideConv for "drconv", else None). Build it with ``pointwise_factory``.
    """

    def __init__(self, kind: str, kw) -> None:
        self.kind = kind
        self.kwargs = dict(kw)
        self.accepts_guide = kind == "drconv"
        self.regions = int(self.kwargs.get("regions", 8)) if self.accepts_guide else None
        # Keywords of a block-owned guide (facerec.nn.GuideConv) shared by this kind's layers.
        self.guide_kwargs = ({"norm": bool(self.kwargs.get("guide_norm", True)),
                              "grad_scale": float(self.kwargs.get("guide_grad_scale", 1.0))}
                             if self.accepts_guide else None)

    def __call__(self, in_channels: int, out_channels: int, *, input_size: Tuple[int, int],
                 external_guide: bool = False) -> nn.Module:
        kw = dict(self.kwargs)
        if self.kind == "local":
            kw["input_size"] = tuple(input_size)
        if external_guide:
            if not self.accepts_guide:
                raise ValueError(f"external_guide=True needs kind 'drconv', this factory builds {self.kind!r}")
            kw["external_guide"] = True
        return create_pointwise_conv(self.kind, in_channels, out_channels, bias=False, **kw)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"pointwise_factory({self.kind!r}{args})"


def pointwise_factory(kind: str, **kw) -> PointwiseFactory:
    """A ``PointwiseFactory`` for ``kind`` with the kind's keywords (as ``create_pointwise_conv``) fixed.

    The layer-dependent keywords are the factory call's: "local" takes ``input_size`` and "drconv"
    ``external_guide`` from the block, so they are rejected here (TypeError), as are keywords of other kinds.
    """
    allowed = tuple(k for k in _KIND_KEYWORDS.get(kind, ()) if k not in ("input_size", "external_guide"))
    _check(kind, kw, allowed, "pointwise_factory")
    return PointwiseFactory(kind, kw)
