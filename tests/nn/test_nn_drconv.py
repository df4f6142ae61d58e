"""DRConv2d: generators, dense-basis paths against the gathered path, init scale, external guide, hooks."""
import pytest
import torch
from torch import nn

from facerec.nn import DRConv2d, guide_modules
from facerec.nn.functional import region_conv2d
from facerec.nn.paths import select_path
from nn_reference import reference_region_conv


def _grads(layer, x, guide_feature=None):
    x = x.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x) if guide_feature is None else layer(x, guide_feature)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("dense", ["dense_pointwise", "dense_mix"])
@pytest.mark.parametrize("in_channels,out_channels,stride", [(4, 6, 1), (6, 4, 1), (4, 6, 2), (6, 4, 2)])
def test_basis_dense_paths_equal_gathered_path(in_channels, out_channels, stride, dense):
    torch.manual_seed(0)
    layer = DRConv2d(in_channels, out_channels, 1, stride, regions=3, generator="basis", num_bases=4, init="spread",
                     path="gather").double()
    x = torch.randn(2, in_channels, 6, 5, dtype=torch.float64)
    want = _grads(layer, x)
    layer.path = dense
    got = _grads(layer, x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-10, atol=1e-12, msg=name)
    assert want[2]["guide.weight"].abs().max() > 1e-6


def test_basis_dense_3x3_equals_gathered_path():
    torch.manual_seed(1)
    layer = DRConv2d(3, 5, 3, 2, 1, regions=4, generator="basis", num_bases=3, path="gather",
                     init="spread").double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    want = _grads(layer, x)
    layer.path = "dense_mix"
    got = _grads(layer, x)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_layer_matches_reference_built_from_its_parts(generator):
    torch.manual_seed(2)
    layer = DRConv2d(4, 5, 3, 1, 1, regions=3, generator=generator, bias=True, init="spread").double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    want = reference_region_conv(x, layer.filter_generator(x), layer.guide(x), 1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    params = [x] + list(layer.parameters())
    for got, ref in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("init", ["static", "spread"])
@pytest.mark.parametrize("generator", ["paper", "basis"])
@pytest.mark.parametrize("in_channels,out_channels,k", [(64, 128, 1), (128, 32, 1), (16, 24, 3)])
def test_step0_output_scale_matches_default_conv(generator, in_channels, out_channels, k, init):
    ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randn(4, in_channels, 8, 8)
        conv = nn.Conv2d(in_channels, out_channels, k, padding=k // 2, bias=False)
        layer = DRConv2d(in_channels, out_channels, k, padding=k // 2, generator=generator, init=init)
        with torch.no_grad():
            ratios.append((layer(x).std() / conv(x).std()).item())
            filters = layer.filter_generator(x)
            spread = filters.std(dim=1).mean() / filters.std()
        if init == "spread":
            assert spread > 0.2, f"regions start almost identical (spread {spread:.3f})"
        else:   # a static conv: every region and sample the same filter
            assert spread == 0 and torch.equal(filters, filters[:1, :1].expand_as(filters))
    mean_ratio = sum(ratios) / len(ratios)
    assert 0.8 < mean_ratio < 1.25, ratios


def test_external_guide_and_guide_modules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.guide = nn.Conv2d(4, 3, 1)
            self.expand = DRConv2d(4, 8, regions=3, external_guide=True, init="spread")
            self.project = DRConv2d(8, 4, regions=3, external_guide=True, generator="basis", init="spread")

        def forward(self, x):
            f = self.guide(x)
            return self.project(self.expand(x, f), f)

    model = nn.Sequential(DRConv2d(4, 4, regions=3, init="spread"), Block())
    assert model[1].expand.guide is None
    names = [name for name, _ in guide_modules(model)]
    assert names == ["0.guide", "1.guide"]
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model[1].guide.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="external_guide=True"):
        model[1].expand(x)
    with pytest.raises(ValueError, match="owns its guide"):
        model[0](x, torch.randn(2, 3, 5, 5))


def test_mask_hook_gives_region_index():
    layer = DRConv2d(4, 6, regions=5, init="spread")
    seen = []
    layer.guide.register_forward_hook(lambda mod, inp, out: seen.append(out.argmax(1)))
    layer(torch.randn(2, 4, 7, 7))
    assert seen[0].shape == (2, 7, 7) and int(seen[0].max()) < 5


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_eval_mode_backward_channels_last_and_batch_one(generator):
    layer = DRConv2d(8, 16, regions=4, generator=generator, init="spread").eval()
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    with torch.no_grad():
        torch.testing.assert_close(layer(x.contiguous()), y.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("generator,path,k", [("paper", "auto", 1), ("basis", "gather", 1),
                                              ("basis", "dense_pointwise", 1), ("basis", "dense_mix", 3)])
def test_autocast_layer(dtype, generator, path, k):
    torch.manual_seed(0)
    layer = DRConv2d(8, 16, k, padding=k // 2, regions=4, generator=generator, path=path, init="spread")
    x = torch.randn(2, 8, 6, 6)
    masks = []
    layer.guide.register_forward_hook(lambda mod, inp, out: masks.append(out.argmax(1)))
    with torch.no_grad():
        want = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    same = (masks[0] == masks[1]).unsqueeze(1).expand_as(want)    # low precision may flip near-tied pixels
    assert same.float().mean() > 0.9
    torch.testing.assert_close(y.float()[same], want[same], rtol=0.1, atol=0.1)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_constructor_and_forward_errors():
    with pytest.raises(ValueError, match="paper, basis"):
        DRConv2d(4, 4, generator="cond")
    with pytest.raises(ValueError, match="regions"):
        DRConv2d(4, 4, regions=0)
    with pytest.raises(ValueError, match="multiple of regions"):
        DRConv2d(4, 4, regions=3, hidden_channels=4)
    layer = DRConv2d(4, 4)
    with pytest.raises(ValueError, match="4 input channels, got 3"):
        layer(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        layer(torch.randn(4, 4, 4))


def test_forward_uses_one_filter_per_pixel():
    """The gathered forward does about one conv of MACs, not m (checked with the flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 16, 8, 8)
    w = torch.randn(2, 8, 32, 16, 1, 1)
    g = torch.randn(2, 8, 8, 8)
    with FlopCounterMode(display=False) as counter:
        region_conv2d(x, w, g)
    conv_flops = 2 * 2 * 16 * 32 * 64
    assert counter.get_total_flops() <= 1.01 * conv_flops


def test_grouped_pointwise_conv_equals_nn_conv2d():
    from facerec.nn.generators import GroupedPointwiseConv

    torch.manual_seed(0)
    fast = GroupedPointwiseConv(6, 12, groups=3).double()
    ref = nn.Conv2d(6, 12, 1, groups=3).double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    y, y_ref = fast(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, [x, *fast.parameters()], g),
                         torch.autograd.grad(y_ref, [x, *ref.parameters()], g)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_auto_basis_path_choice():
    few = DRConv2d(8, 8, regions=8, generator="basis", num_bases=4)
    many = DRConv2d(8, 8, regions=8, generator="basis", num_bases=8)
    x = torch.zeros(1, 8, 1, 1, dtype=torch.float64)                     # float64: never the fused kernel

    def dense(layer, pixels):
        return select_path(layer.facts, x, pixels) in ("dense_pointwise", "dense_mix")

    assert dense(few, 7 * 7) and dense(many, 14 * 14)
    assert dense(few, 56 * 56) and not dense(many, 56 * 56)
    with torch.no_grad():
        assert not dense(few, 56 * 56) and dense(few, 7 * 7)
    assert not dense(DRConv2d(8, 8, generator="paper"), 7 * 7)


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_static_init_trains_regions_apart_and_guide_gets_gradient(generator):
    # init="static": the layer starts as a conv, so the first mask gradient is exactly zero (all g_j equal);
    # one SGD step on the filters separates the regions and the guide then receives a gradient.
    torch.manual_seed(0)
    layer = DRConv2d(16, 24, 1, generator=generator).double()
    x = torch.randn(4, 16, 6, 6, dtype=torch.float64)
    target = torch.randn(4, 24, 6, 6, dtype=torch.float64)
    ((layer(x) - target) ** 2).mean().backward()
    assert layer.guide.weight.grad.abs().max() < 1e-12
    with torch.no_grad():
        for p in layer.filter_generator.parameters():
            p -= 0.5 * p.grad
    layer.zero_grad()
    ((layer(x) - target) ** 2).mean().backward()
    assert layer.guide.weight.grad.abs().max() > 1e-6


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_step0_region_filters_start_correlated(generator):
    # Independent random filters per region make every mask flip swap a pixel to an unrelated filter; with the
    # paper generator this stalled DRConv-MobileFaceNet's training from scratch. Regions must start similar
    # (yet differ, see the spread check above).
    torch.manual_seed(0)
    layer = DRConv2d(64, 128, 1, generator=generator, init="spread")
    with torch.no_grad():
        filters = layer.filter_generator(torch.randn(4, 64, 8, 8)).flatten(2)  # (B, m, O*C)
        unit = filters / filters.norm(dim=2, keepdim=True)
        cos = unit @ unit.transpose(1, 2)
        m = cos.shape[1]
        off_diag = (cos.sum(dim=(1, 2)) - m) / (m * (m - 1))
    assert off_diag.min() > 0.7, f"{generator}: mean cosine between region filters {off_diag.tolist()}"
