"""The fused CPU kernels (facerec/nn/kernels/fused_cpu.py, csrc/fused_region.cpp) against float64 references, and
their use by DRConv2d: inference and training paths, equal to the unfused paths, kernel cache invalidated by
updates. The build is the CPU's (AVX-512 or AVX2); a slow test runs this file again with the AVX2 build on an
AVX-512 CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import facerec.nn.kernels.fused_cpu as fused
from facerec.nn import DRConv2d, ops, paths, settings
from facerec.nn.functional import guided_mask

pytestmark = pytest.mark.skipif(not fused.built(), reason="the fused DRConv kernel is not built here (needs an "
                                                          "AVX-512 or AVX2 CPU, g++ and ninja; see the warning "
                                                          "logged by facerec.nn.kernels.fused_cpu)")


def fused_paper(input, guide, coef, static, dynamic, stride=(1, 1)):
    """The operator's fused implementation with the paper generator's structure (coef [1, s], kernels [A, V])."""
    unit = torch.cat([coef.new_ones(coef.shape[0], coef.shape[1], 1), coef], 2)
    return ops.region_conv(input, guide, unit, torch.cat([static.unsqueeze(1), dynamic], 1), stride, impl="fused")


def fused_basis(input, guide, routing, bases, stride=(1, 1)):
    """The operator's fused implementation with the basis generator's structure (kernels shared by all regions)."""
    return ops.region_conv(input, guide, routing, bases.unsqueeze(0), stride, impl="fused")


def _reference(x, guide, coef, kernels):
    """float64: y[b, :, p] = (sum_k coef[b, j, k] kernels[j, k]) @ x[b, :, p], j = argmax guide[b, :, p]."""
    batch, channels = x.shape[:2]
    filters = (coef[..., None, None] * kernels.unsqueeze(0)).sum(2)                      # (B, m, O, C)
    mask = guided_mask(guide).view(batch, -1)
    per_pixel = filters[torch.arange(batch)[:, None], mask]                             # (B, P, O, C)
    y = torch.einsum("bpoc,bcp->bop", per_pixel, x.reshape(batch, channels, -1))
    return y.view(batch, -1, *x.shape[2:])


# (B, C, O, H, W, m, T, stride): O = 50 (3 vectors + 2 scalar columns), 80 (a full 64-panel + 16), rows per
# region below and above the 6-row micro-step (T = 2 with <= 6 rows forms the filter in registers), m > pixels
# (unpicked regions), stride 2.
CASES = [(2, 8, 16, 5, 6, 3, 1, 1), (3, 24, 80, 7, 7, 4, 2, 1), (2, 13, 50, 9, 9, 3, 3, 2),
         (1, 16, 64, 12, 12, 1, 2, 1), (2, 8, 32, 3, 2, 16, 2, 1), (4, 8, 50, 3, 3, 4, 2, 1),
         (2, 200, 144, 4, 4, 2, 2, 1)]                      # C > 128: K in blocks of 128, with a remainder


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_region_forward_matches_float64(case, channels_last):
    batch, channels, out_channels, height, width, regions, terms, stride = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, dtype=torch.float64, generator=gen)
    xs = x[:, :, ::stride, ::stride]
    guide = torch.randn(batch, regions, *xs.shape[2:], dtype=torch.float64, generator=gen)
    coef = torch.rand(batch, regions, terms, dtype=torch.float64, generator=gen)
    kernels = torch.randn(regions, terms, out_channels, channels, dtype=torch.float64, generator=gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x32 = x.float().contiguous(memory_format=fmt)[:, :, ::stride, ::stride]
    packed = fused.pack_kernels(kernels.float().transpose(2, 3).flatten(0, 1)).view(regions, terms, -1)
    y = fused.region_forward(x32, guide.float(), coef.float(), packed, out_channels)
    assert y.shape == (batch, out_channels, *xs.shape[2:])
    torch.testing.assert_close(y.double(), _reference(xs, guide.float().double(), coef.float().double(),
                                                      kernels.float().double()), rtol=1e-4, atol=1e-4)


def test_region_forward_mask_ties_nan_and_shared_kernels():
    """First maximum wins ties, NaN counts as the largest (torch.argmax); kernels shared across regions through
    a stride-0 first dim (the basis generator's layout)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 4, 4, generator=gen)
    guide = torch.zeros(2, 3, 4, 4)
    guide[0, 2, 0, 0] = float("nan")
    guide[1, 1, 1, 1] = 5.0
    coef = torch.rand(2, 3, 2, generator=gen)
    bases = torch.randn(2, 8, 16, generator=gen)                                       # (r, C, O)
    y = fused.region_forward(x, guide, coef, fused.pack_kernels(bases).unsqueeze(0).expand(3, -1, -1), 16)
    mask = guided_mask(guide)
    assert mask[0, 0, 0] == 2 and mask[1, 1, 1] == 1 and mask[0, 3, 3] == 0
    want = _reference(x.double(), guide.double(), coef.double(),
                      bases.transpose(1, 2).unsqueeze(0).expand(3, -1, -1, -1).double())
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = fused.region_forward

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(fused, "region_forward", counting)
    return calls


@pytest.mark.parametrize("generator,stride,size", [("paper", 1, 6), ("paper", 2, 9), ("basis", 1, 12)])
def test_drconv_inference_uses_fused_and_matches_unfused(generator, stride, size, counted):
    torch.manual_seed(0)
    layer = DRConv2d(8, 24, 1, stride=stride, regions=4, generator=generator, init="spread").eval()
    x = torch.randn(3, 8, size, size)
    with torch.no_grad():
        y = layer(x)
        assert len(counted) == 1
        with settings.override(fused=False):
            want = layer(x)
        assert len(counted) == 1
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    with settings.override(fused_train=False):
        layer(x)                                             # grad enabled, fused training off: not the fused kernel
    assert len(counted) == 1


def test_drconv_fused_rule_and_kernel_cache(counted):
    torch.manual_seed(0)
    basis = DRConv2d(8, 16, 1, regions=4, generator="basis", num_bases=4).eval()
    with torch.no_grad():
        basis(torch.randn(2, 8, 5, 5))                      # 25 pixels < 2 r m = 32: the dense-basis form
        assert not counted
        layer = DRConv2d(8, 16, 1, regions=4, init="spread").eval()
        x = torch.randn(2, 8, 5, 5)
        first = layer(x)
        layer.filter_generator.shared.add_(0.5)             # an in-place update (as an optimizer step does)
        second = layer(x)
        with settings.override(fused=False):
            want = layer(x)
    assert len(counted) == 2 and not torch.allclose(first, second)
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-5)


def test_failed_build_falls_back(monkeypatch):
    monkeypatch.setattr(fused, "_module", None)
    monkeypatch.setattr(fused, "_failed", True)
    layer = DRConv2d(8, 16, 1, regions=4).eval()
    with torch.no_grad():
        assert not fused.built()
        assert paths.select_path(layer.facts, torch.zeros(2, 8, 5, 5), 25) == "structured"
        assert layer(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)


def _assert_matches_float64(y32, inputs32, y64, inputs64, names):
    """Output and the gradient of every input (scaled by the reference's largest magnitude) of a float32 path
    against its float64 reference, for one random output gradient."""
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    grad_out = torch.randn_like(y64)
    for name, got, want in zip(names, torch.autograd.grad(y32, inputs32, grad_out.float()),
                               torch.autograd.grad(y64, inputs64, grad_out)):
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=1e-4, atol=1e-5,
                                   msg=f"gradient of {name}")


def _layer_grads(module, x):
    """[dL/dx] + [dL/dp for every parameter] of L = sum(module(x)^2)."""
    x = x.clone().requires_grad_()
    module(x).square().sum().backward()
    return [x.grad] + [p.grad for p in module.parameters()]


# (B, C, O, H, W, m, t, stride) for the training path
TRAIN_CASES = [(2, 8, 16, 5, 6, 3, 1, 1), (3, 24, 80, 7, 7, 4, 1, 1), (2, 13, 50, 9, 9, 3, 2, 2),
               (2, 8, 32, 3, 2, 16, 1, 1), (2, 16, 48, 12, 12, 2, 1, 1),
               (2, 200, 144, 4, 4, 2, 1, 1)]                  # C and O > 128: K-blocked GEMMs both ways


@pytest.mark.parametrize("filter_grads_in_kernel", [True, False])
@pytest.mark.parametrize("case", TRAIN_CASES)
def test_fused_training_path_matches_float64(case, filter_grads_in_kernel, monkeypatch):
    """Forward and every gradient (input, guide via Eq.7-8, coefficients, static and dynamic kernels) of the
    fused training path in float32 against the structured path in float64, with the filter gradients formed in
    the kernel per (sample, region) or per region over the batch."""
    from facerec.nn.structured import paper_region_conv2d as structured
    monkeypatch.setattr(paths, "FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION", 0 if filter_grads_in_kernel else 10 ** 9)
    batch, channels, out_channels, height, width, regions, terms, stride = case
    gen = torch.Generator().manual_seed(2)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    inputs64 = [torch.randn(batch, channels, height, width, dtype=torch.float64, generator=gen),
                torch.randn(batch, regions, out_h, out_w, dtype=torch.float64, generator=gen),
                torch.rand(batch, regions, terms, dtype=torch.float64, generator=gen),
                torch.randn(regions, out_channels, channels, dtype=torch.float64, generator=gen),
                torch.randn(regions, terms, out_channels, channels, dtype=torch.float64, generator=gen)]
    inputs64 = [t.requires_grad_() for t in inputs64]
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    y32 = fused_paper(*inputs32, (stride, stride))
    y64 = structured(*inputs64, stride)
    _assert_matches_float64(y32, inputs32, y64, inputs64, ("input", "guide", "coef", "static", "dynamic"))


def test_fused_training_backward_is_deterministic(monkeypatch):
    monkeypatch.setattr(paths, "FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION", 0)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(8, 16, 9, 9, generator=gen), torch.randn(8, 4, 9, 9, generator=gen),
              torch.rand(8, 4, 1, generator=gen), torch.randn(4, 32, 16, generator=gen),
              torch.randn(4, 1, 32, 16, generator=gen)]
    inputs = [t.requires_grad_() for t in inputs]
    grad_out = torch.randn(8, 32, 9, 9, generator=gen)
    first = torch.autograd.grad(fused_paper(*inputs), inputs, grad_out)
    second = torch.autograd.grad(fused_paper(*inputs), inputs, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.fixture
def backward_calls(monkeypatch):
    """Count the fused backward kernel's calls (one per training step of a layer on the fused path)."""
    calls = []
    real = fused.region_conv_backward
    monkeypatch.setattr(fused, "region_conv_backward", lambda *a: calls.append(1) or real(*a))
    return calls


def test_drconv_training_uses_fused_path_and_matches_structured(backward_calls):
    calls = backward_calls
    torch.manual_seed(0)
    layer = DRConv2d(8, 24, 1, regions=4, init="spread")
    reference = DRConv2d(8, 24, 1, regions=4, init="spread", path="structured")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 8, 6, 6)
    got, want = _layer_grads(layer, x), _layer_grads(reference, x)
    assert len(calls) == 1                                    # the "auto" layer only
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with settings.override(fused_train=False):
        layer(x).sum().backward()
    assert len(calls) == 1


@pytest.mark.parametrize("filter_grads_in_kernel", [True, False])
def test_fused_basis_training_matches_float64(filter_grads_in_kernel, monkeypatch):
    """The shared-kernel form (basis generator): filters sum_r routing[b, j, r] bases[r]; gradients of the input,
    guide, routing and the shared bases against region_conv2d in float64 on the materialised filters."""
    from facerec.nn.functional import region_conv2d
    monkeypatch.setattr(paths, "FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION", 0 if filter_grads_in_kernel else 10 ** 9)
    gen = torch.Generator().manual_seed(5)
    inputs64 = [torch.randn(3, 12, 7, 6, dtype=torch.float64, generator=gen),
                torch.randn(3, 4, 7, 6, dtype=torch.float64, generator=gen),
                torch.rand(3, 4, 3, dtype=torch.float64, generator=gen),
                torch.randn(3, 40, 12, dtype=torch.float64, generator=gen)]
    inputs64 = [t.requires_grad_() for t in inputs64]
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    y32 = fused_basis(*inputs32)
    x, guide, routing, bases = inputs64
    y64 = region_conv2d(x, torch.einsum("bmr,roc->bmoc", routing, bases)[..., None, None], guide)
    _assert_matches_float64(y32, inputs32, y64, inputs64, ("input", "guide", "routing", "bases"))


def test_drconv_basis_training_uses_fused_path_from_64m_pixels(backward_calls):
    calls = backward_calls
    torch.manual_seed(0)
    layer = DRConv2d(8, 16, 1, regions=2, generator="basis", num_bases=3, init="spread")
    reference = DRConv2d(8, 16, 1, regions=2, generator="basis", num_bases=3, init="spread", path="gather")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 12, 11)                                  # 132 pixels >= 64 * m = 128
    got, want = _layer_grads(layer, x), _layer_grads(reference, x)
    assert len(calls) == 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    layer(torch.randn(2, 8, 11, 11)).sum().backward()              # 121 < 128: the dense / gathered paths
    assert len(calls) == 1


def test_instruction_set_follows_torch_capability():
    capability = torch.backends.cpu.get_cpu_capability()
    has = {"AVX512": torch.cpu._is_avx512_supported(), "AVX2": torch.cpu._is_avx2_supported()}
    want = capability if has.get(capability) else None
    if capability == "AVX512" and not has["AVX512"] and has["AVX2"]:
        want = "AVX2"
    assert fused.instruction_set() == want


@pytest.mark.parametrize("capability, cpu, want", [
    ("AVX512", {"AVX512", "AVX2"}, "AVX512"), ("AVX2", {"AVX512", "AVX2"}, "AVX2"),
    ("AVX512", {"AVX2"}, "AVX2"),    # ATEN_CPU_CAPABILITY=avx512 on a CPU without it: never the AVX-512 build
    ("AVX512", set(), None), ("AVX2", set(), None), ("DEFAULT", {"AVX512", "AVX2"}, None)])
def test_instruction_set_is_capped_by_the_cpu(monkeypatch, capability, cpu, want):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(fused, "_cpu_has", lambda isa: isa in cpu)
    assert fused.instruction_set() == want


@pytest.mark.slow
@pytest.mark.skipif(fused.instruction_set() != "AVX512", reason="the AVX2 build is this CPU's own build (the fast "
                                                                 "tests run it) or cannot run here")
def test_avx2_build_passes_this_file_on_an_avx512_cpu():
    """ATEN_CPU_CAPABILITY=avx2 makes torch (and so the kernel loader) take the AVX2 build: every test above again."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", str(Path(__file__)),
                           "-k", "not test_avx2_build"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-500:]
