"""ThresholdCounter: exact strict counts against a brute-force loop, whatever the bins and blocks."""
import numpy as np
import pytest
import torch

from facerec.eval.megaface_count import ThresholdCounter


@pytest.mark.parametrize("n_bins,factor,k_max", [(12, 2.0, 9), (4096, 1000.0, 9), (64, 4.0, 100)])
def test_counts_match_brute_force_with_ties(n_bins, factor, k_max):
    rng = np.random.default_rng(n_bins + k_max)
    rows, rb = 7, 4
    ks = [k_max, 0, 3, 1, k_max // 2, 5, 2]
    ths = [(rng.integers(-20, 20, k) / 8).astype(np.float32) for k in ks]  # coarse grid: many exact ties
    ths[2][:] = -0.0  # -0.0 and +0.0 are the same score
    c = ThresholdCounter(ths, offset=3.0, factor=factor, n_bins=n_bins)
    blocks = []
    for _ in range(3):
        s = (rng.integers(-30, 30, (rows, 11)) / 8).astype(np.float32)
        s[2, :3] = 0.0
        blocks.append(s)
        for r0 in range(0, rows, rb):
            c.update(torch.from_numpy(s[r0:r0 + rb]), range(r0, min(rows, r0 + rb)))
    scores = np.concatenate(blocks, 1)
    got = c.counts_above()
    for r in range(rows):
        np.testing.assert_array_equal(got[r], [(scores[r] > t).sum() for t in ths[r]])


def test_rows_wholly_below_their_thresholds_are_skipped_but_counted():
    c = ThresholdCounter([np.array([0.5], np.float32), np.array([0.9, -1.0], np.float32)], offset=1.0,
                         factor=100.0, n_bins=256)
    c.update(torch.tensor([[0.1, 0.2, 0.3], [0.95, 0.0, -2.0]]), range(0, 2))
    c.update(torch.tensor([[0.6, 0.5, 0.1], [-5.0, -5.0, -5.0]]), range(0, 2))
    assert [x.tolist() for x in c.counts_above()] == [[1], [1, 2]]


def test_bad_counter_arguments():
    with pytest.raises(ValueError, match="2\\*\\*24"):
        ThresholdCounter([np.zeros(1, np.float32)], offset=1.0, factor=1.0, n_bins=1 << 25)
    c = ThresholdCounter([np.zeros(1, np.float32)] * 2, offset=1.0, factor=1.0, n_bins=8)
    with pytest.raises(ValueError, match="len\\(rows\\)=2"):
        c.update(torch.ones(3, 3), range(0, 2))


def test_sparse_path_when_few_scores_reach_any_threshold():
    rng = np.random.default_rng(5)
    ths = [(rng.integers(40, 64, 6) / 64).astype(np.float32) for _ in range(5)]  # thresholds in [0.625, 1)
    c = ThresholdCounter(ths, offset=1.0, factor=8.0, n_bins=16)  # coarse bins: many ambiguous scores
    s = (rng.integers(-64, 30, (5, 400)) / 64).astype(np.float32)
    s[:, :12] = (rng.integers(40, 64, (5, 12)) / 64)  # 3% reach the thresholds, with exact ties
    c.update(torch.from_numpy(s), range(0, 5))
    assert c.hist.sum() == s.size
    for r, got in enumerate(c.counts_above()):
        np.testing.assert_array_equal(got, [(s[r] > t).sum() for t in ths[r]])
