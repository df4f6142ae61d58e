"""Untrusted .bin files: code-executing pickles are refused before anything runs; every legitimate flavour
(InsightFace Python 2 and 3, numpy issame arrays, what write_bin writes, the real file) still reads."""
import os
import pickle
import struct

import numpy as np
import pytest

from facerec.data.codec import encode_image
from facerec.data.verification import read_bin, read_bin_encoded, write_bin


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    return [encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), ".png") for _ in range(n)]


class _Touch:
    """Unpickling this calls ``open(marker, 'w')``: a visible side effect if code ever runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("payload", [_Touch, _System])
@pytest.mark.parametrize("where", ["top", "in_bins", "in_issame"])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, protocol, payload, where):
    marker = tmp_path / "marker"
    evil = payload(marker)
    faces = _faces(2)
    obj = {"top": evil, "in_bins": ([faces[0], evil], [True]), "in_issame": (faces, [evil])}[where]
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    name = "posix.system" if payload is _System and os.name == "posix" else None
    with pytest.raises(ValueError, match=r"lfw\.bin.*refused global") as info:
        read_bin(path)
    assert not marker.exists(), "the payload ran"
    glob = "builtins.open" if payload is _Touch else (name or "system")
    assert glob in str(info.value) or "io.open" in str(info.value)


@pytest.mark.parametrize("opcode", [b"i", b"o", b"\x81", b"\x92", b"\x82", b"P", b"Q", b"\x97"])
def test_instantiating_opcodes_are_refused_statically(tmp_path, opcode):
    # INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1, PERSID, BINPERSID, NEXT_BUFFER (with minimal valid arguments)
    args = {b"i": b"os\nsystem\n", b"\x82": b"\x01", b"P": b"x\n"}.get(opcode, b"")
    path = tmp_path / "op.bin"
    path.write_bytes(b"\x80\x05(" + opcode + args + b".")
    with pytest.raises(ValueError, match=r"op\.bin: byte offset \d+: refused pickle opcode"):
        read_bin_encoded(path)


def test_huge_length_fields_are_refused_without_allocating(tmp_path):
    for name, blob in {"bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"ab.",
                       "unicode8": b"\x80\x04\x8d" + struct.pack("<Q", 1 << 60) + b"ab.",
                       "frame": b"\x80\x04\x95" + struct.pack("<Q", 1 << 50) + b"].",
                       "long4": b"\x80\x02\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x01."}.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=rf"{name}\.bin: not a readable pickle"):
            read_bin_encoded(path)


def test_guarded_numpy_and_bytearray_callables_refuse_abuse(tmp_path):
    for name, blob in {
        # bytearray(10**12): a terabyte from 30 bytes
        "bytearray": b"\x80\x02cbuiltins\nbytearray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85R.",
        # numpy _reconstruct with a huge shape instead of (0,)
        "reconstruct": b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05\x00\x10\xa5\xd4"
                       b"\xe8\x85U\x01b\x87R.",
        # an object dtype (would let the array state hold arbitrary objects)
        "objdtype": b"\x80\x02cnumpy\ndtype\nU\x02O8\x85R.",
        # _codecs.encode with a codec other than latin-1
        "codec": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.",
    }.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=rf"{name}\.bin: not a readable pickle \(UnpicklingError"):
            read_bin_encoded(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_legitimate_flavours_still_read(tmp_path, protocol):
    faces = _faces(4, seed=protocol)
    flavours = {
        "bytes_list": (faces, [True, False]),
        "numpy_issame": (faces, np.array([True, False])),
        "numpy_bool_items": (faces, [np.bool_(True), np.bool_(False)]),
        "int_issame": (faces, [1, 0]),
        "bytearray_items": ([bytearray(f) for f in faces], [True, False]),
        "uint8_array_items": ([np.frombuffer(f, np.uint8) for f in faces], (True, False)),
        "shared_items": ([faces[0], faces[1], faces[0], faces[1]], [True, True]),
    }
    for name, obj in flavours.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        bins, issame = read_bin_encoded(path)
        assert [bytes(b) for b in bins] == [bytes(b) for b in obj[0]], name
        assert issame.dtype == bool and issame.tolist() == [bool(v) for v in obj[1]], name
        assert read_bin(path)[0].shape == (4, 16, 16, 3)


def test_what_write_bin_writes_reads_back(tmp_path):
    imgs = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    write_bin(tmp_path / "w.bin", imgs, [False, True])
    out, issame = read_bin(tmp_path / "w.bin")
    np.testing.assert_array_equal(out, imgs)
    assert issame.tolist() == [False, True]


def test_wrong_types_name_the_file_and_item(tmp_path):
    faces = _faces(2)
    for name, obj, pattern in [
        ("items", ([faces[0], 7], [True]), r"items\.bin: image 1: expected encoded image bytes, got int"),
        ("issame", (faces, [b"yes"]), r"issame\.bin: issame\[0\]: expected a boolean, got bytes"),
        ("dict", {"a": 1}, r"dict\.bin: expected a pickled \(bins, issame\) pair, got dict"),
        ("floats", (faces, np.array([0.5])), r"floats\.bin: issame must be a 1-d bool array"),
    ]:
        (tmp_path / f"{name}.bin").write_bytes(pickle.dumps(obj, protocol=4))
        with pytest.raises(ValueError, match=pattern):
            read_bin_encoded(tmp_path / f"{name}.bin")


def test_real_insightface_bin_reads(shared_data):
    path = shared_data / "kzface-insightface-rec" / "validation" / "validation.bin"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    images, issame = read_bin(path)
    assert images.shape == (2 * len(issame), 112, 112, 3) and len(issame) == 749
    assert images.dtype == np.uint8 and issame.all()  # this file lists positive pairs only (749 NEWTRUE)


def test_huge_memo_index_is_refused(tmp_path):
    # found by the fuzz suite: LONG_BINPUT 55257236 made the unpickler allocate an 843 MB memo table
    blob = b"\x80\x04]r" + struct.pack("<I", 55_257_236) + b"."
    (tmp_path / "memo.bin").write_bytes(blob)
    with pytest.raises(ValueError, match=r"memo\.bin: byte offset 3: memo index 55257236 beyond"):
        read_bin_encoded(tmp_path / "memo.bin")
