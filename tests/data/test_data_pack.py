"""pack CLI: image folder -> InsightFace-layout .rec/.idx/property readable by RecordDataset."""
import cv2
import numpy as np
import pytest

from facerec.data import RecordDataset
from facerec.cli.pack import main
from facerec.data.pack import FaceRecWriter, pack_folder
from facerec.data.recordio import IndexedRecordReader, unpack_header


def _folder(root, counts, size=112):
    rng = np.random.default_rng(0)
    imgs = {}
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for j in range(n):
            img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (size, size),
                             interpolation=cv2.INTER_NEAREST)
            ext = ".jpg" if j % 2 else ".png"
            cv2.imwrite(str(root / name / f"{j}{ext}"), img[..., ::-1])
            imgs[(name, j)] = img
    return imgs


def test_pack_cli_round_trip(tmp_path, capsys):
    imgs = _folder(tmp_path / "src", {"zed": 2, "amy": 3})
    assert main([str(tmp_path / "src"), str(tmp_path / "out" / "train.rec")]) == 0
    assert "packed 5 images of 2 identities" in capsys.readouterr().out
    out = tmp_path / "out"
    assert (out / "property").read_text().strip() == "2,112,112"
    assert (out / "train.classes.txt").read_text() == "0\tamy\n1\tzed\n"
    ds = RecordDataset(out / "train.rec", train=False)
    assert len(ds) == 5 and ds.num_classes == 2 and ds.scan_labels().tolist() == [0, 0, 0, 1, 1]
    assert np.abs(ds.read(0)[0].astype(int) - imgs[("amy", 0)]).mean() < 3
    # a JPEG of the right size is stored byte for byte
    assert bytes(IndexedRecordReader(out / "train.rec").read_key(2)[24:]) == (tmp_path / "src/amy/1.jpg").read_bytes()
    header, _ = unpack_header(IndexedRecordReader(out / "train.rec").read_key(0))
    assert header.flag == 2 and header.label.tolist() == [6, 8]


def test_pack_rejects_wrong_size_unless_skipped(tmp_path, capsys):
    _folder(tmp_path / "src", {"amy": 2})
    _folder(tmp_path / "src2", {"bob": 1}, size=100)
    (tmp_path / "src2" / "bob").rename(tmp_path / "src" / "bob")
    assert main([str(tmp_path / "src"), str(tmp_path / "a.rec")]) == 2
    assert "is 100x100, expected 112x112" in capsys.readouterr().err
    summary = pack_folder(tmp_path / "src", tmp_path / "b.rec", skip_bad=True)
    assert summary["images"] == 2 and summary["classes"] == 1 and len(summary["skipped"]) == 1


def test_face_rec_writer_checks_order_and_counts(tmp_path):
    with pytest.raises(ValueError, match="grouped"):
        with FaceRecWriter(tmp_path / "x.rec", 3, 2) as w:
            w.add(0, b"a")
            w.add(1, b"b")
            w.add(0, b"c")
    w = FaceRecWriter(tmp_path / "y.rec", 3, 2)
    w.add(0, b"a")
    with pytest.raises(ValueError, match="announced 3 images / 2 classes, received 1 / 1"):
        w.close()


def test_own_photos_end_to_end_on_real_faces(shared_data, tmp_path):
    """ORL photos (92x112 greyscale PGM, one folder per person) -> align (centre fallback) -> pack -> dataset."""
    from facerec.cli.align import main as align_main

    src = shared_data / "orl-att-faces"
    assert align_main([str(src), str(tmp_path / "aligned"), "--detector", "none", "--fallback", "center"]) == 0
    assert main([str(tmp_path / "aligned"), str(tmp_path / "rec" / "train.rec")]) == 0
    ds = RecordDataset(tmp_path / "rec" / "train.rec", train=True)
    assert (len(ds), ds.num_classes) == (400, 40)
    img, label = ds.read(399)
    assert img.shape == (112, 112, 3) and label == 39
    assert (img[..., 0] == img[..., 1]).all()  # greyscale came through as 3 equal channels
