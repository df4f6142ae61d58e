"""Fuzzing the RecordIO readers (.idx, .rec chunks, the RecordDataset over .rec + .idx + property): every
mutated input is read or refused with RecordIOError / ValueError naming the file and the byte offset, key or
line, within the time and memory bounds of ``fuzzkit``."""
import struct

import numpy as np
import pytest
from fuzzkit import check_reader, mutated
from hypothesis import given
from hypothesis import strategies as st

from facerec.data.codec import encode_image
from facerec.data.datasets import RecordDataset, read_property
from facerec.data.pack import FaceRecWriter
from facerec.data.recordio import (RECORDIO_MAGIC, IndexedRecordReader, IndexedRecordWriter, IRHeader,
                                   iter_records, pack_header, read_index)

WHERE = r"byte offset \d+|line \d+|key -?\d+"


def _jpeg(seed):
    return encode_image(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8), ".jpg", 70)


@pytest.fixture(scope="module")
def rec_files(tmp_path_factory):
    """A raw .rec/.idx with a plain record, a record split at two aligned magics, a label-array record."""
    d = tmp_path_factory.mktemp("rec")
    magic = struct.pack("<I", RECORDIO_MAGIC)
    split = pack_header(IRHeader(0, 1.0, 2, 0), magic + b"abcd" + magic + b"tail!")
    with IndexedRecordWriter(d / "raw.rec") as w:
        w.write_idx(0, pack_header(IRHeader(0, 0.0, 1, 0), _jpeg(0)))
        w.write_idx(1, split)
        w.write_idx(7, pack_header(IRHeader(2, [3.0, 4.0], 3, 0), b"xyz"))
    with FaceRecWriter(d / "train.rec", 3, 2, (16, 16)) as w:
        for label, seed in ((0, 1), (0, 2), (1, 3)):
            w.add(label, _jpeg(seed))
    return {name: (d / name).read_bytes() for name in ("raw.rec", "raw.idx", "train.rec", "train.idx", "property")}


def _hot(rec: bytes, idx: bytes):
    offsets = [int(line.split(b"\t")[1]) for line in idx.splitlines() if b"\t" in line]
    return [o + k for o in offsets for k in (0, 4, 5, 6, 7, 8, 12, 16, 24, 28, 32)]


def test_fuzz_index(tmp_path, fuzz_settings, rec_files):
    path = tmp_path / "f.idx"

    @fuzz_settings()
    @given(st.one_of(mutated(rec_files["train.idx"]), st.binary(max_size=64),
                     st.text(alphabet="0123456789\t \n-+.e", max_size=80).map(str.encode)))
    def run(data):
        path.write_bytes(data)
        out = check_reader("recordio .idx", lambda: read_index(path), [path], where=WHERE)
        if out is not None:
            keys, offsets = out
            assert keys.dtype == offsets.dtype == np.int64 and len(keys) == len(offsets)
            assert np.all(np.diff(keys) > 0)

    run()


def test_fuzz_rec_chunks(tmp_path, fuzz_settings, rec_files):
    rec, idx = tmp_path / "raw.rec", tmp_path / "raw.idx"
    idx.write_bytes(rec_files["raw.idx"])
    good = {0: None, 1: None, 7: None}
    rec.write_bytes(rec_files["raw.rec"])
    reader = IndexedRecordReader(rec)
    good = {k: reader.read_key(k) for k in good}
    reader.close()

    def read_all():
        r = IndexedRecordReader(rec)
        try:
            return {int(k): r.read_key(int(k)) for k in r.keys}
        finally:
            r.close()

    @fuzz_settings()
    @given(mutated(rec_files["raw.rec"], hot=_hot(rec_files["raw.rec"], rec_files["raw.idx"])))
    def run(data):
        rec.write_bytes(data)
        out = check_reader("recordio .rec (indexed)", read_all, [rec], where=r"key \d+, byte offset \d+")
        if out is not None and data == rec_files["raw.rec"]:
            assert out == good
        listed = check_reader("recordio .rec (scan)", lambda: list(iter_records(rec)), [rec],
                              where=r"byte offset \d+")
        if listed is not None:
            assert all(isinstance(r, bytes) for _, r in listed)

    run()


def test_fuzz_record_dataset(tmp_path, fuzz_settings, rec_files):
    files = {name: tmp_path / name for name in ("train.rec", "train.idx", "property")}

    def read_all():
        ds = RecordDataset(files["train.rec"], train=False)
        out = [ds.read(i) for i in range(len(ds))]
        ds.scan_labels()
        return out

    @fuzz_settings(0.5)
    @given(st.sampled_from(sorted(files)).flatmap(
        lambda which: st.tuples(st.just(which), mutated(rec_files[which], hot=_hot(rec_files["train.rec"],
                                                                                     rec_files["train.idx"])
                                                        if which == "train.rec" else ()))))
    def run(case):
        which, data = case
        for name, path in files.items():
            path.write_bytes(data if name == which else rec_files[name])
        out = check_reader("RecordDataset", read_all, list(files.values()), where=WHERE)
        if out is not None:
            for img, label in out:
                assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and label >= 0

    run()


def test_fuzz_property(tmp_path, fuzz_settings, rec_files):
    path = tmp_path / "property"

    @fuzz_settings(0.5)
    @given(st.one_of(mutated(rec_files["property"]), st.binary(max_size=24)))
    def run(data):
        path.write_bytes(data)
        out = check_reader("property", lambda: read_property(path), [path], where=r"line 1")
        if out is not None:
            assert len(out) == 3 and min(out) > 0

    run()
