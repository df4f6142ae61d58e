"""DRConv paths on CUDA against float64 CPU references (skipped without a GPU; benchmarks/gpu_check.py times them)."""
import pytest
import torch

from facerec.nn import DRConv2d

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PATHS = [{"generator": "paper", "path": "structured"}, {"generator": "paper", "path": "gather"},
         {"generator": "basis", "path": "dense_pointwise"}, {"generator": "basis", "path": "gather"}]


@pytest.mark.parametrize("kw", PATHS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("stride", [1, 2])
def test_layer_on_cuda_matches_float64_cpu(kw, stride):
    torch.manual_seed(0)
    ref = DRConv2d(16, 32, 1, stride=stride, regions=8, **kw, init="spread").double()
    x64 = torch.randn(4, 16, 10, 10, dtype=torch.float64, requires_grad=True)
    y64 = ref(x64)
    grad = torch.randn_like(y64)
    g64 = torch.autograd.grad(y64, [x64] + list(ref.parameters()), grad)
    layer = DRConv2d(16, 32, 1, stride=stride, regions=8, **kw, init="spread").cuda()
    layer.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = x64.detach().float().cuda().requires_grad_()
    y = layer(x)
    g = torch.autograd.grad(y, [x] + list(layer.parameters()), grad.float().cuda())
    torch.testing.assert_close(y.double().cpu(), y64, rtol=1e-4, atol=1e-4)
    for got, want in zip(g, g64):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kw", PATHS[:1] + PATHS[2:3], ids=["paper-structured", "basis-dense"])
def test_bf16_autocast_on_cuda_runs_and_is_close(kw):
    torch.manual_seed(0)
    layer = DRConv2d(32, 64, 1, regions=8, **kw, init="spread").cuda()
    x = torch.randn(8, 32, 7, 7, device="cuda", requires_grad=True)
    y32 = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y16 = layer(x)
    y16.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    rel = (y16.float() - y32).abs().max() / y32.abs().max()
    assert rel < 0.1
