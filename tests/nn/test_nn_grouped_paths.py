"""The two grouped-GEMM strategies of region_conv2d (facerec/nn/_grouped.py): padded (bucketed bmm) and
grouped (torch._grouped_mm), against float64 loop references and each other, and the auto rule
(facerec.nn.paths.group_plan)."""
import pytest
import torch

from facerec.nn import settings
from facerec.nn._grouped import GroupPlan
from facerec.nn.functional import region_conv2d
from facerec.nn.paths import PADDED_MAX_MEAN_ROWS, PADDED_MIN_GROUPS
from facerec.nn.paths import group_plan
from nn_reference import reference_region_conv


def _loop_rows_matmul(rows, weights, group):
    return torch.stack([rows[i] @ weights[group[i]] for i in range(rows.shape[0])])


def _loop_outer_sum(left, right, group, num_groups):
    out = left.new_zeros(num_groups, left.shape[1], right.shape[1])
    for i in range(left.shape[0]):
        out[group[i]] += torch.outer(left[i], right[i])
    return out


@pytest.mark.parametrize("case", ["balanced", "skewed", "empty_groups", "one_row"])
def test_padded_plan_matches_loops(case):
    gen = torch.Generator().manual_seed(1)
    num_groups, rows_n = 12, 90
    if case == "balanced":        # every group 7 or 8 rows: one bucket, weights used in place
        group = torch.arange(rows_n) % num_groups
    elif case == "skewed":        # sizes 1..~60: several buckets, weights gathered
        group = torch.where(torch.rand(rows_n, generator=gen) < 0.6, torch.tensor(3),
                            torch.randint(0, num_groups, (rows_n,), generator=gen))
    elif case == "empty_groups":  # groups 0, 5 and 11 never occur
        group = torch.tensor([g for g in range(num_groups) if g not in (0, 5, 11)]).repeat(10)[:rows_n]
    else:
        rows_n, group = 1, torch.tensor([4])
    group = group[torch.randperm(rows_n, generator=gen)]
    rows = torch.randn(rows_n, 5, dtype=torch.float64, generator=gen)
    weights = torch.randn(num_groups, 5, 3, dtype=torch.float64, generator=gen)
    right = torch.randn(rows_n, 3, dtype=torch.float64, generator=gen)
    plan = GroupPlan(group, num_groups, "padded")
    if case == "balanced":
        assert plan.in_place and len(plan.buckets) == 1
    if case == "skewed":          # longest group > 32 rows and > twice the mean: bucketed, weights gathered
        assert not plan.in_place and len(plan.buckets) > 1
    torch.testing.assert_close(plan.rows_matmul(rows, weights), _loop_rows_matmul(rows, weights, group),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plan.outer_sum(rows, right), _loop_outer_sum(rows, right, group, num_groups),
                               rtol=1e-12, atol=1e-12)


def test_padded_bucket_padding_at_most_doubles_rows():
    gen = torch.Generator().manual_seed(2)
    counts = torch.cat([torch.randint(1, 20, (290,), generator=gen), torch.randint(100, 200, (10,), generator=gen)])
    group = torch.repeat_interleave(torch.arange(300), counts)
    plan = GroupPlan(group, 300, "padded")
    assert not plan.in_place and group.numel() <= plan.padded_rows <= 2 * group.numel()


@pytest.mark.parametrize("strategy", ["padded", "grouped"])
@pytest.mark.parametrize("shape", [(2, 4, 8, 5, 6, 3, 1, 1, 0), (2, 4, 8, 7, 7, 4, 3, 2, 1),
                                   (1, 8, 4, 3, 3, 8, 1, 1, 0)])
def test_region_conv_each_strategy_matches_reference(strategy, shape):
    batch, channels, out_channels, height, width, regions, k, stride, padding = shape
    dtype = torch.float64 if strategy == "padded" else torch.float32   # _grouped_mm has no float64
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, channels, height, width, dtype=dtype, generator=gen, requires_grad=True)
    w = torch.randn(batch, regions, out_channels, channels, k, k, dtype=dtype, generator=gen,
                    requires_grad=True)
    out_h = (height + 2 * padding - k) // stride + 1
    out_w = (width + 2 * padding - k) // stride + 1
    g = torch.randn(batch, regions, out_h, out_w, dtype=dtype, generator=gen, requires_grad=True)
    with settings.override(group_plan=strategy):
        y = region_conv2d(x, w, g, stride, padding)
    y_ref = reference_region_conv(x.double(), w.double(), g.double(), stride, padding, 1)
    torch.testing.assert_close(y.double(), y_ref, **tol)
    grad_out = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    grads = torch.autograd.grad(y, (x, w, g), grad_out.to(dtype))
    grads_ref = torch.autograd.grad(y_ref, (x, w, g), grad_out)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.double(), want.double(), **tol)


def test_strategies_agree_in_float32_at_many_small_groups():
    """B*m = 64 groups of ~6 rows (7x7): auto picks padded; grouped gives the same values and gradients."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 16, 7, 7, generator=gen, requires_grad=True)
    w = torch.randn(8, 8, 32, 16, 1, 1, generator=gen, requires_grad=True)
    g = torch.randn(8, 8, 7, 7, generator=gen, requires_grad=True)
    assert group_plan(8 * 49, 64, torch.float32, 16, 32, threads=2) == "padded"
    results = []
    for strategy in ("padded", "grouped"):
        with settings.override(group_plan=strategy):
            y = region_conv2d(x, w, g)
            results.append((y, *torch.autograd.grad(y, (x, w, g), torch.ones_like(y))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_auto_rule():
    f32 = torch.float32
    # MobileFaceNet, B=32, m=8, 2 threads: 7x7 / 14x14 / 28x28 padded, 56x56 grouped.
    assert group_plan(32 * 49, 256, f32, 128, 512, threads=2) == "padded"
    assert group_plan(32 * 196, 256, f32, 128, 128, threads=2) == "padded"
    assert group_plan(32 * 784, 256, f32, 64, 128, threads=2) == "padded"
    assert group_plan(32 * 3136, 256, f32, 64, 128, threads=2) == "grouped"
    # one thread: grouped everywhere it can run
    assert group_plan(32 * 49, 256, f32, 128, 512, threads=1) == "grouped"
    # few groups: grouped (exact MACs); float64 or unaligned sizes: padded (no _grouped_mm)
    assert group_plan(100, PADDED_MIN_GROUPS - 1, f32, 16, 32, threads=2) == "grouped"
    assert group_plan(100, 4, torch.float64, 16, 32, threads=1) == "padded"
    assert group_plan(100, 4, f32, 3, 32, threads=1) == "padded"
    limit = PADDED_MAX_MEAN_ROWS * PADDED_MIN_GROUPS
    assert group_plan(limit, PADDED_MIN_GROUPS, f32, 16, 32, threads=4) == "padded"
    assert group_plan(limit + 1, PADDED_MIN_GROUPS, f32, 16, 32, threads=4) == "grouped"
    with pytest.raises(ValueError, match="strategy"):
        GroupPlan(torch.zeros(3, dtype=torch.long), 2, "auto")
