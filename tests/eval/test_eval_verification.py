"""10-fold verification: folds as sklearn KFold, accuracy vs a slow loop reference, flip handling."""
import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from facerec.eval.features import ModelFeatureExtractor
from facerec.eval.verification import (
    DEFAULT_THRESHOLDS, evaluate_pairs, kfold_splits, pair_distances, verify,
)


def _reference(embeddings, issame, nfolds, thresholds):
    """Loop re-statement of arcface_torch ``calculate_roc`` accuracy (float64, sklearn KFold)."""
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    dist = np.array([np.sum((emb[2 * i] - emb[2 * i + 1]) ** 2) for i in range(len(issame))])
    accs, best = [], []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(issame))):
        def acc(idx, t):
            return np.mean([(dist[i] < t) == issame[i] for i in idx])
        train_accs = [acc(train, t) for t in thresholds]
        k = int(np.argmax(train_accs))
        accs.append(acc(test, thresholds[k]))
        best.append(thresholds[k])
    return np.mean(accs), np.std(accs), np.mean(best)


@pytest.mark.parametrize("n, k", [(100, 10), (37, 10), (12, 5)])
def test_folds_match_sklearn_kfold(n, k):
    ours = kfold_splits(n, k)
    theirs = list(KFold(n_splits=k, shuffle=False).split(np.arange(n)))
    for (a_train, a_test), (b_train, b_test) in zip(ours, theirs):
        assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)


def test_accuracy_matches_loop_reference():
    rng = np.random.default_rng(0)
    issame = rng.random(203) < 0.5
    base = rng.normal(size=(203, 16))
    other = np.where(issame[:, None], base + rng.normal(scale=0.9, size=base.shape), rng.normal(size=base.shape))
    emb = np.empty((406, 16))
    emb[0::2], emb[1::2] = base, other
    thresholds = DEFAULT_THRESHOLDS[::7]
    got = evaluate_pairs(emb, issame, nfolds=10, thresholds=thresholds)
    acc, std, thr = _reference(emb, issame, 10, thresholds)
    assert got.accuracy == pytest.approx(acc, abs=1e-12) and got.std == pytest.approx(std, abs=1e-12)
    assert got.threshold == pytest.approx(thr, abs=1e-12)
    assert 0.6 < got.accuracy < 0.99  # a non-trivial case
    assert got.fold_accuracies.shape == (10,) and got.tpr.shape == thresholds.shape


def test_perfect_and_chance_separation():
    rng = np.random.default_rng(1)
    issame = np.arange(100) % 2 == 0
    base = rng.normal(size=(100, 8))
    emb = np.repeat(base, 2, axis=0)
    emb[1::2][~issame] = -emb[0::2][~issame]  # impostors point the other way
    perfect = evaluate_pairs(emb, issame)
    assert perfect.accuracy == 1.0 and perfect.std == 0.0
    random_emb = rng.normal(size=(200, 64))
    assert evaluate_pairs(random_emb, issame).accuracy < 0.75


def test_pair_distances_and_errors():
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [5.0, 0.0]])
    assert np.allclose(pair_distances(emb), [2.0, 0.0])
    with pytest.raises(ValueError, match="consecutive rows"):
        pair_distances(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="issame has 3 entries"):
        evaluate_pairs(np.ones((4, 2)), [True, False, True])
    with pytest.raises(ValueError, match="nfolds must be in"):
        evaluate_pairs(np.ones((4, 2)), [True, False], nfolds=10)


class _SideExtractor:
    """Feature = mean of the left and of the right image half (flip swaps them)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        x = images.astype(np.float64)
        half = x.shape[2] // 2
        return np.stack([x[:, :, :half].mean(axis=(1, 2, 3)), x[:, :, half:].mean(axis=(1, 2, 3))], axis=1)


def test_verify_flip_sum_differs_from_noflip_and_batches():
    rng = np.random.default_rng(2)
    p = 20
    images = rng.integers(0, 255, size=(2 * p, 8, 8, 3), dtype=np.uint8)
    images[1::2] = images[0::2][:, :, ::-1]  # second image of each pair is the mirror of the first
    issame = np.arange(p) % 2 == 0
    images[1::2][~issame] = rng.integers(0, 255, size=(p // 2, 8, 8, 3), dtype=np.uint8)
    extractor = _SideExtractor()
    result = verify(extractor, images, issame, batch_size=16, nfolds=5)
    assert extractor.calls == 2 * 3  # 40 images in batches of 16, once plain and once mirrored
    # flip-sum makes a mirrored genuine pair identical: distance 0, so genuine pairs all pass
    assert result.flip.accuracy >= result.noflip.accuracy
    assert result.flip.tpr[1] == 1.0
    metrics = result.as_dict("synth_")
    assert set(metrics) == {"synth_acc", "synth_acc_std", "synth_threshold", "synth_acc_noflip",
                            "synth_acc_noflip_std", "synth_threshold_noflip"}
    with pytest.raises(ValueError, match="2 images per pair"):
        verify(extractor, images[:-1], issame)


def test_verify_with_a_model_extractor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = np.random.default_rng(3).integers(0, 255, size=(40, 16, 16, 3), dtype=np.uint8)
    images[1::2] = images[0::2]
    result = verify(ModelFeatureExtractor(model, "cpu", (16, 16)), images, np.ones(20, bool), nfolds=4)
    assert result.num_pairs == 20 and result.flip.accuracy == 1.0 and result.noflip.accuracy == 1.0


def test_tar_at_far_matches_a_loop_over_thresholds():
    from facerec.eval.verification import tar_at_far

    rng = np.random.default_rng(3)
    issame = np.arange(4000) % 2 == 0
    dist = np.where(issame, rng.normal(1.0, 0.3, 4000), rng.normal(2.0, 0.3, 4000))
    for far in (1e-3, 1e-2, 0.1):
        best = 0.0
        for t in np.unique(dist):  # accept iff dist <= t
            accept = dist <= t
            if np.mean(accept[~issame]) <= far:
                best = max(best, float(np.mean(accept[issame])))
        assert tar_at_far(dist, issame, far) == pytest.approx(best)
    assert tar_at_far(np.r_[0.0, 1.0], np.r_[True, False], 1e-3) == 1.0
    with pytest.raises(ValueError, match="both genuine and impostor"):
        tar_at_far(np.r_[0.0, 1.0], np.r_[True, True], 1e-3)
