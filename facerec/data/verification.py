"""Verification pair sets in InsightFace's ``.bin`` format: read, write, build from a folder + pairs.txt.

Format (InsightFace's LFW / CFP-FP / AgeDB-30 files): a pickle of ``(bins, issame)``: ``bins`` holds 2P
encoded images (pair k = ``bins[2k]``, ``bins[2k+1]``), ``issame`` P booleans. InsightFace's own files
(lfw.bin, cfp_fp.bin, agedb_30.bin) are Python-2 pickles whose ``str`` items load as bytes with
``encoding='bytes'``. Images decode to RGB.

Untrusted files (``docs/security.md``): a ``.bin`` is never given to ``pickle.load``. Its opcodes are first
listed without executing anything (``pickletools.genops``, which also proves every length field fits in the
file; a memo index larger than the file is refused too). A file with an opcode or a global outside what
InsightFace's Python-2/3 files and :func:`write_bin` contain (byte strings, lists, tuples, booleans,
``_codecs.encode`` of latin-1 text, numpy arrays, dtypes and scalars) is refused with a ValueError naming
the file, the byte offset and the global. The remaining file is loaded by an unpickler whose ``find_class``
hands out only guarded versions of those few callables.

Command line: ``facerec-make-bin FOLDER PAIRS.txt OUT.bin`` builds a ``.bin`` from aligned images
``FOLDER/<name>/<name>_<num:04d>.<ext>`` and an LFW-style pairs file.
"""
from __future__ import annotations

import _codecs
import io
import logging
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np

from facerec._quote import quote
from .codec import IMAGE_SUFFIXES, decode_rgb_or_raise, encode_image
from .megaface import check_listed_path
from .textfile import read_text

__all__ = ["read_bin", "read_bin_encoded", "decode_bin_image", "write_bin", "read_pairs_txt",
           "build_bin_from_pairs", "MAX_DECODED_BYTES"]

logger = logging.getLogger(__name__)

MAX_DECODED_BYTES = 1 << 34  # 16 GiB: read_bin refuses a set whose decoded images would need more

# Opcodes of plain data plus the two that call a (guarded) global: REDUCE and BUILD. Refused: INST, OBJ,
# NEWOBJ(_EX) (instantiate a class), EXT1/2/4 (copyreg registry), PERSID/BINPERSID, NEXT_BUFFER and
# READONLY_BUFFER (out-of-band buffers).
_DATA_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP MEMOIZE PUT BINPUT LONG_BINPUT GET BINGET LONG_BINGET
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8
    UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    EMPTY_LIST APPEND APPENDS LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS
    EMPTY_SET ADDITEMS FROZENSET GLOBAL STACK_GLOBAL REDUCE BUILD
""".split())
_NP_NDARRAY = object()  # stands for numpy.ndarray: only _reconstruct may receive it, nothing can call it
_NP_DTYPE_KINDS = frozenset("biuf")


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as Python 3 pickles bytes with protocol <= 2: text -> latin-1 bytes, nothing else."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode only re-creates latin-1 bytes, got {type(text).__name__} "
                                     f"and encoding {quote(encoding)}")
    return _codecs.encode(text, "latin1")


def _bytearray(source=b"", encoding="latin1", errors="strict"):
    """``bytearray`` from text or bytes only (``bytearray(10**12)`` would allocate a terabyte)."""
    if isinstance(source, str):
        return bytearray(_latin1_encode(source, encoding))
    if isinstance(source, (bytes, bytearray)):
        return bytearray(source)
    raise pickle.UnpicklingError(f"bytearray is only re-created from bytes or text, got {type(source).__name__}")


def _np_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec) if isinstance(spec, (str, bytes)) and len(spec) <= 8 else None
    if dtype is None or dtype.kind not in _NP_DTYPE_KINDS:
        raise pickle.UnpicklingError(f"only bool/int/float numpy dtypes are accepted, got {quote(spec)}")
    return np.dtype(dtype)


def _np_reconstruct(subtype, shape, dtype_code):
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array that BUILD then fills from the file."""
    if subtype is not _NP_NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError("numpy _reconstruct accepted only as numpy writes it: (ndarray, (0,), b'b')")
    return np.ndarray.__new__(np.ndarray, (0,), _np_dtype(dtype_code))


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar accepted only as (dtype, {getattr(dtype, 'itemsize', '?')} "
                                     f"bytes)")
    return np.frombuffer(data, dtype=dtype)[0]


def _np_frombuffer(buf, dtype, shape, order="C"):
    """numpy's protocol-5 ``_frombuffer(bytearray, dtype, shape, order)``; the bytes must fill the shape."""
    if (not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or order not in ("C", "F")
            or not isinstance(shape, tuple) or not all(isinstance(v, int) and v >= 0 for v in shape)
            or int(np.prod(shape, dtype=object)) * dtype.itemsize != len(buf)):
        raise pickle.UnpicklingError("numpy _frombuffer accepted only with bytes that exactly fill the shape")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order)


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
    ("numpy", "ndarray"): _NP_NDARRAY,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
}


class _BinUnpickler(pickle.Unpickler):
    """Unpickler whose globals are only the guarded callables above; refusal names file and global."""

    def __init__(self, data: bytes, path: Path):
        self._stream = io.BytesIO(data)
        super().__init__(self._stream, encoding="bytes")
        self._path = path

    def _file_pos(self) -> int:
        return self._stream.tell()

    def find_class(self, module, name):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{self._path}: refused global {module}.{name}: a verification .bin holds only "
                                 f"byte strings, booleans and numpy arrays (nothing was executed)")
        return found

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"{self._path}: refused persistent id {quote(pid)} (nothing was executed)")


class _RefusedGlobal(ValueError):
    pass


def _scan_opcodes(data: bytes, path: Path) -> None:
    """Walk the opcodes without executing any; refuse unknown opcodes and globals, lengths past the end."""
    stream = io.BytesIO(data)
    try:
        for op, arg, pos in pickletools.genops(stream):
            if op.name not in _DATA_OPCODES:
                raise ValueError(f"{path}: byte offset {pos}: refused pickle opcode {op.name} (a verification "
                                 f".bin holds only data; nothing was executed)")
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= len(data):
                raise ValueError(f"{path}: byte offset {pos}: memo index {arg} beyond the file's {len(data)} "
                                 f"bytes (the unpickler would allocate a memo table that large)")
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if (module, name) not in _ALLOWED_GLOBALS:
                    raise ValueError(f"{path}: byte offset {pos}: refused global {module}.{name}: a verification "
                                     f".bin holds only byte strings, booleans and numpy arrays (nothing was "
                                     f"executed)")
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable pickle at byte offset {stream.tell()} ({err})") from None
    except Exception as err:  # genops raises ValueError mostly, but also e.g. UnicodeDecodeError, struct.error
        raise ValueError(f"{path}: not a readable pickle at byte offset {stream.tell()} "
                         f"({type(err).__name__}: {err})") from None


def _as_bytes(item, path: Path, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise ValueError(f"{path}: image {i}: expected encoded image bytes, got {type(item).__name__}")


def read_bin_encoded(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """``.bin`` -> (2P encoded image byte strings, issame bool (P,)) without decoding.

    Accepts Python-2 and Python-3 pickles of plain data (see the module docstring); raises ValueError naming
    the file (and the byte offset, image index or refused global) when the content is anything else or not
    ``(bins, issame)`` with ``len(bins) == 2 * len(issame)``. Nothing in the file is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    data = path.read_bytes()
    _scan_opcodes(data, path)
    unpickler = _BinUnpickler(data, path)
    try:
        obj = unpickler.load()
    except _RefusedGlobal as err:
        raise ValueError(str(err)) from None
    except Exception as err:  # the unpickler and the guarded callables raise many types on garbage
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err}) at byte offset "
                         f"{unpickler._file_pos()}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled (bins, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise ValueError(f"{path}: bins must be a list of encoded images, got {type(bins).__name__}")
    if isinstance(issame, np.ndarray):
        if issame.dtype.kind not in "biu" or issame.ndim != 1:
            raise ValueError(f"{path}: issame must be a 1-d bool array, got {issame.dtype} {issame.shape}")
        issame = issame.astype(bool)
    elif isinstance(issame, (list, tuple)):
        for k, v in enumerate(issame):
            if not isinstance(v, (bool, int, np.bool_, np.integer)):
                raise ValueError(f"{path}: issame[{k}]: expected a boolean, got {type(v).__name__}")
        issame = np.asarray([bool(v) for v in issame], dtype=bool)
    else:
        raise ValueError(f"{path}: issame must be a list of booleans, got {type(issame).__name__}")
    converted: dict[int, bytes] = {}  # shared references (one image in several pairs) are converted once
    out = []
    for i, b in enumerate(bins):
        if id(b) not in converted:
            converted[id(b)] = _as_bytes(b, path, i)
        out.append(converted[id(b)])
    bins = out
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return bins, issame


def decode_bin_image(path, i: int, data: bytes) -> np.ndarray:
    """Image ``i`` of a ``.bin`` -> RGB uint8 (H, W, 3); ValueError naming the file, image and pair."""
    return decode_rgb_or_raise(data, f"{path}: image {i} (pair {i // 2})")


def read_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``.bin`` -> (images uint8 (2P, H, W, 3) RGB, issame bool (P,)).

    Raises ValueError naming the file and image index when an image does not decode or sizes differ.
    """
    bins, issame = read_bin_encoded(path)
    images = None
    for i, data in enumerate(bins):
        img = decode_bin_image(path, i, data)
        if images is None:
            if len(bins) * img.nbytes > MAX_DECODED_BYTES:
                raise ValueError(f"{path}: {len(bins)} images of {img.shape} need {len(bins) * img.nbytes} bytes, "
                                 f"more than MAX_DECODED_BYTES = {MAX_DECODED_BYTES}")
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
    written as floats (``672.``). A leading ``folds pairs`` header line is skipped. Errors name the line;
    a name that is absolute or holds ``..`` is refused (it would reach outside the image folder).
    """
    path = Path(path)
    pairs = []
    for lineno, line in enumerate(read_text(path, "pairs file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) == 2 and lineno == 1 and all(v.isdigit() for v in fields):
                continue
            if len(fields) == 3:
                pair = (fields[0], int(float(fields[1])), fields[0], int(float(fields[2])))
            elif len(fields) == 4:
                pair = (fields[0], int(float(fields[1])), fields[2], int(float(fields[3])))
            else:
                raise ValueError
        except (ValueError, OverflowError):  # int(float("inf")) overflows
            raise ValueError(f"{path}: line {lineno}: expected 'name i j' or 'name_a i name_b j', "
                             f"got {quote(line.strip())}") from None
        for name in (pair[0], pair[2]):  # a name is a folder under the image root, never a way out of it
            check_listed_path(name, f"{path}: line {lineno}")
        pairs.append(pair)
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
            decode_rgb_or_raise(data, f"{p} (pair {k + 1} of {pairs_txt})")
            bins.append(data)
        issame.append(na == nb)
    write_bin(out_path, bins, issame)
    return {"pairs": len(issame), "positives": int(sum(issame)), "skipped": skipped}
