"""region_conv2d against float64 loop references: forward, input/filter gradients, Eq.7-8 guide gradient."""
import pytest
import torch
import torch.nn.functional as F

from facerec.nn.functional import region_conv2d
from nn_reference import all_region_outputs, loop_forward, reference_region_conv

# (B, C, O, H, W, m, k, stride, padding, dilation)
SHAPES = [
    (2, 3, 4, 5, 6, 3, 1, 1, 0, 1),      # 1x1, non-square
    (2, 3, 4, 7, 6, 4, 3, 1, 1, 1),      # 3x3 same padding
    (2, 3, 5, 7, 8, 4, 3, 2, 1, 1),      # stride 2
    (1, 2, 5, 9, 8, 2, 3, 1, 2, 2),      # B = 1, dilation 2
    (3, 4, 2, 6, 5, 1, 1, 2, 0, 1),      # m = 1, 1x1 stride 2
    (2, 4, 8, 6, 6, 16, 1, 1, 0, 1),     # m = 16 (aligned float32 sizes)
    (2, 3, 4, 6, 7, 3, 2, 1, 1, 1),      # even kernel, padding
]


def _make(shape, dtype=torch.float64, seed=0):
    batch, channels, out_channels, height, width, regions, k, stride, padding, dilation = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, dtype=dtype, generator=gen)
    w = torch.randn(batch, regions, out_channels, channels, k, k, dtype=dtype, generator=gen)
    out_h = (height + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    g = torch.randn(batch, regions, out_h, out_w, dtype=dtype, generator=gen)
    return x, w, g, (stride, padding, dilation)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_all_gradients_match_reference(shape):
    x, w, g, geo = _make(shape)
    x.requires_grad_(), w.requires_grad_(), g.requires_grad_()
    y = region_conv2d(x, w, g, *geo)
    y_ref = reference_region_conv(x, w, g, *geo)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.detach(), loop_forward(x.detach(), w.detach(), g.detach(), *geo),
                               rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, g), grad_out)
    grads_ref = torch.autograd.grad(y_ref, (x, w, g), grad_out)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_guide_gradient_is_paper_eq7_eq8():
    x, w, g, geo = _make((2, 3, 4, 6, 5, 5, 3, 1, 1, 1))
    g.requires_grad_()
    y = region_conv2d(x, w, g, *geo)
    grad_out = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, g, grad_out)
    outs = all_region_outputs(x, w, *geo)                       # (B, m, O, Ho, Wo): W_j * X
    eq7 = (grad_out.unsqueeze(1) * outs).sum(2)                  # <dL/dY_p, (W_j * X)_p>
    soft = torch.softmax(g.detach(), 1)                          # Eq.6
    eq8 = soft * (eq7 - (soft * eq7).sum(1, keepdim=True))       # Eq.8
    torch.testing.assert_close(got, eq8, rtol=1e-10, atol=1e-12)
    assert got.abs().max() > 1e-3


def test_region_nobody_picks_gets_zero_filter_gradient():
    x, w, g, geo = _make((2, 3, 4, 5, 5, 4, 1, 1, 0, 1))
    g[:, 2] = -50.0
    w.requires_grad_()
    y = region_conv2d(x, w, g, *geo)
    (gw,) = torch.autograd.grad(y.sum(), w)
    assert torch.all(gw[:, 2] == 0)
    assert gw[:, [0, 1, 3]].abs().sum() > 0
    y_ref = reference_region_conv(x, w.detach(), g, *geo)
    torch.testing.assert_close(y.detach(), y_ref, rtol=1e-12, atol=1e-12)


def test_single_region_is_per_sample_dynamic_conv():
    x, w, g, _ = _make((3, 4, 5, 6, 6, 1, 3, 1, 1, 1))
    g.requires_grad_()
    y = region_conv2d(x, w, g, 1, 1, 1)
    want = torch.cat([F.conv2d(x[b:b + 1], w[b, 0], padding=1) for b in range(3)])
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    (gg,) = torch.autograd.grad(y.sum(), g)
    assert torch.all(gg == 0)


def test_ties_go_to_lowest_index():
    x, w, _, _ = _make((1, 2, 3, 3, 3, 3, 1, 1, 0, 1))
    g = torch.zeros(1, 3, 3, 3, dtype=torch.float64)
    g[:, 1:] = 1.0                                               # regions 1 and 2 tie everywhere
    y = region_conv2d(x, w, g)
    torch.testing.assert_close(y, F.conv2d(x, w[0, 1]), rtol=1e-12, atol=1e-12)


def test_gradcheck_input_and_filters_with_fixed_mask():
    x, w, g, geo = _make((2, 2, 2, 5, 4, 3, 3, 2, 1, 1))
    x.requires_grad_(), w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: region_conv2d(a, b, g, *geo), (x, w), fast_mode=True)
    x1, w1, g1, _ = _make((2, 3, 2, 4, 4, 2, 1, 1, 0, 1))
    x1.requires_grad_(), w1.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: region_conv2d(a, b, g1), (x1, w1))


@pytest.mark.parametrize("channels,out_channels", [(4, 8), (3, 5)])   # grouped-GEMM path and padded fallback
def test_float32_matches_float64(channels, out_channels):
    x, w, g, geo = _make((2, channels, out_channels, 6, 6, 4, 1, 1, 0, 1))
    x.requires_grad_(), w.requires_grad_(), g.requires_grad_()
    y = region_conv2d(x, w, g)
    y.backward(torch.ones_like(y))
    x32, w32, g32 = (t.detach().float().requires_grad_() for t in (x, w, g))
    y32 = region_conv2d(x32, w32, g32)
    y32.backward(torch.ones_like(y32))
    torch.testing.assert_close(y32, y.float(), rtol=1e-4, atol=1e-4)
    for got, want in ((x32, x), (w32, w), (g32, g)):
        torch.testing.assert_close(got.grad, want.grad.float(), rtol=1e-4, atol=1e-4)


def test_channels_last_and_non_contiguous_input():
    x, w, g, geo = _make((2, 4, 8, 6, 6, 3, 3, 1, 1, 1), dtype=torch.float32)
    want = region_conv2d(x, w, g, *geo)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    got = region_conv2d(x_cl, w, g, *geo)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert x_cl.grad.shape == x.shape and torch.isfinite(x_cl.grad).all()
    wide = torch.randn(2, 4, 6, 12)
    sliced = wide[:, :, :, ::2]
    torch.testing.assert_close(region_conv2d(sliced, w, g, *geo), region_conv2d(sliced.contiguous(), w, g, *geo))
    x1, w1, g1, _ = _make((2, 4, 8, 6, 6, 3, 1, 1, 0, 1), dtype=torch.float32)
    y1 = region_conv2d(x1.contiguous(memory_format=torch.channels_last), w1, g1)
    assert y1.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y1, region_conv2d(x1, w1, g1))


def test_no_grad_and_bfloat16_autocast():
    x, w, g, geo = _make((2, 8, 8, 6, 6, 4, 1, 1, 0, 1), dtype=torch.float32)
    with torch.no_grad():
        want = region_conv2d(x, w, g)
    xs, ws, gs = (t.clone().requires_grad_() for t in (x, w, g))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = region_conv2d(xs, ws, gs)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want, rtol=5e-2, atol=5e-2)
    y.float().sum().backward()
    for t in (xs, ws, gs):
        assert t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()


def test_errors_name_expected_and_received():
    x, w, g, _ = _make((2, 3, 4, 5, 5, 3, 1, 1, 0, 1))
    with pytest.raises(ValueError, match="4-D"):
        region_conv2d(x[0], w, g)
    with pytest.raises(ValueError, match=r"C=5, kh, kw\)"):
        region_conv2d(torch.randn(2, 5, 5, 5, dtype=torch.float64), w, g)
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 5\), got \(2, 3, 4, 5\)"):
        region_conv2d(x, w, g[:, :, :4])
    with pytest.raises(ValueError, match="at least one region"):
        region_conv2d(x, w[:, :0], g[:, :0])
    with pytest.raises(ValueError, match="6-D"):
        region_conv2d(x, w[0], g)
    with pytest.raises(TypeError, match="share a dtype"):
        region_conv2d(x, w.float(), g)
