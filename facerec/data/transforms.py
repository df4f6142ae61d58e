"""Image transforms: THE one normalisation, horizontal flip, the 112x112 -> 112x96 centre crop.

Every image that enters a model goes through :func:`normalize` (training, evaluation, visualiser), so the
pipeline has a single definition of the input scale: RGB, ``(x / 255 - 0.5) / 0.5`` in [-1, 1], as the
MobileFaceNet / ArcFace reference implementations. The 112x96 input of the
MobileFaceNet paper is the 112x112 aligned crop minus 8 columns on each side.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["normalize", "normalize_image", "hflip", "center_crop_112x96", "crop_to_input_size"]


def _as_uint8_tensor(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got numpy dtype {images.dtype}")
        return torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got torch dtype {images.dtype}")
        return images
    raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")


def normalize(images) -> torch.Tensor:
    """uint8 RGB batch (N, H, W, 3), numpy or torch -> float32 tensor (N, 3, H, W) = (x/255 - 0.5)/0.5.

    The result is contiguous and lives on the input's device (CPU for numpy input).
    """
    t = _as_uint8_tensor(images)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(t.shape)}")
    x = t.permute(0, 3, 1, 2).to(torch.float32).contiguous()
    return x.div_(255.0).sub_(0.5).div_(0.5)


_LUT: list[np.ndarray] = []


def _lookup_table() -> np.ndarray:
    """normalize() of every uint8 value (256 float32), so the per-image path is bit-identical to it."""
    if not _LUT:
        values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256, 1).expand(1, 1, 256, 3)
        _LUT.append(normalize(values)[0, 0, 0].numpy().copy())
    return _LUT[0]


def normalize_image(image) -> torch.Tensor:
    """One uint8 RGB image (H, W, 3) -> float32 tensor (3, H, W), bit-identical to :func:`normalize`.

    CPU input goes through a 256-entry lookup table in numpy: no torch intra-op threads per sample (a
    DataLoader with ``num_workers=0`` on a busy machine would otherwise stall on thread hand-offs).
    """
    if isinstance(image, torch.Tensor) and image.device.type != "cpu":
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must have shape (H, W, 3), got {tuple(image.shape)}")
        return normalize(image.unsqueeze(0))[0]
    arr = image.numpy() if isinstance(image, torch.Tensor) else image
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    if arr.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {tuple(arr.shape)}")
    return torch.from_numpy(np.take(_lookup_table(), arr.transpose(2, 0, 1)))


def hflip(images):
    """Mirror left-right. numpy (..., H, W, 3) uint8 -> same layout; torch (..., C, H, W) -> flipped on W.

    numpy input is treated as channels-last (flip axis -2), torch input as channels-first (flip dim -1).
    """
    if isinstance(images, np.ndarray):
        if images.ndim < 3:
            raise ValueError(f"numpy images must be (..., H, W, C), got shape {images.shape}")
        return np.ascontiguousarray(images[..., ::-1, :])
    if isinstance(images, torch.Tensor):
        if images.dim() < 3:
            raise ValueError(f"torch images must be (..., C, H, W), got shape {tuple(images.shape)}")
        return images.flip(-1)
    raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")


def center_crop_112x96(images):
    """112x112 -> 112x96 by dropping 8 columns on each side.

    numpy (..., 112, 112, C) channels-last, or torch (..., C, 112, 112) channels-first.
    """
    if isinstance(images, np.ndarray):
        if images.ndim < 3 or images.shape[-3:-1] != (112, 112):
            raise ValueError(f"numpy images must be (..., 112, 112, C), got shape {images.shape}")
        return images[..., :, 8:104, :]
    if isinstance(images, torch.Tensor):
        if images.dim() < 3 or tuple(images.shape[-2:]) != (112, 112):
            raise ValueError(f"torch images must be (..., C, 112, 112), got shape {tuple(images.shape)}")
        return images[..., 8:104]
    raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")


def crop_to_input_size(images: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Channels-last uint8 image (H, W, 3) or batch (N, H, W, 3) -> ``input_size`` (h, w) on the H, W axes:
    identity, or the 112x96 centre crop (:func:`center_crop_112x96`) of 112x112 images.

    The one place that decides how an image reaches a model's input size (training sets, evaluation).
    Raises ValueError for any other size pair.
    """
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        shape = images.shape if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a numpy (H, W, C) image or (N, H, W, C) batch, got {shape}")
    h, w = images.shape[-3:-1]
    want = tuple(int(s) for s in input_size)
    if (h, w) == want:
        return images
    if (h, w) == (112, 112) and want == (112, 96):
        return center_crop_112x96(images)
    raise ValueError(f"images are {h}x{w}; input size {want[0]}x{want[1]} needs {want[0]}x{want[1]} images "
                     f"(or 112x112 ones, centre-cropped, for 112x96)")
