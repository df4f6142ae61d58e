"""RecordIO container: byte layout, split records, index order, IRHeader, malformed files, real im2rec files."""
import struct

import numpy as np
import pytest

from facerec.data.recordio import (RECORDIO_MAGIC, IndexedRecordReader, IndexedRecordWriter, IRHeader,
                                   RecordIOError, RecordWriter, iter_records, pack_header, read_index,
                                   unpack_header)

MAGIC = struct.pack("<I", RECORDIO_MAGIC)


def _chunk(cflag, data):
    return struct.pack("<II", RECORDIO_MAGIC, (cflag << 29) | len(data)) + data


def test_plain_record_layout_and_padding(tmp_path):
    with RecordWriter(tmp_path / "a.rec") as w:
        assert w.write(b"hello") == 0
        assert w.write(b"") == 16
        assert w.write(b"abcd") == 24
    raw = (tmp_path / "a.rec").read_bytes()
    assert raw == _chunk(0, b"hello") + b"\0\0\0" + _chunk(0, b"") + _chunk(0, b"abcd")


def test_split_record_layout_matches_dmlc(tmp_path):
    # magic at aligned offsets 4, 16, 20 is cut out; the one at offset 10 is not aligned and stays
    payload = b"abcd" + MAGIC + b"xy" + MAGIC + b"12" + MAGIC + MAGIC + b"z"
    with RecordWriter(tmp_path / "s.rec") as w:
        w.write(payload)
    expected = (_chunk(1, b"abcd") + _chunk(2, b"xy" + MAGIC + b"12") + _chunk(2, b"") + _chunk(3, b"z")
                + b"\0\0\0")
    assert (tmp_path / "s.rec").read_bytes() == expected
    assert [rec for _, rec in iter_records(tmp_path / "s.rec")] == [payload]


@pytest.mark.parametrize("payload", [MAGIC, MAGIC * 3, b"ab" + MAGIC, MAGIC + b"q", b"xxxx" + MAGIC,
                                     bytes(range(256)) * 3 + MAGIC * 2])
def test_split_round_trip(tmp_path, payload):
    with IndexedRecordWriter(tmp_path / "r.rec") as w:
        w.write_idx(7, payload)
        w.write_idx(3, b"after")
    r = IndexedRecordReader(tmp_path / "r.rec")
    assert r.read_key(7) == payload
    assert r.read_key(3) == b"after"


def test_index_keys_in_any_order(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.permutation(50)
    blobs = {int(k): rng.bytes(int(rng.integers(0, 40))) for k in keys}
    with IndexedRecordWriter(tmp_path / "o.rec") as w:
        for k in keys:
            w.write_idx(int(k), blobs[int(k)])
    lines = (tmp_path / "o.idx").read_text().splitlines()
    assert [int(x.split("\t")[0]) for x in lines] == keys.tolist()
    r = IndexedRecordReader(tmp_path / "o.rec")
    assert r.keys.tolist() == sorted(blobs)
    for k, blob in blobs.items():
        assert r.read_key(k) == blob
    assert 3 in r and 99 not in r
    with pytest.raises(KeyError, match="no key 99"):
        r.read_key(99)


def test_irheader_scalar_and_array_labels():
    rec = pack_header(IRHeader(0, 3.0, 11, 0), b"img")
    assert len(rec) == 24 + 3
    h, payload = unpack_header(rec)
    assert (h.flag, h.label, h.id, h.id2, bytes(payload)) == (0, 3.0, 11, 0, b"img")
    rec = pack_header(IRHeader(0, [5.0, 9.0], 0, 0), b"")
    assert struct.unpack_from("<IfQQ", rec) == (2, 0.0, 0, 0)
    h, payload = unpack_header(rec)
    assert h.flag == 2 and h.label.dtype == np.float32 and h.label.tolist() == [5.0, 9.0] and bytes(payload) == b""
    with pytest.raises(ValueError, match="announces 4 labels"):
        unpack_header(struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"\0" * 8)
    with pytest.raises(ValueError, match="shorter than the 24-byte"):
        unpack_header(b"\0" * 10)


def _three_records(tmp_path):
    with IndexedRecordWriter(tmp_path / "c.rec") as w:
        for k in range(3):
            w.write_idx(k, bytes([k]) * 10)
    return tmp_path / "c.rec"


def test_bad_magic_names_file_key_offset(tmp_path):
    path = _three_records(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[20:24] = b"\0\0\0\0"  # record 1 starts at 20
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordIOError, match=r"c\.rec, key 1, byte offset 20: bad magic 0x00000000") as info:
        IndexedRecordReader(path).read_key(1)
    assert (info.value.key, info.value.offset) == (1, 20)


def test_truncated_record(tmp_path):
    path = _three_records(tmp_path)
    path.write_bytes(path.read_bytes()[:50])  # record 2 (offset 40) loses most of its payload
    r = IndexedRecordReader(path)
    assert r.read_key(1) == b"\x01" * 10
    with pytest.raises(RecordIOError, match=r"key 2, byte offset 40: truncated record"):
        r.read_key(2)
    with pytest.raises(RecordIOError, match="truncated record"):
        list(iter_records(path))


def test_index_past_end_of_file(tmp_path):
    path = _three_records(tmp_path)
    (tmp_path / "c.idx").write_text("0\t0\n1\t20\n2\t4000\n")
    with pytest.raises(RecordIOError, match=r"key 2, byte offset 4000: index points past the end"):
        IndexedRecordReader(path).read_key(2)


def test_bad_index_lines_and_missing_index(tmp_path):
    path = _three_records(tmp_path)
    (tmp_path / "c.idx").write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match=r"c\.idx: line 2"):
        IndexedRecordReader(path)
    (tmp_path / "c.idx").write_text("0\t0\n0\t20\n")
    with pytest.raises(RecordIOError, match="key 0 appears more than once"):
        read_index(tmp_path / "c.idx")
    (tmp_path / "c.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"c\.idx"):
        IndexedRecordReader(path)


def test_reader_pickles_without_handle(tmp_path):
    import pickle
    r = IndexedRecordReader(_three_records(tmp_path))
    assert r.read_key(0) == b"\0" * 10  # opens the handle
    r2 = pickle.loads(pickle.dumps(r))
    assert r2._file is None and r2.read_key(2) == b"\x02" * 10


@pytest.mark.parametrize("rel", ["kzface-insightface-rec/validation/validation",
                                 "kzface-insightface-rec/testing/testing", "adaface-tiny-rec/train"])
def test_real_im2rec_files_rewrite_byte_identical(shared_data, tmp_path, rel):
    """Reading mxnet's files and writing them back in the same order reproduces .rec and .idx exactly."""
    src = shared_data / (rel + ".rec")
    reader = IndexedRecordReader(src)
    order = np.argsort(reader.offsets)
    with IndexedRecordWriter(tmp_path / "copy.rec") as w:
        for key in reader.keys[order]:
            w.write_idx(int(key), reader.read_key(int(key)))
    assert (tmp_path / "copy.rec").read_bytes() == src.read_bytes()
    original_idx = src.with_suffix(".idx").read_text().split()
    written_idx = (tmp_path / "copy.idx").read_text().split()
    # same key/offset pairs; mxnet writes the idx in its own write order, which may differ from offset order
    assert sorted(zip(original_idx[::2], original_idx[1::2])) == sorted(zip(written_idx[::2], written_idx[1::2]))
    h, payload = unpack_header(reader.read_key(int(reader.keys[0])))
    assert h.flag == 0 and bytes(payload[:2]) == b"\xff\xd8"
