"""Grouped-matmul plans for the region-gathered convolution (private).

A region convolution applies one filter per (sample, region) group of pixel rows: the forward is a grouped
GEMM ``Y[g] = X[g] @ W[g]`` and the filter gradient the per-group sum of outer products
``dW[g] = X[g]^T @ dY[g]``. ``GroupPlan`` does both in one of three ways (plans), chosen per shape:

* ``"grouped"``: rows sorted by group, one ``torch._grouped_mm`` call (float32 / bfloat16 / float16, aligned).
  On CPU it runs one small ``aten::mm`` per group, i.e. B*m GEMM calls per pass, each with its own dispatch
  and (with more than one thread) its own OpenMP parallel region. Efficient for large groups.
* ``"padded"``: groups padded to a common length and multiplied with ``torch.bmm``: a handful of calls per
  pass whatever B*m. Groups are put in buckets by size (``ceil(log2(rows))``), each bucket padded to its
  longest group, so padding at most doubles the MACs. With one bucket and no empty group the weights are
  used in place (also when the longest group is short, see IN_PLACE_MAX_ROWS); otherwise each bucket gathers
  its groups' weights (one filter-sized copy).
* ``"onednn"``: the padded buckets with their groups interleaved, each bucket one grouped oneDNN 1x1 convolution
  (``facerec.nn._onednn.interleaved_matmul``; CPU float32).

Which plan runs is chosen by ``facerec.nn.paths.group_plan`` (the rule and the measurements behind it).
``grouped_mm_ok`` is the one place that says where ``torch._grouped_mm`` may be called.

Shapes: rows (N, K) in ORIGINAL row order (the plan permutes internally); group (N,) int64 in [0, G);
weights (G, K, M). Results come back in original row order.
"""
from __future__ import annotations

import torch
from torch import Tensor

from facerec.nn import _onednn

__all__ = ["GroupPlan", "grouped_mm_ok", "IN_PLACE_MAX_ROWS"]

IN_PLACE_MAX_ROWS = 32
# torch._grouped_mm: CPU support (a loop of mm) since torch 2.9 (pytorch#161717); on CUDA the fused CUTLASS kernel
# takes bfloat16 on compute capability 9.0+, and elsewhere torch falls back to per-group mm calls after copying the
# offsets to the host (a sync per call, no gain over the callers' own loops).
_GROUPED_MM_MIN_TORCH = (2, 9)
_GROUPED_MM_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _torch_at_least(version: tuple[int, int]) -> bool:
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= version


_GROUPED_MM_PRESENT = hasattr(torch, "_grouped_mm") and _torch_at_least(_GROUPED_MM_MIN_TORCH)


def _aligned(t: Tensor) -> bool:
    """torch._grouped_mm needs every non-unit stride to be a multiple of 16 bytes."""
    size = t.element_size()
    return all(stride == 1 or (stride * size) % 16 == 0 for stride in t.stride())


def grouped_mm_ok(device: torch.device, dtype: torch.dtype, *sizes: int, tensors=()) -> bool:
    """Whether one ``torch._grouped_mm`` call may run for operands of this device and dtype without a host sync:
    CPU float32 / bfloat16 / float16, CUDA bfloat16 on compute capability 9.0+ (torch >= 2.9). ``sizes``: matrix
    sizes that must be multiples of 16 bytes; ``tensors``: operands whose strides must be (see ``_aligned``)."""
    if not _GROUPED_MM_PRESENT:
        return False
    if device.type == "cpu":
        ok = dtype in _GROUPED_MM_CPU_DTYPES
    elif device.type == "cuda":
        ok = dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (9, 0)
    else:
        ok = False
    if not ok:
        return False
    item = torch.empty((), dtype=dtype).element_size()
    return all((size * item) % 16 == 0 for size in sizes) and all(_aligned(t) for t in tensors)


class GroupPlan:
    """Row layout of a grouped GEMM, built once per forward and reused by the backward.

    group: (N,) int64 group id per row (values in [0, num_groups)). strategy: "grouped" or "padded".
    """

    def __init__(self, group: Tensor, num_groups: int, strategy: str) -> None:
        if strategy not in ("grouped", "padded", "onednn"):
            raise ValueError(f"strategy must be 'grouped', 'padded' or 'onednn', got {strategy!r}")
        self.strategy, self.num_groups, self.num_rows = strategy, num_groups, group.numel()
        sorted_group, self.perm = torch.sort(group, stable=True)
        # Group ends in the sorted order without a host sync (torch.bincount on CUDA reads its maximum back).
        ends = torch.searchsorted(sorted_group, torch.arange(num_groups, device=group.device), right=True)
        counts = torch.diff(ends, prepend=ends.new_zeros(1))
        self.offsets = ends.to(torch.int32)
        if strategy in ("padded", "onednn"):
            self._plan_padding(group, counts)

    def inverse(self) -> Tensor:
        """(N,) position of every original row in the sorted order (the inverse of ``perm``), built once."""
        if getattr(self, "_inverse", None) is None:
            self._inverse = torch.empty_like(self.perm)
            self._inverse[self.perm] = torch.arange(self.num_rows, device=self.perm.device)
        return self._inverse

    def _plan_padding(self, group: Tensor, counts: Tensor) -> None:
        device = group.device
        starts = counts.cumsum(0) - counts
        slot = torch.empty_like(self.perm)
        slot[self.perm] = torch.arange(self.num_rows, device=device) - starts[group[self.perm]]
        # Bucket key ceil(log2(rows)) for non-empty groups; groups ordered by key (stable: group order kept).
        nonempty = counts > 0
        key = torch.where(nonempty, torch.ceil(torch.log2(counts.clamp(min=1).double())).long(),
                          torch.full_like(counts, -1))
        order = torch.sort(key, stable=True).indices[int((~nonempty).sum()):]
        keys = key[order]
        bucket_keys, bucket_sizes = torch.unique_consecutive(keys, return_counts=True)
        # One bucket padded to the longest group, weights used in place (no filter-sized gather), when that at
        # most doubles the rows, or when the longest group is short (<= IN_PLACE_MAX_ROWS): a GEMM of so few
        # rows is bound by reading its group's weights, so padding rows costs little and a gather a lot.
        max_len = int(counts.max()) if self.num_groups else 0
        self.in_place = max_len <= IN_PLACE_MAX_ROWS or self.num_groups * max_len <= 2 * max(self.num_rows, 1)
        if self.in_place:
            bucket_sizes = torch.tensor([self.num_groups])
        self.buckets = []      # (group ids (n,) or None for all in place, n, padded length L, flat row start)
        group_start = torch.zeros(self.num_groups, dtype=torch.long, device=device)
        base, first = 0, 0
        for size in bucket_sizes.tolist():
            ids = order[first:first + size] if not self.in_place else torch.arange(self.num_groups, device=device)
            length = int(counts[ids].max())
            group_start[ids] = base + torch.arange(size, device=device) * length
            self.buckets.append((None if self.in_place else ids, size, length, base))
            base, first = base + size * length, first + size
        self.padded_rows = base
        self.has_empty = not bool(nonempty.all())
        self.dest = group_start[group] + slot          # (N,) flat padded row of every original row
        if self.strategy == "onednn":
            # The same buckets with their groups interleaved (row l of the bucket's i-th group at base + l*size + i),
            # the channels_last image of a grouped 1x1 convolution. Padding rows repeat row 0 (never read back).
            bucket_of = torch.zeros(self.num_groups, dtype=torch.long, device=device)
            index_in, size_of = torch.zeros_like(bucket_of), torch.ones_like(bucket_of)
            for ids, size, length, base in self.buckets:
                ids = torch.arange(self.num_groups, device=device) if ids is None else ids
                bucket_of[ids], index_in[ids], size_of[ids] = base, torch.arange(size, device=device), size
            self.dest_interleaved = bucket_of[group] + slot * size_of[group] + index_in[group]
            self.src_interleaved = torch.zeros(self.padded_rows, dtype=torch.long, device=device)
            self.src_interleaved[self.dest_interleaved] = torch.arange(self.num_rows, device=device)

    def _pad(self, rows: Tensor, zero: bool) -> Tensor:
        flat = (rows.new_zeros if zero else rows.new_empty)(self.padded_rows, rows.shape[1])
        flat.index_copy_(0, self.dest, rows)
        return flat

    def rows_matmul(self, rows: Tensor, weights: Tensor) -> Tensor:
        """Y_i = rows_i @ weights[group_i]: rows (N, K), weights (G, K, M) -> (N, M), original row order."""
        out_cols = weights.shape[-1]
        if self.num_rows == 0:
            return rows.new_zeros(0, out_cols)
        if self.strategy == "grouped":
            if not _aligned(weights):
                weights = weights.contiguous()
            sorted_out = torch._grouped_mm(rows.index_select(0, self.perm), weights, offs=self.offsets)
            # Back to row order with a gather: index_copy_ (a scatter) measured ~4x slower on CPU at 56x56.
            return sorted_out.index_select(0, self.inverse())
        if self.strategy == "onednn":
            flat = rows.index_select(0, self.src_interleaved)
            b_t = weights.transpose(1, 2)                                                  # (G, M, K)
            outs = [_onednn.interleaved_matmul(flat[base:base + size * length],
                                               b_t if ids is None else b_t.index_select(0, ids))
                    for ids, size, length, base in self.buckets]
            return (outs[0] if len(outs) == 1 else torch.cat(outs)).index_select(0, self.dest_interleaved)
        # Padding rows are never read back (each output row depends on its own input row only): no zeroing.
        flat = self._pad(rows, zero=False)
        out = rows.new_empty(self.padded_rows, out_cols)
        for ids, size, length, base in self.buckets:
            w = weights if ids is None else weights.index_select(0, ids)
            torch.bmm(flat[base:base + size * length].view(size, length, -1), w,
                      out=out[base:base + size * length].view(size, length, out_cols))
        return out.index_select(0, self.dest)

    def outer_sum(self, left: Tensor, right: Tensor) -> Tensor:
        """dW[g] = sum over rows i of group g of left_i^T right_i: left (N, K), right (N, M) -> (G, K, M)."""
        shape = (self.num_groups, left.shape[1], right.shape[1])
        if self.num_rows == 0:
            return left.new_zeros(shape)
        if self.strategy == "grouped":
            sl = left.index_select(0, self.perm)
            sr = right.index_select(0, self.perm)
            return torch._grouped_mm(sl.t(), sr, offs=self.offsets)
        pad_left, pad_right = self._pad(left, zero=True), self._pad(right, zero=True)
        if self.in_place:
            size, length = self.num_groups, self.buckets[0][2]
            return torch.bmm(pad_left.view(size, length, -1).transpose(1, 2), pad_right.view(size, length, -1))
        out = (left.new_zeros if self.has_empty else left.new_empty)(shape)
        for ids, size, length, base in self.buckets:
            part = torch.bmm(pad_left[base:base + size * length].view(size, length, -1).transpose(1, 2),
                             pad_right[base:base + size * length].view(size, length, -1))
            out.index_copy_(0, ids, part)
        return out
