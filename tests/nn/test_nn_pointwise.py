"""create_pointwise_conv kinds, CondConv2d and LocallyConnected2d against loop references."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facerec.nn import (POINTWISE_KINDS, CondConv2d, DRConv2d, LocallyConnected2d, create_pointwise_conv,
                        pointwise_factory)

KIND_KW = {"standard": {}, "drconv": {}, "condconv": {}, "local": {"input_size": (6, 6)}}


@pytest.mark.parametrize("kind", POINTWISE_KINDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_kind_every_parameter_gets_finite_gradient(kind, stride):
    torch.manual_seed(0)
    layer = create_pointwise_conv(kind, 8, 12, stride=stride, **KIND_KW[kind])
    x = torch.randn(3, 8, 6, 6, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 12, 6 // stride, 6 // stride)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not any(n.endswith("bias") and p.requires_grad for n, p in layer.named_parameters()
                   if not n.startswith(("guide", "filter_generator", "routing")))


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_drconv_kind_passes_keywords(generator):
    layer = create_pointwise_conv("drconv", 8, 8, regions=4, generator=generator, external_guide=True)
    assert isinstance(layer, DRConv2d) and layer.regions == 4 and layer.generator == generator
    assert layer.guide is None
    y = layer(torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5))
    assert y.shape == (2, 8, 5, 5)


def test_factory_errors():
    with pytest.raises(ValueError, match="standard, drconv, condconv, local"):
        create_pointwise_conv("dynamic", 4, 4)
    with pytest.raises(TypeError, match="regions"):
        create_pointwise_conv("standard", 4, 4, regions=8)
    with pytest.raises(ValueError, match="input_size"):
        create_pointwise_conv("local", 4, 4)


def test_pointwise_factory_fixes_keywords_and_takes_layer_ones():
    drconv = pointwise_factory("drconv", regions=4, generator="basis")
    assert drconv.accepts_guide and drconv.regions == 4
    layer = drconv(8, 6, input_size=(5, 5), external_guide=True)
    assert isinstance(layer, DRConv2d) and layer.guide is None and layer.generator == "basis"
    assert drconv(8, 6, input_size=(5, 5)).guide is not None
    local = pointwise_factory("local")
    assert not local.accepts_guide and local.regions is None
    assert local(8, 6, input_size=(5, 4)).input_size == (5, 4)
    with pytest.raises(ValueError, match="external_guide=True needs kind 'drconv'"):
        local(8, 6, input_size=(5, 4), external_guide=True)
    with pytest.raises(TypeError, match="input_size"):
        pointwise_factory("local", input_size=(5, 4))
    with pytest.raises(TypeError, match="allowed for this kind: experts"):
        pointwise_factory("condconv", regions=8)
    with pytest.raises(ValueError, match="valid kinds"):
        pointwise_factory("dynamic")


def test_condconv_matches_loop_reference():
    torch.manual_seed(0)
    layer = CondConv2d(4, 5, 3, stride=2, padding=1, experts=3, bias=True).double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    y = layer(x)
    for b in range(2):
        route = torch.sigmoid(layer.routing(x[b].mean((1, 2))))
        weight = (route.view(-1, 1, 1, 1, 1) * layer.weight).sum(0)
        bias = (route.view(-1, 1) * layer.bias).sum(0)
        torch.testing.assert_close(y[b:b + 1], F.conv2d(x[b:b + 1], weight, bias, 2, 1), rtol=1e-12, atol=1e-12)


def test_local_conv_matches_loop_reference():
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, 3, stride=1, padding=1, input_size=(5, 4), bias=True).double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y = layer(x)
    padded = F.pad(x, (1, 1, 1, 1))
    for u in range(5):
        for v in range(4):
            patch = padded[:, :, u:u + 3, v:v + 3].reshape(2, -1)
            want = patch @ layer.weight[u * 4 + v].t() + layer.bias[:, u, v]
            torch.testing.assert_close(y[:, :, u, v], want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"input_size=\(5, 4\)"):
        layer(torch.randn(2, 3, 6, 4, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["condconv", "local"])
def test_comparators_start_at_conv_scale(kind):
    torch.manual_seed(0)
    x = torch.randn(4, 64, 8, 8)
    conv = nn.Conv2d(64, 96, 1, bias=False)
    layer = create_pointwise_conv(kind, 64, 96, **({"input_size": (8, 8)} if kind == "local" else {}))
    with torch.no_grad():
        ratio = (layer(x).std() / conv(x).std()).item()
    assert 0.75 < ratio < 1.33
