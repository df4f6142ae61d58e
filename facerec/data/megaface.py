"""MegaFace devkit files: template lists (JSON), matio feature files, InsightFace noise lists.

Listed paths are relative to an image or feature root; one that is absolute, holds a ``..`` component or a
NUL byte is refused (ValueError naming the list and the entry), so a list cannot make a reader or the
feature writer reach outside its root (``docs/security.md``).

Formats follow the MegaFace devkit and InsightFace's testpack (docs/megaface.md):

* template list: ``{"path": [...], "id": [...]}`` (probe list) or ``{"path": [...]}`` (distractor list);
* matio: little-endian int32 header ``(rows, cols, step = cols * elemsize, type)`` with type 5 (CV_32FC1) or
  6 (CV_64FC1), masked with 0xFFF, then ``rows * step`` bytes of row-major data. A feature is a D x 1 column;
* noise list: ``#`` comment lines, then one entry per line; a line ``a<TAB>b`` holds its path in the 2nd field.

The feature-tree helpers read the devkit layout ``<root>/<listed path><suffix>`` into one float32 matrix and
report every missing or wrong-sized file at once.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from facerec._quote import quote
from .textfile import read_text

__all__ = [
    "write_template_list", "read_template_list", "write_noise_list", "read_noise_list",
    "write_matio", "read_matio", "read_matio_vector", "feature_file_path", "read_feature_tree",
    "write_feature_tree", "FeatureFileError", "parse_matio", "check_listed_path",
]

_HEADER = struct.Struct("<iiii")
_TYPES = {5: np.dtype("<f4"), 6: np.dtype("<f8")}
_CODES = {np.dtype("<f4"): 5, np.dtype("<f8"): 6}


class FeatureFileError(ValueError):
    """Listed feature files that are missing or of the wrong dimension.

    ``missing`` and ``wrong`` hold the offending file paths (``wrong`` as ``(path, reason)`` pairs).
    """

    def __init__(self, missing: list[str], wrong: list[tuple[str, str]]):
        self.missing = list(missing)
        self.wrong = list(wrong)
        parts = []
        if missing:
            parts.append(f"{len(missing)} listed feature file(s) missing, first: {missing[0]}")
        if wrong:
            parts.append(f"{len(wrong)} feature file(s) unreadable or of the wrong dimension, first: "
                         f"{wrong[0][0]} ({wrong[0][1]})")
        super().__init__("; ".join(parts))


def check_listed_path(listed_path: str, source="a list", index=None) -> str:
    """``listed_path`` if it stays under its root (relative, no ``..``, no NUL); else ValueError naming
    ``source`` and ``index``."""
    where = f"{source}" + (f": entry {index}" if index is not None else "")
    if not isinstance(listed_path, str):
        raise TypeError(f"{where}: a listed path must be a string, got {type(listed_path).__name__}")
    parts = listed_path.replace("\\", "/").split("/")
    if (not listed_path or "\0" in listed_path or listed_path.startswith(("/", "\\")) or ".." in parts
            or (len(listed_path) > 1 and listed_path[1] == ":")):
        raise ValueError(f"{where}: listed path {quote(listed_path)} must be relative to its root, without "
                         f"'..' (refused: it would reach outside the image/feature folder)")
    return listed_path


def write_template_list(path: str | Path, paths: Sequence[str], ids: Sequence[str] | None = None) -> None:
    """Write a devkit template list: ``{"path": paths}`` plus ``"id": ids`` when given (same length)."""
    paths = [str(p) for p in paths]
    data: dict = {"path": paths}
    if ids is not None:
        ids = [str(i) for i in ids]
        if len(ids) != len(paths):
            raise ValueError(f"ids has {len(ids)} entries but paths has {len(paths)}; they must match")
        data["id"] = ids
    Path(path).write_text(json.dumps(data))


def read_template_list(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Read a devkit template list -> (paths, ids or None). Errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"template list not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON template list ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("path"), list):
        raise ValueError(f'{path}: a template list is a JSON object with a "path" list, got '
                         f"{type(data).__name__} with keys {sorted(data) if isinstance(data, dict) else []}")
    paths = data["path"]
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise ValueError(f'{path}: "path"[{i}] must be a string, got {quote(p)}')
        check_listed_path(p, f'{path}: "path"[{i}]')
    ids = data.get("id")
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != len(paths):
            raise ValueError(f'{path}: "id" must be a list as long as "path" ({len(paths)}), got '
                             f"{len(ids) if isinstance(ids, list) else type(ids).__name__}")
        ids = [str(i) for i in ids]
    return list(paths), ids


def write_noise_list(path: str | Path, entries: Iterable[str], comment: str = "noise list written by facerec") -> None:
    """Write an InsightFace-style noise list: one ``# comment`` line, then one entry per line."""
    lines = [f"# {comment}"] + [str(e) for e in entries]
    Path(path).write_text("\n".join(lines) + "\n")


def read_noise_list(path: str | Path) -> list[str]:
    """Read a noise list -> entries in file order (duplicates kept). ``#`` and blank lines are skipped;
    a tab-separated line contributes its 2nd field (the path)."""
    path = Path(path)
    text = read_text(path, "noise list")
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            fields = line.split("\t")
            if len(fields) < 2 or not fields[1].strip():
                raise ValueError(f"{path}: line {lineno}: tab-separated entry without a 2nd field: {quote(line)}")
            line = fields[1].strip()
        out.append(line)
    return out


def write_matio(path: str | Path, array) -> None:
    """Write a vector (D,) as a D x 1 column, or a matrix (rows, cols), in the matio format (float32 unless
    the input is float64). Written atomically (temporary file + rename): ``path`` is either complete or
    absent, also when the write fails (the OSError propagates)."""
    a = np.asarray(array)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise ValueError(f"write_matio takes a vector or a matrix, got shape {a.shape}")
    dtype = np.dtype("<f8") if a.dtype == np.float64 else np.dtype("<f4")
    a = np.ascontiguousarray(a, dtype=dtype)
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(a.shape[0], a.shape[1], a.shape[1] * dtype.itemsize, _CODES[dtype]))
            f.write(a.tobytes())
        os.replace(tmp, path)
    finally:  # a failed write (full disk) leaves neither a partial file nor the temporary one
        if tmp.exists():
            tmp.unlink()


def parse_matio(buf: bytes, path) -> np.ndarray:
    """Parse matio bytes -> a read-only view (rows, cols); ``path`` only names the source in errors."""
    if len(buf) < 16:
        raise ValueError(f"{path}: matio file is {len(buf)} bytes, shorter than its 16-byte header")
    rows, cols, step, code = _HEADER.unpack_from(buf, 0)
    dtype = _TYPES.get(code & 0xFFF)
    if dtype is None:
        raise ValueError(f"{path}: byte 12: matio type code {code} is not 5 (CV_32FC1) or 6 (CV_64FC1)")
    if rows < 0 or cols < 0:
        raise ValueError(f"{path}: byte 0: negative matio shape ({rows}, {cols})")
    if step != cols * dtype.itemsize:
        raise ValueError(f"{path}: byte 8: matio step {step} != cols * {dtype.itemsize} = {cols * dtype.itemsize}")
    need = 16 + rows * step
    if len(buf) != need:
        raise ValueError(f"{path}: matio header says {rows}x{cols} ({need} bytes) but the file has {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dtype, offset=16).reshape(rows, cols)


def read_matio(path: str | Path) -> np.ndarray:
    """Read a matio file -> array (rows, cols), float32 or float64 as stored (a feature file gives (D, 1))."""
    with open(path, "rb") as f:
        buf = f.read()
    return parse_matio(buf, path).copy()


def read_matio_vector(path: str | Path) -> np.ndarray:
    """Read a matio feature (a D x 1 column or a 1 x D row) -> float32 vector (D,)."""
    a = read_matio(path)
    if 1 not in a.shape:
        raise ValueError(f"{path}: a feature file holds a D x 1 column, got a {a.shape[0]}x{a.shape[1]} matrix")
    return a.reshape(-1).astype(np.float32)


def feature_file_path(root: str | Path, listed_path: str, suffix: str) -> Path:
    """The devkit location of one feature: ``<root>/<listed path><suffix>``; ValueError when the listed path
    would leave ``root`` (see :func:`check_listed_path`)."""
    return Path(root) / (check_listed_path(listed_path, f"feature path under {root}") + suffix)


def read_feature_tree(root: str | Path, paths: Sequence[str], suffix: str, dim: int | None = None,
                      progress: bool = False) -> np.ndarray:
    """Read ``<root>/<path><suffix>`` for every listed path -> float32 (N, D) in list order.

    ``dim`` fixes D (else the first readable file sets it). Every missing or wrong-sized file is collected
    and reported together in one :class:`FeatureFileError` (a ValueError) naming the first and the counts.
    """
    root = Path(root)
    out = None
    missing: list[str] = []
    wrong: list[tuple[str, str]] = []
    it = range(len(paths))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"read {root.name}", unit="file", mininterval=2.0)
    for i in it:
        fp = feature_file_path(root, paths[i], suffix)
        try:
            with open(fp, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            missing.append(str(fp))
            continue
        try:
            vec = parse_matio(buf, fp)
        except ValueError as exc:
            wrong.append((str(fp), str(exc)))
            continue
        if 1 not in vec.shape:
            wrong.append((str(fp), f"a {vec.shape[0]}x{vec.shape[1]} matrix, not a D x 1 column"))
            continue
        vec = vec.reshape(-1)
        if dim is None:
            dim = vec.shape[0]
        if vec.shape[0] != dim:
            wrong.append((str(fp), f"dimension {vec.shape[0]}, expected {dim}"))
            continue
        if out is None:
            out = np.empty((len(paths), dim), dtype=np.float32)
        out[i] = vec
    if missing or wrong:
        raise FeatureFileError(missing, wrong)
    if out is None:
        out = np.empty((0, dim or 0), dtype=np.float32)
    return out


def write_feature_tree(root: str | Path, paths: Sequence[str], suffix: str, features) -> None:
    """Write row i of ``features`` (N, D) to ``<root>/<paths[i]><suffix>`` as a D x 1 matio column."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(paths):
        raise ValueError(f"features must be (len(paths)={len(paths)}, D), got shape {features.shape}")
    for p, vec in zip(paths, features):
        fp = feature_file_path(root, p, suffix)
        fp.parent.mkdir(parents=True, exist_ok=True)
        write_matio(fp, vec)
