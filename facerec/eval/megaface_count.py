"""Exact streamed threshold counting: for each row, how many streamed scores lie strictly above each threshold.

This is the inner loop of the MegaFace evaluator (``specs/megaface-protocol.md`` sections 4-5): a trial's rank
is the number of distractor scores strictly above the probe-mate score, and a positive pair's false-accept
count is the number of ROC negatives strictly above it. Scores arrive as (R, B) blocks and are never kept.

Method (exact, no sort): row r maps a score s to a bin ``g_r(s) = trunc(clamp(s * factor + c_r, lo_r, hi_r))``,
a monotone non-decreasing float pipeline applied identically to the row's scores and thresholds (c_r places
row r's G bins at ``(r mod R_b) * G`` inside its block). For sorted thresholds t_1 <= ... <= t_k the position
``pos(s) = #{j : t_j < s}`` equals ``#{j : g(t_j) < g(s)}`` whenever no threshold shares the bin g(s)
(monotonicity), so a per-row lookup table over the G bins gives it with one gather. Bins holding a threshold
are marked ambiguous and their few scores are compared exactly. A per-row histogram of positions then gives
``count(s > t_j) = #{s : pos(s) >= j}`` (ties are not counted: strict).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["ThresholdCounter"]

_BUILD_CELLS = 1 << 25  # lookup cells built per step (bounds the build's temporaries)


class ThresholdCounter:
    """Exact counts of streamed scores strictly above per-row thresholds.

    Args:
        thresholds: one 1-D float32 array per row (any length, finite values).
        offset, factor: bins are ``(s + offset) * factor`` truncated to [0, n_bins - 1]; pick them so the
            expected score range spans the bins (exactness never depends on it, speed does).
        n_bins: G, bins per row. ``rows_per_block * n_bins`` must be <= 2**24 (exact float offsets).
        rows_per_block: R_b; :meth:`update` takes rows of one aligned block [b*R_b, (b+1)*R_b).
        device: where the lookup table lives and the counting runs.

    Memory: rows x n_bins lookup entries (int16 when rows_per_block * (k_max + 2) < 32768, else int32).
    """

    def __init__(self, thresholds: Sequence, *, offset: float, factor: float, n_bins: int,
                 rows_per_block: int, device="cpu"):
        if n_bins < 2 or rows_per_block < 1 or rows_per_block * n_bins > 2 ** 24:
            raise ValueError(f"need n_bins >= 2, rows_per_block >= 1 and rows_per_block * n_bins <= 2**24, got "
                             f"n_bins={n_bins}, rows_per_block={rows_per_block}")
        self.device = torch.device(device)
        self.factor, self.n_bins, self.rows_per_block = float(factor), int(n_bins), int(rows_per_block)
        self.offset = float(offset) * self.factor
        ts = [np.asarray(t, dtype=np.float32).reshape(-1) for t in thresholds]
        self.n_rows = len(ts)
        self.k = np.array([len(t) for t in ts], dtype=np.int64)
        self.k_max = int(self.k.max()) if self.n_rows else 0
        self.width = self.k_max + 2  # positions 0..k_max, then the ambiguous marker
        self.amb = self.k_max + 1
        self.value_dtype = torch.int16 if self.rows_per_block * self.width < 32768 else torch.int32
        sorted_t = np.full((self.n_rows, max(self.k_max, 1)), np.inf, dtype=np.float32)
        self.order = []
        for r, t in enumerate(ts):
            idx = np.argsort(t, kind="stable")
            sorted_t[r, :len(t)] = t[idx]
            self.order.append(idx)
        self.sorted = torch.from_numpy(sorted_t).to(self.device)
        self.row_min = self.sorted[:, 0].clone()  # +inf for rows without thresholds: nothing to count
        self.hist = torch.zeros((self.n_rows, self.width), dtype=torch.int64, device=self.device)
        local = torch.arange(self.n_rows, device=self.device) % self.rows_per_block
        self.amb_code = (local * self.width + self.amb).to(self.value_dtype)
        self.bin_lo = (local * self.n_bins).to(torch.float32)
        self.bin_shift = self.bin_lo + self.offset
        # s is clamped to [s_lo, s_hi] so that s * factor + offset stays inside [0, n_bins - 1]
        self.s_lo = -self.offset / self.factor
        self.s_hi = float(np.nextafter(np.float32((self.n_bins - 1 - self.offset) / self.factor), -np.inf))
        if not (self.s_hi * self.factor + self.offset <= self.n_bins - 1):
            raise ValueError(f"bin map (s + {offset}) * {factor} over {n_bins} bins is not representable")
        self._buf: dict = {}
        self._keys = None
        self.lut = self._build_lut()

    def _buffer(self, name: str, numel: int, dtype) -> torch.Tensor:
        b = self._buf.get(name)
        if b is None or b.numel() < numel:
            b = torch.empty(numel, dtype=dtype, device=self.device)
            self._buf[name] = b
        return b[:numel]

    def _bins(self, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Block-local bin index of every score: s (R, B) float32, rows (R,) -> int32 (R, B) (a buffer)."""
        f = self._buffer("f", s.numel(), torch.float32).view(s.shape)
        torch.clamp(s, self.s_lo, self.s_hi, out=f)  # scalar clamp first: cheap, and keeps bins in the row
        if self.factor != 1.0:
            f.mul_(self.factor)
        f.add_(self.bin_shift[rows][:, None])
        g = self._buffer("g", s.numel(), torch.int32).view(s.shape)
        g.copy_(f)
        return g

    def _build_lut(self) -> torch.Tensor:
        lut = torch.empty(self.n_rows * self.n_bins, dtype=self.value_dtype, device=self.device)
        step = max(1, min(self.rows_per_block, _BUILD_CELLS // self.n_bins))
        k = torch.as_tensor(self.k, device=self.device)
        for r0 in range(0, self.n_rows, step):
            r1 = min(self.n_rows, r0 + step)
            rows = torch.arange(r0, r1, device=self.device)
            g = (self._bins(self.sorted[r0:r1].clamp(max=3.0e38), rows).to(torch.int64)
                 - (rows % self.rows_per_block)[:, None] * self.n_bins)  # row-local bins (rows, k_max)
            real = torch.arange(g.shape[1], device=self.device)[None, :] < k[r0:r1, None]
            cnt = torch.zeros((r1 - r0, self.n_bins + 1), dtype=self.value_dtype, device=self.device)
            cnt[:, 0] = ((rows % self.rows_per_block) * self.width).to(self.value_dtype)
            cnt.scatter_add_(1, torch.where(real, g + 1, self.n_bins), real.to(self.value_dtype))
            block = lut[r0 * self.n_bins:r1 * self.n_bins].view(r1 - r0, self.n_bins)
            torch.cumsum(cnt[:, :self.n_bins], 1, dtype=self.value_dtype, out=block)  # off + #{g(t_j) < x}
            amb = self.amb_code[r0:r1, None].expand_as(g)
            rr, cc = real.nonzero(as_tuple=True)
            block[rr, g[rr, cc]] = amb[rr, cc]
        self._buf.clear()
        return lut

    def update(self, scores: torch.Tensor, rows: torch.Tensor | range) -> None:
        """Count one block: ``scores`` float32 (R, B) on the counter's device, row i being global row
        ``rows[i]``; all rows inside one aligned block of ``rows_per_block``."""
        if isinstance(rows, range):
            rows = torch.arange(rows.start, rows.stop, device=self.device)
        if scores.dim() != 2 or scores.shape[0] != len(rows):
            raise ValueError(f"scores must be (len(rows)={len(rows)}, B), got {tuple(scores.shape)}")
        n_cols = scores.shape[1]
        if n_cols == 0 or len(rows) == 0:
            return
        base = int(rows[0]) - int(rows[0]) % self.rows_per_block
        if int(rows.max()) >= base + self.rows_per_block or int(rows.min()) < base:
            raise ValueError(f"rows {int(rows.min())}..{int(rows.max())} span more than one aligned block of "
                             f"{self.rows_per_block} rows")
        active = scores.amax(1) > self.row_min[rows]
        n_active = int(active.sum())
        if n_active <= len(rows) // 2:  # most rows lie wholly at or below their lowest threshold: skip them
            self.hist[rows[~active], 0] += n_cols
            if n_active == 0:
                return
            scores, rows = scores[active], rows[active]
        g = self._bins(scores, rows)
        lut = self.lut[base * self.n_bins:(base + self.rows_per_block) * self.n_bins]
        vals = self._buffer("v", g.numel(), self.value_dtype)
        torch.index_select(lut, 0, g.view(-1), out=vals)
        counts = torch.bincount(vals, minlength=self.rows_per_block * self.width)
        counts = counts.view(self.rows_per_block, self.width)[rows - base]
        self.hist[rows] += counts
        n_amb = counts[:, self.amb]
        if int(n_amb.sum()):
            mask = self._buffer("m", g.numel(), torch.bool).view(g.shape)
            torch.eq(vals.view(g.shape), self.amb_code[rows][:, None], out=mask)
            s_amb = torch.masked_select(scores, mask)  # row-major, so rows repeat by their counts
            self._resolve(torch.repeat_interleave(rows, n_amb), s_amb)
            self.hist[rows, self.amb] = 0

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
        pos = torch.searchsorted(self._keys, self._order_keys(s, rows), side="left") - self._row_start[rows]
        flat = torch.bincount(rows * self.width + pos, minlength=self.n_rows * self.width)
        self.hist += flat.view(self.n_rows, self.width)

    def counts_above(self) -> list[np.ndarray]:
        """Per row, int64 (k_r,): how many counted scores were strictly above each threshold (input order)."""
        hist = self.hist.cpu().numpy()
        hist[:, self.amb] = 0
        tail = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # tail[r, j] = #{s : pos(s) >= j}
        out = []
        for r in range(self.n_rows):
            k = int(self.k[r])
            c = np.empty(k, dtype=np.int64)
            c[self.order[r]] = tail[r, 1:k + 1]  # sorted position j (0-based) needs pos >= j + 1
            out.append(c)
        return out
