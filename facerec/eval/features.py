"""Feature extraction for evaluation: the FeatureExtractor contract, a model wrapper, batched flip fusion.

Evaluation sees a model only through a *FeatureExtractor*: any callable mapping a uint8 RGB batch
(N, H, W, 3) to float features (N, D) (numpy or torch). :class:`ModelFeatureExtractor` wraps a backbone
(eval mode, no_grad, the one normalisation of ``facerec.data.transforms``). :func:`extract_features` batches,
fuses the mirrored image by summing (InsightFace ``gen_megaface.py``) and
L2-normalises; under torchrun (an initialised process group with several ranks) an array input is split into
contiguous shards, one per rank, and the result gathered on every rank. A single process starts no group.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol, Union

import numpy as np
import torch

__all__ = ["FeatureExtractor", "ModelFeatureExtractor", "extract_features", "l2_normalize", "dist_rank_world"]

log = logging.getLogger(__name__)


class FeatureExtractor(Protocol):
    """uint8 RGB images (N, H, W, 3) -> float features (N, D), numpy array or torch tensor."""

    def __call__(self, images: np.ndarray) -> Union[np.ndarray, torch.Tensor]: ...


def dist_rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialised default process group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation of (N, D) -> float32 (N, D); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    return x / np.maximum(norms, eps)[:, None]


class ModelFeatureExtractor:
    """Wrap a backbone ``model`` ((B, 3, h, w) float -> (B, D)) as a FeatureExtractor.

    Args:
        model: the backbone; put in eval mode and run under ``torch.no_grad``.
        device: where the forward runs ("cpu", "cuda", "cuda:1", or a torch.device).
        input_size: (h, w) the model takes: (112, 112), or (112, 96) which centre-crops 112x112 images.

    Call: uint8 RGB (N, H, W, 3) numpy/torch -> float32 numpy (N, D).
    """

    def __init__(self, model: torch.nn.Module, device="cpu", input_size=(112, 112)):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != 2 or min(input_size) <= 0:
            raise ValueError(f"input_size must be (height, width), got {input_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size = input_size

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        from facerec.data.transforms import crop_to_input_size, normalize

        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got shape {images.shape}")
        images = crop_to_input_size(images, self.input_size)
        x = normalize(np.ascontiguousarray(images)).to(self.device)
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model must return (N={x.shape[0]}, D) features, got {shape}")
        return out.float().cpu().numpy()


def _as_numpy(feats, n: int) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().float().cpu().numpy()
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(f"feature extractor must return (N={n}, D) features, got shape {feats.shape}")
    return feats


def _extract_batches(extractor: Callable, batches: Iterable, flip: bool, normalize: bool) -> np.ndarray:
    outs = []
    for batch in batches:
        if isinstance(batch, torch.Tensor):
            batch = batch.cpu().numpy()
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"image batches must be uint8 (N, H, W, 3), got {batch.dtype} {batch.shape}")
        n = batch.shape[0]
        if n == 0:
            continue
        if flip:
            from facerec.data.transforms import hflip

            both = _as_numpy(extractor(np.concatenate([batch, hflip(batch)])), 2 * n)
            f = both[:n] + both[n:]
        else:
            f = _as_numpy(extractor(batch), n)
        outs.append(l2_normalize(f) if normalize else f)
    if not outs:
        return np.empty((0, 0), dtype=np.float32)
    return np.concatenate(outs)


def extract_features(extractor: Callable, images, *, batch_size: int = 128, flip: bool = True,
                     normalize: bool = True, progress: bool = False, shard: bool = True) -> np.ndarray:
    """Features of every image -> float32 (N, D).

    Args:
        extractor: a FeatureExtractor (uint8 (n, H, W, 3) -> (n, D)).
        images: uint8 RGB array/tensor (N, H, W, 3), or an iterable of such batches (used as given).
        batch_size: images per extractor call (the flipped copies go into the same call).
        flip: add the features of the left-right mirrored image (flip-sum).
        normalize: L2-normalise each fused feature.
        progress: show a tqdm bar (rank 0 only).
        shard: split an array input across torchrun ranks (False: this process extracts everything).

    Under torchrun with an array input each rank extracts a contiguous shard; the shards are gathered so
    every rank returns all N rows in input order. An iterable of batches is processed whole by each caller.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rank, world = dist_rank_world() if shard else (0, 1)
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if not isinstance(images, np.ndarray):
        it = images
        if progress and rank == 0:
            from tqdm import tqdm
            it = tqdm(it, desc="features", unit="batch")
        return _extract_batches(extractor, it, flip, normalize)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    bounds = np.linspace(0, len(images), world + 1).astype(int)
    mine = images[bounds[rank]:bounds[rank + 1]]
    starts = range(0, len(mine), batch_size)
    if progress and rank == 0:
        from tqdm import tqdm
        starts = tqdm(starts, desc="features", unit="batch")
    feats = _extract_batches(extractor, (mine[s:s + batch_size] for s in starts), flip, normalize)
    if world > 1:
        parts: list = [None] * world
        torch.distributed.all_gather_object(parts, feats)
        dim = max(p.shape[1] for p in parts)
        feats = np.concatenate([p if len(p) else np.empty((0, dim), np.float32) for p in parts])
    return feats
