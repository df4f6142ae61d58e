"""Fuzzing the verification .bin reader (mutated files of every flavour, pickles of arbitrary wrong types) and
the one image reader (mutated PNG, JPEG, BMP, GIF, PGM, WebP): a result, or ValueError naming the file (and,
for .bin, the byte offset, image index, issame entry or refused global), within the fuzzkit bounds."""
import io
import pickle
import pickletools

import cv2
import numpy as np
import pytest
from fuzzkit import check_reader, mutated
from hypothesis import given
from hypothesis import strategies as st

from facerec.data.codec import decode_rgb, encode_image, read_rgb
from facerec.data.verification import read_bin, write_bin

BIN_WHERE = r"byte offset \d+|image \d+|issame|refused|pairs|pair\)|bins must|expected a pickled"


def _faces(n, size=12):
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def bin_bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("bin")
    write_bin(d / "p2.bin", _faces(4), [True, False])  # what facerec writes: protocol 2, _codecs.encode
    blobs = [encode_image(f, ".jpg", 60) for f in _faces(4)]
    bases = {"p2": (d / "p2.bin").read_bytes(),
             "p4": pickle.dumps((blobs, [True, False]), protocol=4),  # InsightFace Python 3 files
             "p5_numpy": pickle.dumps(([np.frombuffer(b, np.uint8) for b in blobs], np.array([True, False])),
                                      protocol=5),
             "p2_numpy": pickle.dumps((blobs, np.array([False, True])), protocol=2)}
    hot = {k: [pos + 1 for _, _, pos in pickletools.genops(v)] for k, v in bases.items()}
    return bases, hot


_plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=3),
                                                                                           inner, max_size=3),
    max_leaves=12)
_arrays = st.sampled_from(["?", "u1", "i4", "f4", "f8", "c8", "U3", "S2", "O"]).flatmap(
    lambda dt: st.integers(0, 6).map(lambda n: np.zeros(n, dtype=dt)))


def test_fuzz_bin_mutations(tmp_path, fuzz_settings, bin_bases):
    bases, hot = bin_bases
    path = tmp_path / "lfw.bin"

    @fuzz_settings()
    @given(st.sampled_from(sorted(bases)).flatmap(lambda k: mutated(bases[k], hot=hot[k])))
    def run(data):
        path.write_bytes(data)
        out = check_reader(".bin (mutated)", lambda: read_bin(path), [path], where=BIN_WHERE)
        if out is not None:
            images, issame = out
            assert images.dtype == np.uint8 and images.shape[0] == 2 * issame.shape[0] and issame.dtype == bool

    run()


def test_fuzz_bin_wrong_types(tmp_path, fuzz_settings, bin_bases):
    path = tmp_path / "types.bin"
    blobs = [encode_image(f, ".png") for f in _faces(2)]
    bins = st.one_of(_plain, _arrays, st.lists(st.one_of(st.sampled_from(blobs), _plain, _arrays), max_size=4))
    issame = st.one_of(_plain, _arrays, st.lists(st.one_of(st.booleans(), _plain), max_size=3))

    @fuzz_settings(0.5)
    @given(st.one_of(_plain, st.tuples(bins, issame)), st.integers(0, 5))
    def run(obj, protocol):
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        out = check_reader(".bin (wrong types)", lambda: read_bin(path), [path], where=BIN_WHERE)
        if out is not None:
            assert out[0].shape[0] == 2 * out[1].shape[0]

    run()


@pytest.fixture(scope="module")
def image_bases():
    from PIL import Image

    rgb = np.random.default_rng(5).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    bases = {"png": encode_image(rgb, ".png"), "jpg": encode_image(rgb, ".jpg", 80)}
    for ext in (".bmp", ".pgm", ".webp"):
        ok, buf = cv2.imencode(ext, rgb[:, :, 0] if ext == ".pgm" else rgb)
        assert ok
        bases[ext[1:]] = buf.tobytes()
    gif = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(gif, format="GIF")
    bases["gif"] = gif.getvalue()
    for data in bases.values():  # first use loads Pillow's plugins (about a second): not the reader's cost
        decode_rgb(data)
    return bases


def test_fuzz_images(tmp_path, fuzz_settings, image_bases):
    @fuzz_settings()
    @given(st.sampled_from(sorted(image_bases)).flatmap(
        lambda k: st.tuples(st.just(k), mutated(image_bases[k], hot=list(range(0, 40, 2))))))
    def run(case):
        kind, data = case
        path = tmp_path / f"face.{kind}"
        path.write_bytes(data)
        img = check_reader("image (read_rgb)", lambda: read_rgb(path), [path])
        if img is not None:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3

    run()
