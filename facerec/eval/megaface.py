"""MegaFace Challenge 1 scoring (FaceScrub probes vs. up to 1M distractors), exactly as the devkit.

Follows the official devkit (protocol: docs/megaface.md):

* identification: every ordered pair (a, b) of distinct same-identity probe images is a trial; its rank is
  r(a, b) = #{distractors d : s(a, d) > s(a, b)} (strict: ties go to the mate); CMC(r) is the fraction of trials
  with rank <= r (micro-average), rank-1 = CMC(0);
* verification: positives are the unordered same-identity pairs i < j, negatives the FIRST 100 probe-list
  images x every distractor; sorted descending with ties positive-first, TAR at k false accepts is
  #{positives p : #{negatives > p} <= k} / #positives, and FAR = k / #negatives;
* refined lists: noisy probe images are replaced by the L2-normalised mean of their identity's non-noisy
  features; noisy distractors score -inf (never above a mate, still counted in N and the negatives);
* scores are cosine similarities of L2-normalised float32 features (the devkit's -||x - y||^2 orders them
  the same way); every score comes from one fixed-shape GEMM, so an exact duplicate of a mate ties exactly.

Distractors are streamed in blocks; nothing of size probes x distractors is kept. Counting is exact
(:mod:`facerec.eval.megaface_count`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Sequence

import numpy as np
import torch

from .features import l2_normalize
from .megaface_count import ThresholdCounter

__all__ = ["evaluate", "clean_probe_features", "quantize_curve", "devkit_json", "SCORE_SCALE"]

log = logging.getLogger(__name__)

SCORE_SCALE = 2.0 ** 14  # probes are scaled by this exact power of two so scores span the counter's bins
_ID_BINS = 1 << 15


def clean_probe_features(features: np.ndarray, ids: Sequence, noisy: np.ndarray) -> tuple[np.ndarray, list]:
    """Refined-list probe cleaning: each noisy row -> the L2-normalised mean of its identity's non-noisy rows.

    features: L2-normalised float32 (P, D); noisy: bool (P,). Returns (features copy, identities left
    unchanged because all their images are noisy).
    """
    out = features.copy()
    ids = np.asarray([str(i) for i in ids])
    skipped = []
    for ident in np.unique(ids[noisy]):
        members = ids == ident
        clean = members & ~noisy
        if not clean.any():
            skipped.append(str(ident))
            continue
        centre = l2_normalize(features[clean].astype(np.float64).mean(0, keepdims=True).astype(np.float32))
        out[members & noisy] = centre[0]
    if skipped:
        log.warning("all images of %d identities are on the noise list; kept as they are: %s", len(skipped),
                    skipped[:5])
    return out, skipped


def quantize_curve(xs: np.ndarray, ys: np.ndarray, step: float = 0.01, strict: bool = False):
    """Devkit JSON thinning of a non-decreasing curve given at its change points (xs ascending).

    Keeps the first point, every point whose y rose by >= step (> step when ``strict``) since the last
    kept point, and the last point. Returns (kept xs list, kept ys list).
    """
    kx, ky = [], []
    last = None
    for x, y in zip(xs.tolist(), ys.tolist()):
        if last is None or (y - last > step if strict else y - last >= step):
            kx.append(x)
            ky.append(y)
            last = y
    if len(xs) and kx[-1] != xs[-1]:
        kx.append(xs[-1].item())
        ky.append(ys[-1].item())
    return kx, ky


def devkit_json(result: dict) -> dict:
    """The devkit's ``cmc_*.json`` shape: {"cmc": [[ranks], [values]], "roc": [[fpr], [tpr]]} (0-based ranks)."""
    return {"cmc": [result["cmc_curve"]["rank"], result["cmc_curve"]["value"]],
            "roc": [result["roc_curve"]["fpr"], result["roc_curve"]["tpr"]]}


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _check_features(x, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{name} must be (N, {dim if dim else 'D'}), got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x).all(1))[:, 0]
        raise ValueError(f"{name} has {len(bad)} row(s) with NaN/inf values, first row {int(bad[0])}")
    return l2_normalize(x)


def evaluate(probe_feats, probe_ids: Sequence, distractor_feats, *, probe_noise=None, distractor_noise=None,
             block_size: int = 8192, device=None, roc_probes: int = 100,
             far_targets: Sequence[float] = (1e-6, 1e-5, 1e-4), cmc_ranks: Sequence[int] = (1, 5, 10),
             roc_bins: int = 1 << 22, progress: bool = False) -> dict:
    """Score one probe set against one distractor set (MegaFace Challenge 1, refined when masks are given).

    Args:
        probe_feats: float (P, D) probe features in probe-list order (normalised here).
        probe_ids: P identity labels; each identity's images form its trials.
        distractor_feats: float (N, D); anything sliceable by rows (numpy array, memmap, a block reader).
        probe_noise, distractor_noise: optional bool masks (P,) / (N,) from the noise lists.
        block_size: distractors per block (W); memory is about 17*P*W bytes of block buffers plus the
            lookup table, 4*P*2**15 bytes (about 0.9 GB at P = 3,530, W = 8,192).
        device: torch device for the GEMM and counting; default cuda when available, else cpu. TF32 is off.
        roc_probes: how many leading probe-list images give the ROC negatives (the devkit uses 100).
        far_targets, cmc_ranks: reported TAR@FAR and CMC points (ranks 1-based: CMC@1 = rank-1).
        roc_bins: bins of the ROC counter (speed only).
        progress: tqdm bar over distractor blocks.

    Returns a dict: rank1, cmc {"1": ..}, tar_at_far {"1e-06": ..}, num_trials, num_distractors,
    num_distractors_removed, feature_dim, num_probes, num_identities, num_probes_replaced, roc_* details,
    cmc_curve / roc_curve (devkit-quantised), rank_histogram (trials per rank, trimmed).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    P, ids, n_replaced = _check_probes(probe_feats, probe_ids, probe_noise)
    n_p, dim = P.shape
    n_d, keep_d = _check_distractors(distractor_feats, distractor_noise, dim)
    members, mates, (pos_i, pos_j) = _identity_groups(ids)
    W = int(min(block_size, max(n_d, 1)))
    W = max(8, -(-W // 8) * 8)  # one fixed GEMM shape (P, D) x (D, W) for every score
    n_roc = min(roc_probes, n_p)

    with _no_tf32(), torch.no_grad():
        gemm = _BlockGemm(P, W, device)
        PPn = _probe_scores(gemm)
        thresholds = [PPn[a, mates[a]] for a in range(n_p)]
        positives = PPn[pos_i, pos_j]
        id_bins = min(_ID_BINS, _pow2_at_least(4 * n_d))  # bins only set the speed; small sets need few
        roc_bins = min(roc_bins, _pow2_at_least(4 * n_roc * n_d))
        id_counter = ThresholdCounter(thresholds, offset=SCORE_SCALE, factor=id_bins / (2 * SCORE_SCALE),
                                      n_bins=id_bins, device=device)
        roc_counter = ThresholdCounter([positives], offset=SCORE_SCALE, factor=roc_bins / (2 * SCORE_SCALE),
                                       n_bins=roc_bins, device=device)
        _score_distractors(gemm, distractor_feats, keep_d, id_counter, roc_counter, n_roc, progress)

    ranks = np.concatenate(id_counter.counts_above()) if n_p else np.zeros(0, np.int64)
    fa = roc_counter.counts_above()[0]
    return _summarise(ranks, fa, n_d=n_d, n_removed=0 if keep_d is None else int((~keep_d).sum()), dim=dim,
                      n_p=n_p, n_ids=len(members), n_replaced=n_replaced, n_roc=n_roc, far_targets=far_targets,
                      cmc_ranks=cmc_ranks)


def _check_probes(probe_feats, probe_ids, probe_noise) -> tuple[np.ndarray, np.ndarray, int]:
    """Normalised probe features (noisy rows cleaned when a noise mask is given), ids as strings, rows replaced."""
    P = _check_features(probe_feats, "probe_feats")
    n_p = P.shape[0]
    ids = np.asarray([str(i) for i in probe_ids])
    if len(ids) != n_p:
        raise ValueError(f"probe_ids has {len(ids)} entries for {n_p} probe features")
    if probe_noise is None:
        return P, ids, 0
    probe_noise = np.asarray(probe_noise, dtype=bool)
    if probe_noise.shape != (n_p,):
        raise ValueError(f"probe_noise must be a bool mask of shape ({n_p},), got {probe_noise.shape}")
    P, _ = clean_probe_features(P, ids, probe_noise)
    return P, ids, int(probe_noise.sum())


def _check_distractors(distractor_feats, distractor_noise, dim: int) -> tuple[int, np.ndarray | None]:
    """(number of distractors, bool mask of the kept ones or None when no noise mask is given)."""
    n_d = len(distractor_feats)
    d_shape = getattr(distractor_feats, "shape", None)
    if d_shape is not None and (len(d_shape) != 2 or d_shape[1] != dim):
        raise ValueError(f"distractor_feats must be (N, {dim}) like the probes, got shape {tuple(d_shape)}")
    if distractor_noise is None:
        return n_d, None
    distractor_noise = np.asarray(distractor_noise, dtype=bool)
    if distractor_noise.shape != (n_d,):
        raise ValueError(f"distractor_noise must be a bool mask of shape ({n_d},), got {distractor_noise.shape}")
    return n_d, ~distractor_noise


def _identity_groups(ids: np.ndarray):
    """(row indices of each identity, each probe's mates, (i, j) of the same-identity pairs i < j)."""
    n_p = len(ids)
    _, codes = np.unique(ids, return_inverse=True)
    members = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)] if n_p else []
    mates = [None] * n_p
    for m in members:
        for a in m:
            mates[a] = m[m != a]
    pos_i, pos_j = [], []
    for m in members:
        ii, jj = np.triu_indices(len(m), 1)
        pos_i.append(m[ii])
        pos_j.append(m[jj])
    pos_i = np.concatenate(pos_i) if pos_i else np.zeros(0, np.int64)
    pos_j = np.concatenate(pos_j) if pos_j else np.zeros(0, np.int64)
    return members, mates, (pos_i, pos_j)


class _BlockGemm:
    """Every score through one fixed-shape GEMM, (P, D) x (D, W): probes scaled by SCORE_SCALE (exact, a power
    of two) against a zero-padded block of at most W rows, so equal features give bit-equal scores."""

    def __init__(self, probes: np.ndarray, width: int, device) -> None:
        n_p, dim = probes.shape
        self.width, self.dim, self.device = width, dim, device
        self.probes = torch.from_numpy(probes).to(device)
        self._scaled = self.probes * SCORE_SCALE
        self._out = torch.empty((n_p, width), dtype=torch.float32, device=device)
        self._block = torch.zeros((width, dim), dtype=torch.float32, device=device)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Scores (P, len(rows)) of the probes against ``rows`` (at most W of them, D wide)."""
        self._block.zero_()
        self._block[:len(rows)] = rows
        torch.matmul(self._scaled, self._block.T, out=self._out)
        return self._out[:, :len(rows)]


def _probe_scores(gemm: _BlockGemm) -> np.ndarray:
    """Probe x probe scores (P, P) through the same GEMM shape as the distractors."""
    n_p = gemm.probes.shape[0]
    scores = torch.empty((n_p, n_p), dtype=torch.float32, device=gemm.device)
    for c0 in range(0, n_p, gemm.width):
        c1 = min(n_p, c0 + gemm.width)
        scores[:, c0:c1] = gemm(gemm.probes[c0:c1])
    return scores.cpu().numpy()


def _score_distractors(gemm: _BlockGemm, distractor_feats, keep_d, id_counter, roc_counter, n_roc: int,
                       progress: bool) -> None:
    """Stream the distractors in blocks of W rows (noisy ones dropped) into the two counters."""
    W, n_p = gemm.width, gemm.probes.shape[0]
    roc_rows = torch.zeros(1, dtype=torch.int64, device=gemm.device)
    starts = range(0, len(distractor_feats), W)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="distractor blocks", unit="block")
    for d0 in starts:
        block = np.asarray(distractor_feats[d0:d0 + W])
        if keep_d is not None:
            block = block[keep_d[d0:d0 + W]]
        w = len(block)
        if w == 0:
            continue
        block = _check_features(block, f"distractor_feats[{d0}:{d0 + W}]", gemm.dim)
        S = gemm(torch.from_numpy(block).to(gemm.device))
        if n_roc:
            roc_counter.update(S[:n_roc].reshape(1, -1), roc_rows)
        id_counter.update(S, range(0, n_p))


def _pow2_at_least(n: int) -> int:
    return 1 << max(6, int(n - 1).bit_length())


def _far_key(f: float) -> str:
    return f"{f:.0e}"


def _step_points(values: np.ndarray, total: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Change points of x -> #{values <= x} / total for x in 0..end: (xs from 0 to end, fractions)."""
    xs = np.unique(np.concatenate([[0], values, [end]]).astype(np.int64))
    ys = np.searchsorted(np.sort(values), xs, side="right") / max(total, 1)
    return xs, ys


def _summarise(ranks, fa, *, n_d, n_removed, dim, n_p, n_ids, n_replaced, n_roc, far_targets, cmc_ranks) -> dict:
    n_t = len(ranks)
    hist = np.bincount(ranks, minlength=1) if n_t else np.zeros(1, np.int64)
    cum = np.cumsum(hist)
    res: dict = {"num_trials": int(n_t), "num_distractors": int(n_d), "num_distractors_removed": int(n_removed),
                 "feature_dim": int(dim), "num_probes": int(n_p), "num_identities": int(n_ids),
                 "num_probes_replaced": int(n_replaced)}
    res["rank1"] = float(cum[0] / n_t) if n_t else None
    res["cmc"] = {str(k): (float(cum[min(k - 1, len(cum) - 1)] / n_t) if n_t else None) for k in cmc_ranks}
    change = np.flatnonzero(hist)
    xs, ys = _step_points(ranks, n_t, n_d)
    r, v = quantize_curve(xs, np.asarray(ys, np.float32).astype(np.float64))
    res["cmc_curve"] = {"rank": [int(x) for x in r], "value": [float(y) for y in v]}
    res["rank_histogram"] = {"rank": [int(x) for x in change[:1000]], "trials": [int(hist[x]) for x in change[:1000]]}

    n_neg = n_roc * n_d
    n_pos = len(fa)
    res["roc_probe_images"] = int(n_roc)
    res["roc_negatives"] = int(n_neg)
    res["roc_positives"] = int(n_pos)
    res["roc_note"] = ("negatives: the first 100 probe-list images x all distractors (devkit rule)" if n_roc == 100
                       else f"negatives: only {n_roc} probe-list images x all distractors (the devkit uses the "
                            f"first 100; this probe list has fewer)")
    tar, ks = {}, {}
    fa_sorted = np.sort(fa)
    for f in far_targets:
        k = int(math.floor(f * n_neg * (1 + 1e-12)))
        ks[_far_key(f)] = k
        tar[_far_key(f)] = float(np.searchsorted(fa_sorted, k, side="right") / n_pos) if n_pos else None
    res["tar_at_far"] = tar
    res["tar_at_far_false_accepts"] = ks
    if n_pos and n_neg:
        xs, ys = _step_points(fa, n_pos, n_neg)
        fx, fy = quantize_curve(xs, np.asarray(ys, np.float32).astype(np.float64), strict=True)
        res["roc_curve"] = {"fpr": [float(np.float32(x / n_neg)) for x in fx], "tpr": [float(y) for y in fy]}
    else:
        res["roc_curve"] = {"fpr": [], "tpr": []}
    return res
