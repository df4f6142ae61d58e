"""Image encode/decode with OpenCV, always RGB on the library side.

``cv2.imdecode`` returns BGR; every decoder here hands back RGB uint8 (H, W, 3) so callers never see BGR
(the colour-channel confusion users report, ``specs/face-pipelines-survey.md`` section 6 item 3).
Greyscale and 4-channel inputs come back as 3-channel RGB.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["decode_rgb", "encode_image", "read_rgb", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_rgb(data) -> np.ndarray | None:
    """Encoded image bytes (bytes, bytearray, memoryview or uint8 array) -> RGB uint8 (H, W, 3), or None.

    None means OpenCV could not decode the bytes; callers turn that into an error naming the source.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.size == 0:
        return None
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """RGB uint8 (H, W, 3) -> encoded bytes. ``ext`` '.jpg' (``quality`` 1..100) or '.png' (lossless)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ext = ext.lower()
    if ext in (".jpg", ".jpeg"):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    else:
        raise ValueError(f"ext must be '.jpg' or '.png', got {ext!r}")
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {rgb.shape} image as {ext}")
    return buf.tobytes()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file -> RGB uint8 (H, W, 3). Raises FileNotFoundError / ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    img = decode_rgb(data)
    if img is None:
        raise ValueError(f"{path}: not a decodable image ({len(data)} bytes)")
    return img
