"""Grouped-matmul helpers for the region-gathered convolution (private).

A region convolution applies one filter per (sample, region) group of pixels. After sorting the pixel rows
by group, the forward is a grouped GEMM ``Y[g] = X[g] @ W[g]`` and the filter gradient is the per-group sum
of outer products ``dW[g] = X[g]^T @ dY[g]``. ``torch._grouped_mm`` does both in one call for float32 /
bfloat16 / float16; other dtypes (float64) use a padded batched matmul that gives identical results.

Shapes: rows (N, K) sorted by group; offsets (G,) int32 cumulative group ends; weights (G, K, M).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sort_by_group", "grouped_rows_matmul", "grouped_outer_sum"]

_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def sort_by_group(group: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stable sort of a flat group-id vector.

    group (N,) int64 with values in [0, num_groups). Returns perm (N,) int64 (rows in group order, original
    order kept inside a group), counts (G,) int64 and offsets (G,) int32 (cumulative ends).
    """
    _, perm = torch.sort(group, stable=True)
    counts = torch.bincount(group, minlength=num_groups)
    offsets = counts.cumsum(0).to(torch.int32)
    return perm, counts, offsets


def _aligned(t: Tensor) -> bool:
    """torch._grouped_mm needs every non-unit stride to be a multiple of 16 bytes."""
    size = t.element_size()
    return all(stride == 1 or (stride * size) % 16 == 0 for stride in t.stride())


def _use_grouped_mm(a: Tensor, b: Tensor) -> bool:
    return (a.dtype in _GROUPED_MM_DTYPES and a.dtype == b.dtype and _aligned(a) and _aligned(b)
            and (b.shape[-1] * b.element_size()) % 16 == 0 and (a.shape[-1] * a.element_size()) % 16 == 0)


def _padded_layout(counts: Tensor, total: int) -> tuple[Tensor, Tensor, int]:
    """Group id and slot of every sorted row, and the largest group size (for the padded fallback)."""
    num_groups = counts.numel()
    starts = counts.cumsum(0) - counts
    group_of_row = torch.repeat_interleave(torch.arange(num_groups, device=counts.device), counts,
                                           output_size=total)
    slot = torch.arange(total, device=counts.device) - starts[group_of_row]
    max_len = int(counts.max()) if num_groups > 0 and total > 0 else 0
    return group_of_row, slot, max_len


def grouped_rows_matmul(rows: Tensor, weights: Tensor, counts: Tensor, offsets: Tensor) -> Tensor:
    """Y[g] = rows[g] @ weights[g] for row blocks given by counts.

    rows (N, K) sorted by group; weights (G, K, M) (any strides); returns (N, M).
    """
    if rows.shape[0] == 0:
        return rows.new_zeros(0, weights.shape[-1])
    rows = rows.contiguous()
    if _use_grouped_mm(rows, weights):
        return torch._grouped_mm(rows, weights, offs=offsets)
    total = rows.shape[0]
    group_of_row, slot, max_len = _padded_layout(counts, total)
    padded = rows.new_zeros(weights.shape[0], max_len, rows.shape[1])
    padded[group_of_row, slot] = rows
    out = torch.bmm(padded, weights)
    return out[group_of_row, slot]


def grouped_outer_sum(left: Tensor, right: Tensor, counts: Tensor, offsets: Tensor) -> Tensor:
    """dW[g] = left[g]^T @ right[g]: per-group sum of outer products.

    left (N, K) and right (N, M) sorted by group; returns (G, K, M).
    """
    num_groups = counts.numel()
    if left.shape[0] == 0:
        return left.new_zeros(num_groups, left.shape[1], right.shape[1])
    left, right = left.contiguous(), right.contiguous()
    if _use_grouped_mm(left, right):
        return torch._grouped_mm(left.t(), right, offs=offsets)
    total = left.shape[0]
    group_of_row, slot, max_len = _padded_layout(counts, total)
    pad_left = left.new_zeros(num_groups, max_len, left.shape[1])
    pad_left[group_of_row, slot] = left
    pad_right = right.new_zeros(num_groups, max_len, right.shape[1])
    pad_right[group_of_row, slot] = right
    return torch.bmm(pad_left.transpose(1, 2), pad_right)
