"""The one image reader of facerec: encoded bytes or files -> RGB uint8 (H, W, 3), and the encoder.

``cv2.imdecode`` returns BGR; every decoder here hands back RGB uint8 (H, W, 3) so callers never see BGR
(the colour-channel mix-up users of face pipelines often report).
Greyscale and 4-channel inputs come back as 3-channel RGB (alpha dropped), 16-bit samples are scaled to 8
bits. OpenCV decodes first; what it cannot read goes to Pillow when it is installed.

Untrusted input (``docs/security.md``): the image size is read from the header before anything is decoded
(PNG IHDR, JPEG SOFn, GIF screen and frame descriptors, else Pillow's lazy header parse) and an image of
more than :data:`MAX_IMAGE_PIXELS` pixels is refused with :class:`ImageTooLargeError`, so a small
"decompression bomb" cannot ask for gigabytes. A PNG whose chunk lengths overrun the data, or a GIF whose
block structure is broken, is not handed to OpenCV (which would allocate what the broken fields declare).
``IMAGE_SUFFIXES`` is the one list of file extensions the folder scanners accept.
"""
from __future__ import annotations

import io
import os
import struct
import warnings

import cv2
import numpy as np

from facerec._quote import quote

__all__ = ["decode_rgb", "decode_rgb_or_raise", "encode_image", "read_rgb", "image_size", "IMAGE_SUFFIXES",
           "MAX_IMAGE_PIXELS", "ImageTooLargeError"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".pgm", ".ppm", ".pbm", ".pnm", ".pfm",
                  ".tif", ".tiff", ".webp", ".jp2", ".gif", ".sr", ".ras", ".hdr", ".exr")
MAX_IMAGE_PIXELS = 1 << 26  # 67M pixels (200 MB as RGB); a face image is ~12k
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageTooLargeError(ValueError):
    """An image whose header announces more than :data:`MAX_IMAGE_PIXELS` pixels (nothing was decoded)."""


def _jpeg_size(buf: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(buf)
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = struct.unpack_from(">H", buf, pos + 2)[0]
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                return None
            h, w = struct.unpack_from(">HH", buf, pos + 5)
            return h, w
        if length < 2:
            return None
        pos += 2 + length
    return None


def _gif_size(buf: bytes) -> tuple[int, int] | None:
    """GIF canvas (height, width) covering the logical screen and every frame descriptor (OpenCV decodes a
    frame larger than the screen at the frame's size); None when the block structure is broken."""
    if len(buf) < 13:
        return None
    w, h = struct.unpack_from("<HH", buf, 6)
    pos, n = 13, len(buf)
    if buf[10] & 0x80:
        pos += 3 << ((buf[10] & 7) + 1)
    while pos < n:
        block = buf[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then data sub-blocks
            pos += 2
        elif block == 0x2C and pos + 10 <= n:  # image descriptor
            left, top, fw, fh = struct.unpack_from("<HHHH", buf, pos + 1)
            w, h = max(w, left + fw), max(h, top + fh)
            flags = buf[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0) + 1  # + local table + LZW code size
        else:
            return None
        while pos < n and buf[pos]:  # sub-blocks until the zero terminator
            pos += buf[pos] + 1
        pos += 1
    return h, w


def _png_chunks_fit(buf: np.ndarray) -> bool:
    """Every PNG chunk length fits in the bytes that follow it (OpenCV allocates a declared chunk length before
    reading it: 80 bytes announcing a 184 MB chunk cost seconds and gigabytes)."""
    data = buf.data
    pos, n = 8, buf.size
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        if pos + 12 + length > n:
            return False
        if bytes(data[pos + 4:pos + 8]) == b"IEND":
            return True
        pos += 12 + length
    return True


def image_size(data) -> tuple[int, int] | None:
    """(height, width) announced by an encoded image's header, without decoding it; None when unknown."""
    buf = bytes(data[:65536]) if not isinstance(data, np.ndarray) else data.reshape(-1)[:65536].tobytes()
    if buf.startswith(_PNG_SIGNATURE) and len(buf) >= 24 and buf[12:16] == b"IHDR":
        w, h = struct.unpack_from(">II", buf, 16)
        return h, w
    if buf.startswith(b"\xff\xd8"):
        return _jpeg_size(buf)
    if buf[:6] in (b"GIF87a", b"GIF89a"):
        full = bytes(data) if not isinstance(data, np.ndarray) else data.reshape(-1).tobytes()
        return _gif_size(full)
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: OpenCV's own 2^30-pixel limit is then the bound
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data if not isinstance(data, np.ndarray) else data.tobytes())) as pil:
                w, h = pil.size
        return h, w
    except Exception:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ... on non-images
        return None


def _check_size(data) -> None:
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"image header announces {size[1]}x{size[0]} = {size[0] * size[1]} pixels, "
                                 f"more than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} (refused, not decoded)")


def _decode_pillow(buf: np.ndarray) -> np.ndarray | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(buf.tobytes())) as pil:
                if pil.size[0] * pil.size[1] > MAX_IMAGE_PIXELS:
                    return None
                return np.asarray(pil.convert("RGB"), dtype=np.uint8).copy()
    except Exception:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ... on garbage
        return None


def decode_rgb(data) -> np.ndarray | None:
    """Encoded image bytes (bytes, bytearray, memoryview or uint8 array) -> RGB uint8 (H, W, 3), or None.

    None means neither OpenCV nor Pillow could decode the bytes; callers turn that into an error naming the
    source. Raises :class:`ImageTooLargeError` (a ValueError) when the header announces more than
    :data:`MAX_IMAGE_PIXELS` pixels.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.size == 0:
        return None
    _check_size(buf)
    if buf[:8].tobytes() == _PNG_SIGNATURE and not _png_chunks_fit(buf):
        return None
    if buf[:6].tobytes() in (b"GIF87a", b"GIF89a") and image_size(buf) is None:
        return None  # broken block structure: the frame sizes OpenCV would use are unknown
    try:
        if _IMREAD_RGB is not None:
            img = cv2.imdecode(buf, _IMREAD_RGB)
        else:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            img = None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    except cv2.error as err:  # OpenCV asserts on some malformed headers instead of returning None
        if "CV_IO_MAX_IMAGE_PIXELS" in str(err):
            raise ImageTooLargeError(f"OpenCV refused the image size: {str(err).strip()[-120:]}") from None
        img = None
    return img if img is not None else _decode_pillow(buf)


def decode_rgb_or_raise(data, where: str) -> np.ndarray:
    """:func:`decode_rgb` for callers that stop on a bad image: the error names ``where`` (a file, an image
    index, a pair). ValueError ``"<where>: not a decodable image (<n> bytes)"``, or the decoder's own error
    (:class:`ImageTooLargeError`) with ``where`` in front."""
    try:
        img = decode_rgb(data)
    except ValueError as err:
        raise type(err)(f"{where}: {err}") from None
    if img is None:
        raise ValueError(f"{where}: not a decodable image ({len(data)} bytes)")
    return img


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
        raise ValueError(f"ext must be '.jpg' or '.png', got {quote(ext)}")
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {rgb.shape} image as {ext}")
    return buf.tobytes()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file of any kind OpenCV or Pillow knows -> RGB uint8 (H, W, 3).

    Raises FileNotFoundError naming the file when it is absent, ValueError naming the file (and its size)
    when it does not decode or is larger than :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"image not found: {path}") from None
    return decode_rgb_or_raise(data, str(path))
