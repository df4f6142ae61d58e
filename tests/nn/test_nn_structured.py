"""paper_region_conv2d (structured paper-generator DRConv) against float64 loop references, both Eq.7 paths."""
import pytest
import torch

import facerec.nn.functional as functional
import facerec.nn.structured as structured
from facerec.nn import DRConv2d, paths
from facerec.nn.structured import paper_region_conv2d
from nn_reference import loop_forward, reference_region_conv

# (B, C, O, H, W, m, t, stride)
SHAPES = [
    (2, 3, 4, 5, 6, 3, 1, 1),      # non-square, unaligned sizes (per-region loop GEMMs)
    (2, 8, 12, 6, 6, 4, 1, 2),     # stride 2, aligned float32 sizes (grouped GEMMs)
    (1, 4, 4, 5, 5, 2, 2, 1),      # B = 1, hidden width h = 2m (t = 2)
    (3, 4, 8, 4, 4, 1, 1, 1),      # m = 1
    (2, 4, 4, 7, 5, 16, 1, 1),     # m = 16 > pixels per sample: some regions unpicked
]


def _make(shape, dtype=torch.float64, seed=0):
    batch, channels, out_channels, height, width, regions, terms, stride = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, dtype=dtype, generator=gen)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    guide = torch.randn(batch, regions, out_h, out_w, dtype=dtype, generator=gen)
    coef = torch.rand(batch, regions, terms, dtype=dtype, generator=gen)
    static = torch.randn(regions, out_channels, channels, dtype=dtype, generator=gen)
    dynamic = torch.randn(regions, terms, out_channels, channels, dtype=dtype, generator=gen)
    return x, guide, coef, static, dynamic, stride


def _filters(coef, static, dynamic):
    """Materialised (B, m, O, C, 1, 1) filters, the reference's input."""
    return (static.unsqueeze(0) + (coef[..., None, None] * dynamic.unsqueeze(0)).sum(2))[..., None, None]


@pytest.mark.parametrize("eq7_path", ["stacked", "per_sample"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_all_gradients_match_reference(shape, eq7_path, monkeypatch):
    monkeypatch.setattr(paths, "STACKED_EQ7_MAX_PIXELS_PER_REGION", 10 ** 6 if eq7_path == "stacked" else 0)
    monkeypatch.setattr(structured, "FILTER_CHUNK_ELEMENTS", 64)          # several filter chunks per batch
    x, guide, coef, static, dynamic, stride = _make(shape)
    inputs = [t.requires_grad_() for t in (x, guide, coef, static, dynamic)]
    y = paper_region_conv2d(x, guide, coef, static, dynamic, stride)
    y_ref = reference_region_conv(x, _filters(coef, static, dynamic), guide, stride)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    filters = _filters(coef, static, dynamic).detach()
    torch.testing.assert_close(y.detach(), loop_forward(x.detach(), filters, guide.detach(), stride),
                               rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, grad_out)
    grads_ref = torch.autograd.grad(y_ref, inputs, grad_out)
    for name, got, want in zip(("input", "guide", "coef", "static", "dynamic"), grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11, msg=f"gradient of {name}")
        if not (name == "guide" and shape[5] == 1):              # one region: softmax Jacobian is 0
            assert got.abs().max() > 0, name


def test_float32_grouped_gemm_path_matches_float64():
    shape = (4, 16, 32, 7, 7, 8, 1, 1)
    x, guide, coef, static, dynamic, stride = _make(shape)
    inputs64 = [t.requires_grad_() for t in (x, guide, coef, static, dynamic)]
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    y64 = paper_region_conv2d(*inputs64, stride)
    y32 = paper_region_conv2d(*inputs32, stride)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    grad_out = torch.randn_like(y64)
    for got, want in zip(torch.autograd.grad(y32, inputs32, grad_out.float()),
                         torch.autograd.grad(y64, inputs64, grad_out)):
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)


def test_backward_never_builds_more_than_a_chunk_of_filters(monkeypatch):
    """Per-sample filters only in pieces of <= FILTER_CHUNK_ELEMENTS; none at all on the stacked path."""
    built = []
    original = functional.project_back

    def spy(batch, pixels, regions, out_channels, ck, filters_for, *args, **kw):
        def recording(start, stop):
            w = filters_for(start, stop)
            built.append(w.numel())
            return w
        return original(batch, pixels, regions, out_channels, ck, recording, *args, **kw)

    monkeypatch.setattr(structured, "project_back", spy)
    monkeypatch.setattr(structured, "FILTER_CHUNK_ELEMENTS", 2 * 8 * 4 * 4)
    shape = (5, 4, 4, 6, 6, 8, 1, 1)
    x, guide, coef, static, dynamic, stride = _make(shape)
    inputs = [t.requires_grad_() for t in (x, guide, coef, static, dynamic)]
    monkeypatch.setattr(paths, "STACKED_EQ7_MAX_PIXELS_PER_REGION", 0)
    paper_region_conv2d(*inputs, stride).sum().backward()
    assert built and max(built) <= 2 * 8 * 4 * 4 < 5 * 8 * 4 * 4
    built.clear()
    monkeypatch.setattr(paths, "STACKED_EQ7_MAX_PIXELS_PER_REGION", 10 ** 6)
    paper_region_conv2d(*inputs, stride).sum().backward()
    assert built == []


def test_layer_paths_agree_and_auto_rule(monkeypatch):
    torch.manual_seed(0)
    layer = DRConv2d(8, 12, 1, regions=4, generator="paper", init="spread").double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    calls = []
    monkeypatch.setattr("facerec.nn.drconv.paper_region_conv2d",
                        lambda *a, **k: calls.append(1) or paper_region_conv2d(*a, **k))
    y_auto = layer(x)                                            # 6x6 <= 14x14: structured
    assert calls == [1]
    layer.path = "gather"
    y_gather = layer(x)
    assert calls == [1]
    torch.testing.assert_close(y_auto, y_gather, rtol=1e-12, atol=1e-12)
    g_auto = torch.autograd.grad(y_auto.sum(), [x] + list(layer.parameters()))
    g_gather = torch.autograd.grad(y_gather.sum(), [x] + list(layer.parameters()))
    for a, b in zip(g_auto, g_gather):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    layer.path = "auto"
    layer(torch.randn(1, 8, 15, 15, dtype=torch.float64))        # 15x15 > 14x14: gathered
    assert calls == [1]


def test_errors():
    with pytest.raises(ValueError, match="path"):
        DRConv2d(4, 4, 1, path="fast")
    with pytest.raises(ValueError, match="1x1"):
        DRConv2d(4, 4, 3, padding=1, path="structured")
    x, guide, coef, static, dynamic, stride = _make((2, 3, 4, 5, 5, 3, 1, 1))
    with pytest.raises(ValueError, match="guide must have shape"):
        paper_region_conv2d(x, guide[:, :, :4], coef, static, dynamic)
    with pytest.raises(ValueError, match="do not fit"):
        paper_region_conv2d(x, guide, coef[:, :2], static, dynamic)
    with pytest.raises(TypeError, match="share a dtype"):
        paper_region_conv2d(x.float(), guide, coef, static, dynamic)
