"""Verification pair sets in InsightFace's ``.bin`` format: read, write, build from a folder + pairs.txt.

Format (``specs/face-pipelines-survey.md`` section 2.4): a pickle of ``(bins, issame)``: ``bins`` holds 2P
encoded images (pair k = ``bins[2k]``, ``bins[2k+1]``), ``issame`` P booleans. InsightFace's own files
(lfw.bin, cfp_fp.bin, agedb_30.bin) are Python-2 pickles whose ``str`` items load as bytes with
``encoding='bytes'``. Images decode to RGB.

CLI: ``python -m facerec.data.verification FOLDER PAIRS.txt OUT.bin`` builds a ``.bin`` from aligned images
``FOLDER/<name>/<name>_<num:04d>.<ext>`` and an LFW-style pairs file.
"""
from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from .codec import IMAGE_SUFFIXES, decode_rgb, encode_image

__all__ = ["read_bin", "read_bin_encoded", "write_bin", "read_pairs_txt", "build_bin_from_pairs", "main"]

logger = logging.getLogger(__name__)


def read_bin_encoded(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """``.bin`` -> (2P encoded image byte strings, issame bool (P,)) without decoding.

    Accepts Python-2 and Python-3 pickles; raises ValueError naming the file when the content is not
    ``(bins, issame)`` with ``len(bins) == 2 * len(issame)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    with open(path, "rb") as f:
        try:
            obj = pickle.load(f, encoding="bytes")
        except Exception as err:  # pickle raises many types on garbage
            raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err}) at byte offset "
                             f"{f.tell()}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled (bins, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    issame = np.asarray([bool(v) for v in issame], dtype=bool)
    bins = [bytes(b.tobytes() if isinstance(b, np.ndarray) else b) for b in bins]
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return bins, issame


def read_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``.bin`` -> (images uint8 (2P, H, W, 3) RGB, issame bool (P,)).

    Raises ValueError naming the file and image index when an image does not decode or sizes differ.
    """
    bins, issame = read_bin_encoded(path)
    images = None
    for i, data in enumerate(bins):
        img = decode_rgb(data)
        if img is None:
            raise ValueError(f"{path}: image {i} (pair {i // 2}) is not decodable ({len(data)} bytes)")
        if images is None:
            images = np.empty((len(bins),) + img.shape, dtype=np.uint8)
        elif img.shape != images.shape[1:]:
            raise ValueError(f"{path}: image {i} is {img.shape}, image 0 is {images.shape[1:]}")
        images[i] = img
    if images is None:
        images = np.empty((0, 112, 112, 3), dtype=np.uint8)
    return images, issame


def write_bin(path: str | os.PathLike, images, issame, *, ext: str = ".png", quality: int = 95) -> Path:
    """Write a ``.bin``. ``images``: uint8 RGB (2P, H, W, 3) array (encoded with ``ext``: '.png' lossless or
    '.jpg' at ``quality``) or a sequence of 2P already-encoded byte strings (stored as they are).
    ``issame``: P booleans. Pickle protocol 2 so Python 2 readers load it too.
    """
    issame = [bool(v) for v in np.asarray(issame).reshape(-1)]
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (2P, H, W, 3), got {images.dtype} {images.shape}")
        bins = [encode_image(img, ext, quality) for img in images]
    else:
        bins = [bytes(b) for b in images]
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=2)
    os.replace(tmp, path)
    return path


def read_pairs_txt(path: str | os.PathLike) -> list[tuple[str, int, str, int]]:
    """LFW-style pairs file -> [(name_a, num_a, name_b, num_b)].

    Lines ``name i j`` (same person) or ``name_a i name_b j`` (different); tabs or spaces; numbers may be
    written as floats (``672.``). A leading ``folds pairs`` header line is skipped. Errors name the line.
    """
    path = Path(path)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) == 2 and lineno == 1 and all(v.isdigit() for v in fields):
                    continue
                if len(fields) == 3:
                    pairs.append((fields[0], int(float(fields[1])), fields[0], int(float(fields[2]))))
                elif len(fields) == 4:
                    pairs.append((fields[0], int(float(fields[1])), fields[2], int(float(fields[3]))))
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: expected 'name i j' or 'name_a i name_b j', "
                                 f"got {line.strip()[:80]!r}") from None
    return pairs


def _find_image(root: Path, name: str, num: int, digits: int) -> Path | None:
    folder = root / name
    for stem in (f"{name}_{num:0{digits}d}", f"{name}_{num}"):
        for suffix in IMAGE_SUFFIXES:
            p = folder / (stem + suffix)
            if p.is_file():
                return p
    return None


def build_bin_from_pairs(root, pairs_txt, out_path, *, digits: int = 4, skip_missing: bool = False) -> dict:
    """Image folder ``root/<name>/<name>_<num:04d>.<ext>`` + LFW pairs.txt -> ``.bin`` at ``out_path``.

    The original file bytes are stored (no re-encoding). A missing image raises FileNotFoundError naming
    the pairs line, unless ``skip_missing`` (then the pair is left out and reported). Returns a summary dict
    with ``pairs``, ``positives``, ``skipped`` (list of (line, reason)).
    """
    root = Path(root)
    pairs = read_pairs_txt(pairs_txt)
    bins, issame, skipped = [], [], []
    for k, (na, ia, nb, ib) in enumerate(pairs):
        pa, pb = _find_image(root, na, ia, digits), _find_image(root, nb, ib, digits)
        missing = [f"{n}_{i:0{digits}d}" for n, i, p in ((na, ia, pa), (nb, ib, pb)) if p is None]
        if missing:
            msg = f"{pairs_txt}: pair {k + 1}: no image {', '.join(missing)} under {root}"
            if not skip_missing:
                raise FileNotFoundError(msg)
            skipped.append((k + 1, msg))
            logger.warning("%s (pair skipped)", msg)
            continue
        for p in (pa, pb):
            data = p.read_bytes()
            if decode_rgb(data) is None:
                raise ValueError(f"{p}: not a decodable image (pair {k + 1} of {pairs_txt})")
            bins.append(data)
        issame.append(na == nb)
    write_bin(out_path, bins, issame)
    return {"pairs": len(issame), "positives": int(sum(issame)), "skipped": skipped}


def main(argv=None) -> int:
    """Command line (``python -m facerec.data.verification``); it lives in :mod:`facerec.cli.verification`."""
    from facerec.cli.verification import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
