"""Grouped-matmul plans for the region-gathered convolution (private).

A region convolution applies one filter per (sample, region) group of pixel rows: the forward is a grouped
GEMM ``Y[g] = X[g] @ W[g]`` and the filter gradient the per-group sum of outer products
``dW[g] = X[g]^T @ dY[g]``. ``GroupPlan`` does both in one of two ways, chosen per shape:

* ``"grouped"``: rows sorted by group, one ``torch._grouped_mm`` call (float32 / bfloat16 / float16, aligned).
  On CPU it runs one small ``aten::mm`` per group, i.e. B*m GEMM calls per pass, each with its own dispatch
  and (with more than one thread) its own OpenMP parallel region. Efficient for large groups.
* ``"padded"``: groups padded to a common length and multiplied with ``torch.bmm``: a handful of calls per
  pass whatever B*m. Groups are put in buckets by size (``ceil(log2(rows))``), each bucket padded to its
  longest group, so padding at most doubles the MACs. With one bucket and no empty group the weights are
  used in place (also when the longest group is short, see IN_PLACE_MAX_ROWS); otherwise each bucket gathers
its groups' weights (one filter-sized copy).

Rule (``choose_strategy``): "padded" when torch runs more than one thread, there are at least
``PADDED_MIN_GROUPS`` groups (B*m) and the mean group holds at most ``PADDED_MAX_MEAN_ROWS`` rows (outputs of
<= 28x28 with m = 8 regions); also whenever the dtype or sizes rule out ``torch._grouped_mm`` (float64).
"grouped" otherwise. Why, measured on this project's 2-core AMD VM (B = 32, m = 8, MKL; region_conv2d
alone, forward / forward+backward):

* 1 thread (CPU time): "grouped" is the faster at every MobileFaceNet shape (7x7 to 56x56): padded costs
  5-40% more per training step and 1.2-2.6x in the forward (padding, and a filter-sized weight gather when
  group sizes vary). With one thread a per-group ``aten::mm`` costs only its dispatch.
* 2 threads on the shared machine (wall clock, default OpenMP wait policy): every per-group GEMM opens an
  OpenMP parallel region, and with the cores oversubscribed some of the 256 barriers per pass stall:
  single passes of "grouped" took 1.4-6 s (e.g. 128->512 @14x14 forward: 6056 ms vs 43 ms padded;
  64->128 @28x28 training step: 4144 ms vs 472 ms). "padded" makes a handful of calls per pass.
* Few groups (< 64) or large ones (56x56: ~392 rows each): per-call costs are amortised and
  ``_grouped_mm`` does the exact MACs (padding may double them), so "grouped".

Shapes: rows (N, K) in ORIGINAL row order (the plan permutes internally); group (N,) int64 in [0, G);
weights (G, K, M). Results come back in original row order.
"""
from __future__ import annotations

import torch
from torch import Tensor

from facerec.nn import _onednn

__all__ = ["GroupPlan", "choose_strategy", "ONEDNN_MIN_MEAN_ROWS", "PADDED_MAX_MEAN_ROWS", "PADDED_MIN_GROUPS",
           "STRATEGIES"]

STRATEGIES = ("auto", "grouped", "padded", "onednn")
PADDED_MAX_MEAN_ROWS = 128
PADDED_MIN_GROUPS = 64
IN_PLACE_MAX_ROWS = 32
# "onednn" (one grouped oneDNN convolution per bucket) from this many rows per group on average: outputs of
# 28x28 and up with m = 8. Measured (region_conv2d forward alone, B = 32, m = 8, random guide, 2 threads, ratio
# to an NCHW conv of the same shape): 64->128 @56x56 2.99x ("grouped") -> 1.99x; @28x28 4.55x ("padded") ->
# 4.17x, 128->64 @28x28 4.24x -> 3.83x; at 14x14 (24 rows per group) the oneDNN layout lost, 7.6x vs 6.1x.
ONEDNN_MIN_MEAN_ROWS = 64
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _aligned(t: Tensor) -> bool:
    """torch._grouped_mm needs every non-unit stride to be a multiple of 16 bytes."""
    size = t.element_size()
    return all(stride == 1 or (stride * size) % 16 == 0 for stride in t.stride())


def _grouped_mm_ok(dtype: torch.dtype, inner: int, outer: int) -> bool:
    size = torch.empty((), dtype=dtype).element_size()
    return dtype in _GROUPED_MM_DTYPES and (inner * size) % 16 == 0 and (outer * size) % 16 == 0


def choose_strategy(num_rows: int, num_groups: int, dtype: torch.dtype, inner: int, outer: int,
                    threads: int | None = None, onednn: bool = False) -> str:
    """"onednn" when oneDNN can run (``onednn``, e.g. ``facerec.nn._onednn.available(rows)``) and groups hold
    at least ONEDNN_MIN_MEAN_ROWS rows on average; else "padded" for many small groups on >1 thread or when
    _grouped_mm cannot run, else "grouped".

    threads: torch's intra-op thread count (default ``torch.get_num_threads()``). See the module docstring.
    """
    if onednn and num_rows >= ONEDNN_MIN_MEAN_ROWS * num_groups:
        return "onednn"
    if not _grouped_mm_ok(dtype, inner, outer):
        return "padded"
    if (torch.get_num_threads() if threads is None else threads) <= 1:
        return "grouped"
    many_small = num_groups >= PADDED_MIN_GROUPS and num_rows <= PADDED_MAX_MEAN_ROWS * num_groups
    return "padded" if many_small else "grouped"


class GroupPlan:
    """Row layout of a grouped GEMM, built once per forward and reused by the backward.

    group: (N,) int64 group id per row (values in [0, num_groups)). strategy: "grouped" or "padded".
    """

    def __init__(self, group: Tensor, num_groups: int, strategy: str) -> None:
        if strategy not in ("grouped", "padded", "onednn"):
            raise ValueError(f"strategy must be 'grouped', 'padded' or 'onednn', got {strategy!r}")
        self.strategy, self.num_groups, self.num_rows = strategy, num_groups, group.numel()
        counts = torch.bincount(group, minlength=num_groups)
        _, self.perm = torch.sort(group, stable=True)
        self.offsets = counts.cumsum(0).to(torch.int32)
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
