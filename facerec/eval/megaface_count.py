"""Exact streamed threshold counting: for each row, how many streamed scores lie strictly above each threshold.

This is the inner loop of the MegaFace evaluator (docs/megaface.md): a trial's rank
is the number of distractor scores strictly above the probe-mate score, and a positive pair's false-accept
count is the number of ROC negatives strictly above it. Scores arrive as (R, B) blocks and are never kept.

Method (exact, no sort): a score s gets the bin ``g(s) = trunc(clamp(s, lo, hi) * factor + offset)`` in
[0, G), a monotone non-decreasing float pipeline applied identically to scores and thresholds. For row r with
sorted thresholds t_1 <= ... <= t_k the position
``pos(s) = #{j : t_j < s}`` equals ``#{j : g(t_j) < g(s)}`` whenever no threshold shares the bin g(s)
(monotonicity), so a per-row lookup table over the G bins gives it with one gather. Bins holding a threshold
are marked ambiguous and their few scores are compared exactly. A per-row histogram of positions then gives
``count(s > t_j) = #{s : pos(s) >= j}`` (ties are not counted: strict). On the CPU, when under 10 % of a
block's scores exceed their row's lowest threshold (a trained model: mates score above most distractors),
only those scores are binned and the rest go straight to position 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["ThresholdCounter"]

_BUILD_CELLS = 1 << 25  # lookup cells built per step (bounds the build's temporaries)
_SPARSE = 0.1  # below this fraction of scores above their row's lowest threshold, only those are binned
_DENSE_SKIP = 4  # after this many clearly dense blocks in a row, stop testing for the sparse case


class ThresholdCounter:
    """Exact counts of streamed scores strictly above per-row thresholds.

    Args:
        thresholds: one 1-D float32 array per row (any length, finite values).
        offset, factor: bins are ``(s + offset) * factor`` truncated to [0, n_bins - 1]; pick them so the
            expected score range spans the bins (exactness never depends on it, speed does).
        n_bins: G, bins per row.
        device: where the lookup table lives and the counting runs.

    Memory: rows x n_bins lookup entries (int16 when rows * (k_max + 2) < 32768, else int32).
    """

    def __init__(self, thresholds: Sequence, *, offset: float, factor: float, n_bins: int, device="cpu"):
        ts = [np.asarray(t, dtype=np.float32).reshape(-1) for t in thresholds]
        if n_bins < 2 or n_bins > 2 ** 24 or len(ts) * n_bins >= 2 ** 31:
            raise ValueError(f"need 2 <= n_bins <= 2**24 and rows * n_bins < 2**31, got n_bins={n_bins} for "
                             f"{len(ts)} rows")
        self.device = torch.device(device)
        self.factor, self.n_bins = float(factor), int(n_bins)
        self.offset = float(offset) * self.factor
        self.n_rows = len(ts)
        self.k = np.array([len(t) for t in ts], dtype=np.int64)
        self.k_max = int(self.k.max()) if self.n_rows else 0
        self.width = self.k_max + 2  # positions 0..k_max, then the ambiguous marker
        self.amb = self.k_max + 1
        if self.n_rows * self.width >= 2 ** 31:
            raise ValueError(f"{self.n_rows} rows x {self.width} positions is too large for one counter")
        self.value_dtype = torch.int16 if self.n_rows * self.width < 32768 else torch.int32
        sorted_t = np.full((self.n_rows, max(self.k_max, 1)), np.inf, dtype=np.float32)
        self.order = []
        for r, t in enumerate(ts):
            idx = np.argsort(t, kind="stable")
            sorted_t[r, :len(t)] = t[idx]
            self.order.append(idx)
        self.sorted = torch.from_numpy(sorted_t).to(self.device)
        self.row_min = self.sorted[:, 0].clone()  # +inf for rows without thresholds: nothing to count
        self.hist = torch.zeros(self.n_rows * self.width, dtype=torch.int64, device=self.device)
        self.amb_code = (torch.arange(self.n_rows, device=self.device) * self.width + self.amb).to(self.value_dtype)
        self.row_bins = torch.arange(self.n_rows, device=self.device, dtype=torch.int32) * self.n_bins
        # s is clamped to [s_lo, s_hi] so that s * factor + offset stays inside [0, n_bins - 1]
        self.s_lo = -self.offset / self.factor
        self.s_hi = float(np.nextafter(np.float32((self.n_bins - 1 - self.offset) / self.factor), -np.inf))
        if not (self.s_hi * self.factor + self.offset <= self.n_bins - 1):
            raise ValueError(f"bin map (s + {offset}) * {factor} over {n_bins} bins is not representable")
        self._buf: dict = {}
        self._keys = None
        self._dense_streak = 0
        self.lut = self._build_lut()

    def _buffer(self, name: str, numel: int, dtype) -> torch.Tensor:
        b = self._buf.get(name)
        if b is None or b.numel() < numel:
            self._buf.pop(name, None)
            b = torch.empty(numel, dtype=dtype, device=self.device)
            self._buf[name] = b
        return b[:numel]

    def _bins(self, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Flat lookup index ``row * G + g(s)`` of every score: s (R, B) float32, rows (R,) -> int32 (R, B)
        (a reused buffer)."""
        f = self._buffer("f", s.numel(), torch.float32).view(s.shape)
        torch.clamp(s, self.s_lo, self.s_hi, out=f)
        if self.factor != 1.0:
            f.mul_(self.factor)
        f.add_(self.offset)
        g = self._buffer("g", s.numel(), torch.int32).view(s.shape)
        g.copy_(f)
        if self.n_rows > 1:
            g += self.row_bins[rows][:, None]
        return g

    def _build_lut(self) -> torch.Tensor:
        lut = torch.empty(self.n_rows * self.n_bins, dtype=self.value_dtype, device=self.device)
        step = max(1, _BUILD_CELLS // self.n_bins)
        k = torch.as_tensor(self.k, device=self.device)
        for r0 in range(0, self.n_rows, step):
            r1 = min(self.n_rows, r0 + step)
            rows = torch.arange(r0, r1, device=self.device)
            g = (self._bins(self.sorted[r0:r1].clamp(max=3.0e38), rows).to(torch.int64)
                 - self.row_bins[r0:r1, None])  # row-local bins (rows, k_max)
            real = torch.arange(g.shape[1], device=self.device)[None, :] < k[r0:r1, None]
            cnt = torch.zeros((r1 - r0, self.n_bins + 1), dtype=self.value_dtype, device=self.device)
            cnt[:, 0] = (rows * self.width).to(self.value_dtype)
            cnt.scatter_add_(1, torch.where(real, g + 1, self.n_bins), real.to(self.value_dtype))
            block = lut[r0 * self.n_bins:r1 * self.n_bins].view(r1 - r0, self.n_bins)
            torch.cumsum(cnt[:, :self.n_bins], 1, dtype=self.value_dtype, out=block)  # row*width + #{g(t_j) < x}
            rr, cc = real.nonzero(as_tuple=True)
            block[rr, g[rr, cc]] = self.amb_code[r0:r1][rr]
        self._buf.clear()
        return lut

    def update(self, scores: torch.Tensor, rows: torch.Tensor | range) -> None:
        """Count one block: ``scores`` float32 (R, B) on the counter's device, row i being row ``rows[i]``."""
        if isinstance(rows, range):
            rows = torch.arange(rows.start, rows.stop, device=self.device)
        if scores.dim() != 2 or scores.shape[0] != len(rows):
            raise ValueError(f"scores must be (len(rows)={len(rows)}, B), got {tuple(scores.shape)}")
        n_cols = scores.shape[1]
        if n_cols == 0 or len(rows) == 0:
            return
        if not scores.is_cuda and self._dense_streak < _DENSE_SKIP:
            above = self._buffer("m", scores.numel(), torch.bool).view(scores.shape)
            torch.gt(scores, self.row_min[rows][:, None], out=above)
            n_above = above.sum(1)
            frac = float(n_above.sum()) / scores.numel()
            self._dense_streak = self._dense_streak + 1 if frac > 3 * _SPARSE else 0
            if frac < _SPARSE:  # few scores reach a threshold: count only those
                self.hist[rows * self.width] += n_cols - n_above  # the rest have position 0
                flat = torch.from_numpy(np.flatnonzero(above.view(-1).numpy()))
                r_idx, c_idx = flat // n_cols, flat % n_cols
                self._count_sparse(scores[r_idx, c_idx], rows[r_idx])
                return
        g = self._bins(scores, rows)
        vals = self._buffer("v", g.numel(), self.value_dtype)
        torch.index_select(self.lut, 0, g.view(-1), out=vals)
        counts = torch.bincount(vals, minlength=self.n_rows * self.width)
        self.hist += counts
        n_amb = int(counts[rows * self.width + self.amb].sum())
        if n_amb:
            mask = self._buffer("m", g.numel(), torch.bool).view(g.shape)
            torch.eq(vals.view(g.shape), self.amb_code[rows][:, None], out=mask)
            if mask.is_cuda:
                flat = mask.view(-1).nonzero().view(-1)
            else:  # numpy's flatnonzero is several times faster than torch.nonzero / masked_select here
                flat = torch.from_numpy(np.flatnonzero(mask.view(-1).numpy()))
            r_idx, c_idx = flat // n_cols, flat % n_cols
            self._resolve(rows[r_idx], scores[r_idx, c_idx])
            self.hist[rows * self.width + self.amb] = 0

    def _count_sparse(self, s: torch.Tensor, rows: torch.Tensor) -> None:
        """Count scattered scores: s (M,) float32, rows (M,) their rows."""
        if len(s) == 0:
            return
        f = torch.clamp(s, self.s_lo, self.s_hi)
        if self.factor != 1.0:
            f.mul_(self.factor)
        g = f.add_(self.offset).to(torch.int32) + self.row_bins[rows]
        vals = torch.index_select(self.lut, 0, g)
        amb = vals == self.amb_code[rows]
        self.hist += torch.bincount(vals[~amb].to(torch.int64), minlength=self.n_rows * self.width)
        if bool(amb.any()):
            self._resolve(rows[amb], s[amb])

    @staticmethod
    def _order_keys(s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """int64 keys ordered like (row, s): row in the high 32 bits, an order-preserving image of the
        float32 bits of s in the low 32 (-0.0 is first made +0.0, so equal floats get equal keys)."""
        b = (s + 0.0).contiguous().view(torch.int32).to(torch.int64)
        ordered = torch.where(b < 0, -1 - (b & 0x7FFFFFFF), b) + 2 ** 31  # 0 .. 2**32 - 1
        return (rows.to(torch.int64) << 32) | ordered

    def _resolve(self, rows: torch.Tensor, s: torch.Tensor) -> None:
        """Exact positions #{t < s} for scores in ambiguous bins, added to the histogram."""
        if self._keys is None:
            real = torch.arange(self.sorted.shape[1], device=self.device)[None, :] < torch.as_tensor(
                self.k, device=self.device)[:, None]
            r_idx, _ = real.nonzero(as_tuple=True)
            self._keys = self._order_keys(self.sorted[real], r_idx)  # sorted: rows ascending, t ascending
            self._row_start = torch.as_tensor(np.concatenate([[0], np.cumsum(self.k)[:-1]]), device=self.device)
        keys = self._order_keys(s, rows)
        if keys.is_cuda:
            idx = torch.searchsorted(self._keys, keys, side="left")
        else:  # numpy's searchsorted is faster on CPU
            idx = torch.from_numpy(np.searchsorted(self._keys.numpy(), keys.numpy(), side="left"))
        pos = idx - self._row_start[rows]
        self.hist += torch.bincount(rows * self.width + pos, minlength=self.n_rows * self.width)

    def counts_above(self) -> list[np.ndarray]:
        """Per row, int64 (k_r,): how many counted scores were strictly above each threshold (input order)."""
        hist = self.hist.view(self.n_rows, self.width).cpu().numpy()
        hist[:, self.amb] = 0
        tail = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # tail[r, j] = #{s : pos(s) >= j}
        out = []
        for r in range(self.n_rows):
            k = int(self.k[r])
            c = np.empty(k, dtype=np.int64)
            c[self.order[r]] = tail[r, 1:k + 1]  # sorted position j (0-based) needs pos >= j + 1
            out.append(c)
        return out
