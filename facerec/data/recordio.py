"""Pure-Python MXNet RecordIO: reader, writer, ``.idx`` index and the image-record header.

Follows the dmlc-core RecordIO container and mxnet's ``recordio.pack/unpack``; no mxnet import,
byte-compatible both ways.

Container: every physical chunk is ``uint32 magic 0xced7230a`` + ``uint32 lrecord`` (low 29 bits: length,
top 3 bits: cflag 0 whole / 1 first / 2 middle / 3 last) + payload + zero padding to 4 bytes. A record is split
wherever the magic occurs at a 4-byte aligned offset of its payload: the writer drops those 4 bytes and starts
a new chunk, the reader re-inserts them. ``.idx`` is text, one ``key<TAB>byte_offset`` per line, keys in any
order. Image payload = ``IRHeader`` struct ``'<IfQQ'`` (flag, label, id, id2) + ``flag`` float32 labels when
flag > 0 + encoded image bytes.
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from facerec._quote import quote

__all__ = [
    "RECORDIO_MAGIC",
    "RecordIOError",
    "IRHeader",
    "pack_header",
    "unpack_header",
    "RecordWriter",
    "IndexedRecordWriter",
    "IndexedRecordReader",
    "read_index",
    "iter_records",
]

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24


class RecordIOError(ValueError):
    """Malformed RecordIO data; ``path``, ``key`` and ``offset`` locate it (each may be None)."""

    def __init__(self, message: str, *, path=None, key=None, offset=None):
        where = []
        if path is not None:
            where.append(str(path))
        if key is not None:
            where.append(f"key {key}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.path, self.key, self.offset = path, key, offset


class IRHeader(NamedTuple):
    """mxnet image-record header. ``label`` is a float, or a float32 array when ``flag`` > 0."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_header(header: IRHeader | tuple, payload: bytes) -> bytes:
    """mxnet ``recordio.pack``: a scalar label gives flag 0; an array label gives flag = its size, label 0."""
    flag, label, id_, id2 = header
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), int(id_), int(id2)) + bytes(payload)
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    return struct.pack(_IR_FORMAT, labels.size, 0.0, int(id_), int(id2)) + labels.tobytes() + bytes(payload)


def unpack_header(record: bytes) -> tuple[IRHeader, memoryview]:
    """mxnet ``recordio.unpack``: ``(IRHeader, payload)``; label becomes a float32 array when flag > 0.

    Raises ValueError when the record is shorter than the header it announces.
    """
    if len(record) < _IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the 24-byte IRHeader")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, record, 0)
    view = memoryview(record)[_IR_SIZE:]
    if flag > 0:
        if len(view) < 4 * flag:
            raise ValueError(f"IRHeader announces {flag} labels ({4 * flag} bytes) but only {len(view)} follow")
        label = np.frombuffer(view[: 4 * flag], dtype="<f4").copy()
        view = view[4 * flag:]
    return IRHeader(flag, label, id_, id2), view


def _encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one logical record, split at aligned magic occurrences as dmlc-core does."""
    payload = bytes(payload)
    size = len(payload)
    if size > _LENGTH_MASK:
        raise ValueError(f"record of {size} bytes exceeds the RecordIO limit of {_LENGTH_MASK} bytes")
    chunks = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while 0 <= pos <= size - 4:
        if pos % 4 == 0:
            chunks.append(struct.pack("<II", RECORDIO_MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start)))
            chunks.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    chunks.append(struct.pack("<II", RECORDIO_MAGIC, ((3 if start else 0) << 29) | (size - start)))
    chunks.append(payload[start:])
    chunks.append(b"\0" * (-size % 4))
    return b"".join(chunks)


class RecordWriter:
    """Sequential RecordIO writer (mxnet ``MXRecordIO(path, 'w')``). Use as a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = open(self.path, "wb")

    def tell(self) -> int:
        """Byte offset where the next record starts."""
        return self._file.tell()

    def write(self, payload: bytes) -> int:
        """Append one record; returns its byte offset."""
        offset = self._file.tell()
        self._file.write(_encode_record(payload))
        return offset

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class IndexedRecordWriter(RecordWriter):
    """RecordIO writer that also writes the ``key<TAB>offset`` index (mxnet ``MXIndexedRecordIO``)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        super().__init__(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.path.with_suffix(".idx")
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")

    def write_idx(self, key: int, payload: bytes) -> int:
        """Append one record under integer ``key``; returns its byte offset."""
        offset = self.write(payload)
        self._idx.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        super().close()
        if not self._idx.closed:
            self._idx.close()


def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file -> ``(keys, offsets)`` int64 arrays sorted by key (file order is free).

    Raises FileNotFoundError when absent, RecordIOError naming the line for malformed or duplicate keys.
    """
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise FileNotFoundError(f"RecordIO index not found: {idx_path} (expected beside the .rec)")
    data = idx_path.read_bytes()
    fast = _parse_index_fast(data)
    if fast is not None:
        keys, offsets = fast
    else:
        keys, offsets = _parse_index_lines(data, idx_path)
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    dup = np.nonzero(np.diff(keys) == 0)[0]
    if dup.size:
        raise RecordIOError(f"key {int(keys[dup[0]])} appears more than once", path=idx_path)
    return keys, offsets


def _parse_index_fast(data: bytes):
    """C-speed parse of a well-formed mxnet index (one tab per line, two integers); None when unsure."""
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if data.count(b"\t") != lines:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ") if lines else np.empty(0, np.int64)
        except ValueError:  # numpy >= 2.3 raises on unparsable text; the line parser names the line
            return None
    if values.size != 2 * lines:
        return None
    return values[0::2].copy(), values[1::2].copy()


def _parse_index_lines(data: bytes, idx_path: Path):
    raw = data.split(b"\n")
    keys = np.empty(len(raw), dtype=np.int64)
    offsets = np.empty(len(raw), dtype=np.int64)
    n = 0
    for lineno, line in enumerate(raw, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            keys[n], offsets[n] = int(fields[0]), int(fields[1])
        except ValueError:
            raise RecordIOError(f"line {lineno}: expected 'key<TAB>offset', got {quote(line)}", path=idx_path) from None
        n += 1
    return keys[:n], offsets[:n]


class IndexedRecordReader:
    """Random-access RecordIO reader over a ``.rec`` and its ``.idx``.

    Opens its file handle lazily and again in each new process, so an instance can be handed to DataLoader
    workers (fork or spawn). ``keys`` is sorted; ``read_key(k)`` returns the reassembled record bytes.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.path = Path(rec_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.path}")
        self.idx_path = Path(idx_path) if idx_path is not None else self.path.with_suffix(".idx")
        self.keys, self.offsets = read_index(self.idx_path)
        self.file_size = self.path.stat().st_size
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        i = np.searchsorted(self.keys, key)
        return bool(i < len(self.keys) and self.keys[i] == key)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb")
            self._pid = os.getpid()
        return self._file

    def offset_of(self, key: int) -> int:
        """Byte offset of ``key``; KeyError naming the files when the index lacks it."""
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            raise KeyError(f"{self.idx_path}: no key {key} in the index ({len(self.keys)} keys)")
        return int(self.offsets[i])

    def read_key(self, key: int) -> bytes:
        """The record stored under ``key`` (split parts reassembled, magic re-inserted)."""
        return self.read_at(self.offset_of(key), key=key)

    def read_at(self, offset: int, *, key=None) -> bytes:
        """The record starting at byte ``offset``; RecordIOError names file, key and offset when malformed."""
        if offset < 0 or offset + 8 > self.file_size:
            raise RecordIOError(f"index points past the end of the file ({self.file_size} bytes)",
                                path=self.path, key=key, offset=offset)
        f = self._handle()
        f.seek(offset)
        return _read_record(f, offset, self.path, key)[0]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def iter_records(rec_path: str | os.PathLike):
    """Yield ``(offset, record)`` for every record of a ``.rec`` in file order (no index needed)."""
    path = Path(rec_path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            found = _read_record(f, offset, path, None, at_end_ok=True)
            if found is None:
                return
            record, next_offset = found
            yield offset, record
            offset = next_offset


def _read_record(f, offset: int, path: Path, key, *, at_end_ok: bool = False):
    """The one chunk parser: read the record whose first chunk starts at ``offset`` (``f`` positioned there).

    Returns ``(record, offset after it)``: split parts reassembled, the magic re-inserted between them. With
    ``at_end_ok`` a clean end of file before the first chunk returns None. A chunk's length field (at most
    2^29 - 1) is checked against the bytes left in the file before anything is read or allocated.
    RecordIOError names the file, the key (when known) and the record's byte offset.
    """
    parts = []
    pos = offset
    file_size = os.fstat(f.fileno()).st_size
    while True:
        head = f.read(8)
        if not head and not parts and at_end_ok:
            return None
        if len(head) < 8:
            raise RecordIOError(f"truncated record: chunk header at {pos} cut off by the end of the file",
                                path=path, key=key, offset=offset)
        magic, lrec = struct.unpack("<II", head)
        if magic != RECORDIO_MAGIC:
            raise RecordIOError(f"bad magic 0x{magic:08x} at byte {pos} (expected 0x{RECORDIO_MAGIC:08x})",
                                path=path, key=key, offset=offset)
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if not parts and cflag not in (0, 1):
            raise RecordIOError(f"record starts with continuation flag {cflag} (expected 0 or 1)",
                                path=path, key=key, offset=offset)
        if parts and cflag not in (2, 3):
            raise RecordIOError(f"continuation flag {cflag} at byte {pos} inside a split record (expected 2 or 3)",
                                path=path, key=key, offset=offset)
        padded = (length + 3) & ~3
        if pos + 8 + length > file_size:  # checked before reading: read(n) would first allocate n bytes
            raise RecordIOError(f"truncated record: chunk at {pos} announces {length} bytes, "
                                f"{max(file_size - pos - 8, 0)} remain in the file", path=path, key=key, offset=offset)
        data = f.read(padded)
        if len(data) < length:
            raise RecordIOError(f"truncated record: chunk at {pos} announces {length} bytes, "
                                f"{len(data)} remain in the file", path=path, key=key, offset=offset)
        parts.append(data[:length] if padded != length else data)
        pos += 8 + padded
        if cflag in (0, 3):
            return (parts[0] if len(parts) == 1 else b"".join(parts)), pos
        parts.append(_MAGIC_BYTES)
