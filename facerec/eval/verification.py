"""Pair verification with the 10-fold protocol of insightface ``arcface_torch`` (LFW, CFP-FP, AgeDB-30).

Protocol (as arcface_torch's ``verification.py``): embeddings are L2-normalised (the flip variant sums the
embeddings of the image and its horizontal mirror first), the distance of a pair is the squared Euclidean
distance, the pairs are cut into ``nfolds`` contiguous folds by scikit-learn's ``KFold(shuffle=False)``, and
for each fold the threshold from ``arange(0, 4, 0.01)`` with the best accuracy on the other folds is applied
to it. Reported: mean +- std of the per-fold accuracies and the mean chosen threshold, with and without flip,
and the TAR at a given FAR over the whole set (scikit-learn's ``roc_curve``, :func:`tar_at_far`). The maths
are numpy / scikit-learn functions; :func:`verify` runs a FeatureExtractor over a set
(``facerec.eval.features``). Unlike arcface_torch, an empty fold or set raises instead of printing 0, and both
readings are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLDS", "PairScores", "VerificationResult", "evaluate_pairs", "kfold_splits",
    "pair_distances", "tar_at_far", "verify",
]

DEFAULT_THRESHOLDS = np.arange(0.0, 4.0, 0.01)


@dataclass(frozen=True)
class PairScores:
    """k-fold outcome on one embedding set.

    ``accuracy`` / ``std``: mean and standard deviation of the per-fold test accuracies;
    ``threshold``: mean of the per-fold best thresholds (squared L2 distance);
    ``fold_accuracies``: (nfolds,); ``tpr`` / ``fpr``: (T,) mean over folds of the test-fold rates
    at every threshold of the grid (an ROC curve).
    """
    accuracy: float
    std: float
    threshold: float
    fold_accuracies: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray


@dataclass(frozen=True)
class VerificationResult:
    """Both readings of one pair set: with flip (the figure usually quoted) and without.

    ``tar``: {FAR: TAR} of the flip reading over all pairs (:func:`tar_at_far`), for the FARs asked of
    :func:`verify`.
    """
    flip: PairScores
    noflip: PairScores
    num_pairs: int
    tar: dict[float, float] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        """Flat scalars: ``{prefix}acc``, ``acc_std``, ``threshold``, ``acc_noflip``, ..."""
        return {
            f"{prefix}acc": self.flip.accuracy, f"{prefix}acc_std": self.flip.std,
            f"{prefix}threshold": self.flip.threshold,
            f"{prefix}acc_noflip": self.noflip.accuracy, f"{prefix}acc_noflip_std": self.noflip.std,
            f"{prefix}threshold_noflip": self.noflip.threshold,
        }


def kfold_splits(n: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous folds: ``sklearn.model_selection.KFold(nfolds, shuffle=False)`` over ``range(n)``.

    The first ``n % nfolds`` folds hold one extra item. Returns ``[(train_idx, test_idx), ...]``.
    """
    from sklearn.model_selection import KFold

    if not 2 <= nfolds <= n:
        raise ValueError(f"nfolds must be in [2, number of pairs={n}], got {nfolds}")
    return list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(n)))


def tar_at_far(distances: np.ndarray, issame: np.ndarray, far: float) -> float:
    """True accept rate at the largest threshold whose false accept rate is at most ``far``.

    ``distances`` (P,) of pairs (smaller = more alike), ``issame`` (P,) bool. The ROC is scikit-learn's
    ``roc_curve`` over all pairs (no folds). Returns 0.0 when no threshold reaches the FAR (e.g. too few
    impostor pairs: FAR 1e-3 needs at least 1,000 for one false accept).
    """
    from sklearn.metrics import roc_curve

    issame = np.asarray(issame, dtype=bool).reshape(-1)
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    if distances.shape != issame.shape:
        raise ValueError(f"{distances.shape[0]} distances but {issame.shape[0]} issame entries")
    if issame.all() or not issame.any():
        raise ValueError("TAR at FAR needs both genuine and impostor pairs")
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    fpr, tpr, _ = roc_curve(issame, -distances)
    ok = fpr <= far
    return float(tpr[ok].max()) if ok.any() else 0.0


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of pairs (rows 2i, 2i+1) after L2-normalising each row.

    Args:
        embeddings: (2P, D) float.

    Returns:
        (P,) float64 in [0, 4].
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise ValueError(f"embeddings must be (2P, D) with pairs in consecutive rows, got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.maximum(norms, 1e-12)
    diff = emb[0::2] - emb[1::2]
    return np.sum(diff * diff, axis=1)


def _rates(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray):
    """(T,) tpr, fpr, accuracy of ``predict same iff dist < threshold`` for every threshold."""
    pred = dist[None, :] < thresholds[:, None]
    tp = np.sum(pred & issame, axis=1)
    fp = np.sum(pred & ~issame, axis=1)
    tn = np.sum(~pred & ~issame, axis=1)
    fn = np.sum(~pred & issame, axis=1)
    tpr = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), 0.0)
    return tpr, fpr, (tp + tn) / dist.size


def evaluate_pairs(embeddings: np.ndarray, issame: np.ndarray, *, nfolds: int = 10,
                   thresholds: np.ndarray = DEFAULT_THRESHOLDS) -> PairScores:
    """k-fold verification accuracy of a pair set from its embeddings.

    Args:
        embeddings: (2P, D); pair i is rows 2i and 2i+1 (L2-normalised here).
        issame: (P,) bool, True for a genuine pair.
        nfolds: number of contiguous folds (10 in the standard protocol).
        thresholds: (T,) squared-distance grid searched on the training folds.
    """
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    dist = pair_distances(embeddings)
    if dist.shape[0] != issame.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings make {dist.shape[0]} pairs but issame has "
                         f"{issame.shape[0]} entries")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    accs, best, tprs, fprs = [], [], [], []
    for train_idx, test_idx in kfold_splits(dist.shape[0], nfolds):
        _, _, train_acc = _rates(dist[train_idx], issame[train_idx], thresholds)
        k = int(np.argmax(train_acc))  # the first of equally good thresholds, as arcface_torch
        tpr, fpr, test_acc = _rates(dist[test_idx], issame[test_idx], thresholds)
        accs.append(test_acc[k])
        best.append(thresholds[k])
        tprs.append(tpr)
        fprs.append(fpr)
    accs_arr = np.asarray(accs, dtype=np.float64)
    return PairScores(accuracy=float(accs_arr.mean()), std=float(accs_arr.std()),
                      threshold=float(np.mean(best)), fold_accuracies=accs_arr,
                      tpr=np.mean(tprs, axis=0), fpr=np.mean(fprs, axis=0))


def _batches(images: np.ndarray, batch_size: int, mirror: bool):
    from facerec.data.transforms import hflip

    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        yield hflip(batch) if mirror else batch


def verify(extractor, images: np.ndarray, issame: np.ndarray, *, batch_size: int = 256,
           nfolds: int = 10, fars: tuple[float, ...] = ()) -> VerificationResult:
    """Score one .bin set through a FeatureExtractor, with and without flip.

    As arcface_torch, each image and its mirror are embedded once; the no-flip reading normalises
    the image's embedding, the flip reading the sum of both. This runs in the calling process only
    (batches are passed as an iterable, so ``extract_features`` does not shard over torchrun ranks).

    Args:
        extractor: callable uint8 (N, H, W, 3) RGB -> (N, D) floats, e.g.
            ``facerec.eval.features.ModelFeatureExtractor(model, device, input_size)``.
        images: (2P, H, W, 3) uint8 RGB, pairs in consecutive rows (``read_bin`` output).
        issame: (P,) bool.
        batch_size: images per extractor call.
        nfolds: folds of the protocol.
        fars: false accept rates at which the TAR of the flip reading is reported (``result.tar``; NaN for a
            set without both genuine and impostor pairs).
    """
    from facerec.eval.features import extract_features

    issame = np.asarray(issame, dtype=bool).reshape(-1)
    images = np.asarray(images)
    if len(images) != 2 * len(issame):
        raise ValueError(f"a pair set needs 2 images per pair: got {len(images)} images and "
                         f"{len(issame)} pairs")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    kw = dict(batch_size=batch_size, flip=False, normalize=False)
    plain = extract_features(extractor, _batches(images, batch_size, False), **kw)
    mirrored = extract_features(extractor, _batches(images, batch_size, True), **kw)
    fused = plain + mirrored
    both_kinds = bool(issame.any() and not issame.all())  # TAR at FAR needs genuine and impostor pairs
    tar = {far: tar_at_far(pair_distances(fused), issame, far) if both_kinds else float("nan") for far in fars}
    return VerificationResult(flip=evaluate_pairs(fused, issame, nfolds=nfolds),
                              noflip=evaluate_pairs(plain, issame, nfolds=nfolds),
                              num_pairs=len(issame), tar=tar)
