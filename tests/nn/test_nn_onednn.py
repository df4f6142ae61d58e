"""The oneDNN GEMM paths (facerec/nn/_onednn.py) in float32 against float64 references: the helpers, the
"onednn" GroupPlan of region_conv2d, and the structured paper path (forward, Eq.7 both ways, all gradients)."""
import pytest
import torch

import facerec.nn._onednn as onednn
import facerec.nn.paths as paths
from facerec.nn import settings
from facerec.nn._grouped import GroupPlan
from facerec.nn.functional import region_conv2d
from facerec.nn.paths import ONEDNN_MIN_MEAN_ROWS
from facerec.nn.paths import group_plan
from facerec.nn.structured import paper_region_conv2d
from nn_reference import reference_region_conv


def _usable() -> bool:
    with settings.override(onednn=True):           # the setting's default is off on CPUs without AVX-512
        return onednn.available(torch.zeros(1))


pytestmark = pytest.mark.skipif(not _usable(), reason="oneDNN (torch.backends.mkldnn) is not usable in this build")


@pytest.fixture
def counted(monkeypatch):
    """Count the oneDNN calls (so a test knows the path it meant to test was taken); no size threshold."""
    calls = {"rows": 0, "interleaved": 0}
    real_rows, real_interleaved = onednn._call, onednn._interleaved_call

    def rows(*args):
        calls["rows"] += 1
        return real_rows(*args)

    def interleaved(*args):
        calls["interleaved"] += 1
        return real_interleaved(*args)

    monkeypatch.setattr(onednn, "_call", rows)
    monkeypatch.setattr(onednn, "_interleaved_call", interleaved)
    monkeypatch.setattr(paths, "ONEDNN_MIN_MACS", 0)
    with settings.override(onednn=True):            # the default is off on CPUs without AVX-512
        yield calls


def _close(got, want, tol=1e-4):
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_helpers_match_float64(counted):
    gen = torch.Generator().manual_seed(0)
    rows, weight = torch.randn(53, 24, dtype=torch.float64, generator=gen), torch.randn(40, 24, dtype=torch.float64,
                                                                                      generator=gen)
    _close(onednn.rows_matmul(rows.float(), weight.float()), rows @ weight.t())
    a, b_t = torch.randn(3, 19, 24, dtype=torch.float64, generator=gen), torch.randn(3, 8, 24, dtype=torch.float64,
                                                                                    generator=gen)
    got = onednn.batched_matmul(a.float(), b_t.float())
    assert got.shape == (3, 19, 8)
    _close(got, a @ b_t.transpose(1, 2))
    flat = a.transpose(0, 1).reshape(19 * 3, 24)                         # row l*G + g = a[g, l]
    want = (a @ b_t.transpose(1, 2)).transpose(0, 1).reshape(19 * 3, 8)
    _close(onednn.interleaved_matmul(flat.float(), b_t.float()), want)
    assert counted["rows"] == 1 and counted["interleaved"] == 2
    # float64 is not a oneDNN dtype here: same results through torch.mm / bmm
    torch.testing.assert_close(onednn.interleaved_matmul(flat, b_t), want, rtol=1e-12, atol=1e-12)
    assert counted["interleaved"] == 2


@pytest.mark.parametrize("case", ["balanced", "skewed", "empty_groups"])
def test_onednn_group_plan_matches_loops(case, counted):
    gen = torch.Generator().manual_seed(1)
    num_groups, rows_n = 12, 120
    if case == "balanced":
        group = torch.arange(rows_n) % num_groups
    elif case == "skewed":        # one group takes ~60%: several buckets, weights gathered per bucket
        group = torch.where(torch.rand(rows_n, generator=gen) < 0.6, torch.tensor(3),
                            torch.randint(0, num_groups, (rows_n,), generator=gen))
    else:
        group = torch.tensor([g for g in range(num_groups) if g not in (0, 5, 11)]).repeat(20)[:rows_n]
    group = group[torch.randperm(rows_n, generator=gen)]
    rows = torch.randn(rows_n, 6, dtype=torch.float64, generator=gen)
    weights = torch.randn(num_groups, 6, 4, dtype=torch.float64, generator=gen)
    right = torch.randn(rows_n, 4, dtype=torch.float64, generator=gen)
    plan = GroupPlan(group, num_groups, "onednn")
    if case == "skewed":
        assert len(plan.buckets) > 1
    want = torch.stack([rows[i] @ weights[group[i]] for i in range(rows_n)])
    _close(plan.rows_matmul(rows.float(), weights.float()), want)
    assert counted["interleaved"] == len(plan.buckets)
    outer = rows.new_zeros(num_groups, 6, 4)
    for i in range(rows_n):
        outer[group[i]] += torch.outer(rows[i], right[i])
    _close(plan.outer_sum(rows.float(), right.float()), outer)


def test_group_plan_onednn_rule():
    f32 = torch.float32
    assert group_plan(32 * 784, 256, f32, 64, 128, threads=2, onednn=True) == "onednn"        # 28x28
    assert group_plan(32 * 3136, 256, f32, 64, 128, threads=1, onednn=True) == "onednn"       # 56x56
    assert group_plan(32 * 196, 256, f32, 128, 128, threads=2, onednn=True) == "padded"       # 14x14
    assert group_plan(ONEDNN_MIN_MEAN_ROWS * 10, 10, f32, 8, 8, threads=1, onednn=True) == "onednn"
    assert group_plan(ONEDNN_MIN_MEAN_ROWS * 10 - 1, 10, f32, 8, 8, threads=1, onednn=True) == "grouped"
    assert group_plan(32 * 784, 256, f32, 64, 128, threads=2) == "padded"                      # not asked


def test_region_conv2d_onednn_plan_matches_float64(counted, monkeypatch):
    monkeypatch.setattr(paths, "ONEDNN_MIN_MEAN_ROWS", 1)
    assert settings.group_plan() == "auto"
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, generator=gen)
    filters = torch.randn(2, 3, 5, 6, 1, 1, dtype=torch.float64, generator=gen)
    guide = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=gen)
    inputs64 = [t.requires_grad_() for t in (x, filters, guide)]
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    y32 = region_conv2d(*inputs32)
    assert counted["interleaved"] >= 1
    y64 = reference_region_conv(*inputs64)
    _close(y32, y64)
    grad_out = torch.randn_like(y64)
    for got, want in zip(torch.autograd.grad(y32, inputs32, grad_out.float()),
                         torch.autograd.grad(y64, inputs64, grad_out)):
        _close(got, want, 1e-3)


@pytest.mark.parametrize("eq7_path", ["stacked", "per_sample"])
@pytest.mark.parametrize("terms", [1, 2])
def test_structured_onednn_matches_float64(eq7_path, terms, counted, monkeypatch):
    monkeypatch.setattr(paths, "STACKED_EQ7_MAX_PIXELS_PER_REGION", 10 ** 6 if eq7_path == "stacked" else 0)
    gen = torch.Generator().manual_seed(4)
    batch, channels, out_channels, regions, size = 3, 8, 12, 4, 6
    x = torch.randn(batch, channels, size, size, dtype=torch.float64, generator=gen)
    guide = torch.randn(batch, regions, size, size, dtype=torch.float64, generator=gen)
    coef = torch.rand(batch, regions, terms, dtype=torch.float64, generator=gen)
    static = torch.randn(regions, out_channels, channels, dtype=torch.float64, generator=gen)
    dynamic = torch.randn(regions, terms, out_channels, channels, dtype=torch.float64, generator=gen)
    inputs64 = [t.requires_grad_() for t in (x, guide, coef, static, dynamic)]
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    y32 = paper_region_conv2d(*inputs32)
    assert counted["rows"] == regions                                   # one GEMM per region in the forward
    filters = (static.unsqueeze(0) + (coef[..., None, None] * dynamic.unsqueeze(0)).sum(2))[..., None, None]
    y64 = reference_region_conv(x, filters, guide)
    _close(y32, y64)
    grad_out = torch.randn_like(y64)
    grads32 = torch.autograd.grad(y32, inputs32, grad_out.float())
    assert counted["rows" if eq7_path == "stacked" else "interleaved"] > (regions if eq7_path == "stacked" else 0)
    for name, got, want in zip(("input", "guide", "coef", "static", "dynamic"), grads32,
                               torch.autograd.grad(y64, inputs64, grad_out)):
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3, msg=f"gradient of {name}")
