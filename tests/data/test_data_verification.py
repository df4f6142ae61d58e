"""Verification .bin: round trips, Python-2 pickles, the real im2rec-built .bin, building from pairs.txt."""
import pickle
import struct

import cv2
import numpy as np
import pytest

from facerec.data import RecordDataset
from facerec.data.codec import encode_image
from facerec.cli.make_bin import main
from facerec.data.verification import build_bin_from_pairs, read_bin, read_bin_encoded, read_pairs_txt, write_bin


def _imgs(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (112, 112),
                                interpolation=cv2.INTER_NEAREST) for _ in range(n)])


def test_write_read_round_trip_png_is_lossless(tmp_path):
    imgs = _imgs(6)
    write_bin(tmp_path / "a.bin", imgs, [True, False, True])
    out, issame = read_bin(tmp_path / "a.bin")
    assert out.dtype == np.uint8 and out.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(out, imgs)
    assert issame.dtype == bool and issame.tolist() == [True, False, True]
    # the file is a protocol-2 pickle of (list of bytes, list of bool), readable by stock pickle
    with open(tmp_path / "a.bin", "rb") as f:
        assert f.read(2) == b"\x80\x02"
    bins, same = pickle.loads((tmp_path / "a.bin").read_bytes(), encoding="bytes")
    assert len(bins) == 6 and isinstance(bins[0], bytes) and same == [True, False, True]


def test_encoded_bytes_stored_verbatim_and_jpeg_option(tmp_path):
    blobs = [encode_image(img, ".jpg", 80) for img in _imgs(2)]
    write_bin(tmp_path / "b.bin", blobs, [False])
    assert read_bin_encoded(tmp_path / "b.bin")[0] == blobs
    write_bin(tmp_path / "c.bin", _imgs(2), [True], ext=".jpg", quality=90)
    assert read_bin_encoded(tmp_path / "c.bin")[0][0][:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "d.bin", blobs + blobs[:1], [True])


def _py2_pickle(bins, issame):
    """What Python 2's cPickle.dump((bins, issame), f, 2) emits for str items and bools."""
    out = [b"\x80\x02]q\x00("]
    for b in bins:
        out.append(b"T" + struct.pack("<I", len(b)) + b)  # BINSTRING: a Python 2 str
    out.append(b"e]q\x01(")
    out.extend(b"\x88" if s else b"\x89" for s in issame)
    out.append(b"e\x86q\x02.")
    return b"".join(out)


def test_python2_pickle(tmp_path):
    imgs = _imgs(4, seed=1)
    blobs = [encode_image(img, ".png") for img in imgs]
    (tmp_path / "py2.bin").write_bytes(_py2_pickle(blobs, [True, False]))
    with pytest.raises(UnicodeDecodeError):  # why encoding='bytes' is needed
        pickle.loads((tmp_path / "py2.bin").read_bytes())
    out, issame = read_bin(tmp_path / "py2.bin")
    np.testing.assert_array_equal(out, imgs)
    assert issame.tolist() == [True, False]


def test_bad_bin_files(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"junk\.bin: not a readable pickle"):
        read_bin(tmp_path / "junk.bin")
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match=r"odd\.bin: 3 images for 1 pairs"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "undecodable.bin").write_bytes(pickle.dumps(([b"a", b"b"], [True])))
    with pytest.raises(ValueError, match=r"undecodable\.bin: image 0 \(pair 0\): not a decodable image \(1 bytes\)"):
        read_bin(tmp_path / "undecodable.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_bin(tmp_path / "missing.bin")


def test_pairs_txt_parsing(tmp_path):
    (tmp_path / "pairs.txt").write_text("10\t300\nAnn\t1\t2\nAnn 3 Bob 1\nCy\t672.\t952.\n")
    assert read_pairs_txt(tmp_path / "pairs.txt") == [("Ann", 1, "Ann", 2), ("Ann", 3, "Bob", 1),
                                                      ("Cy", 672, "Cy", 952)]
    (tmp_path / "bad.txt").write_text("Ann 1 2\nAnn x\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2"):
        read_pairs_txt(tmp_path / "bad.txt")


def test_build_from_folder_and_pairs(tmp_path):
    imgs = _imgs(4)
    for name, i, img in [("Ann", 1, imgs[0]), ("Ann", 2, imgs[1]), ("Bob", 1, imgs[2]), ("Bob", 12, imgs[3])]:
        (tmp_path / "lfw" / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "lfw" / name / f"{name}_{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (tmp_path / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 2 Bob 12\n")
    summary = build_bin_from_pairs(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "out.bin")
    assert summary == {"pairs": 2, "positives": 1, "skipped": []}
    out, issame = read_bin(tmp_path / "out.bin")
    np.testing.assert_array_equal(out, imgs[[0, 1, 1, 3]])
    assert issame.tolist() == [True, False]
    (tmp_path / "pairs.txt").write_text("Ann 1 2\nAnn 1 Bob 5\n")
    with pytest.raises(FileNotFoundError, match=r"pair 2: no image Bob_0005"):
        build_bin_from_pairs(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "out.bin")
    summary = build_bin_from_pairs(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "out.bin", skip_missing=True)
    assert summary["pairs"] == 1 and len(summary["skipped"]) == 1
    assert main([str(tmp_path / "lfw"), str(tmp_path / "pairs.txt"), str(tmp_path / "cli.bin")]) == 2
    assert main([str(tmp_path / "lfw"), str(tmp_path / "pairs.txt"), str(tmp_path / "cli.bin"), "--skip-missing"]) == 0
    assert read_bin(tmp_path / "cli.bin")[1].tolist() == [True]


def test_real_bin_matches_its_rec_and_pairs(shared_data, tmp_path):
    """validation.bin was built by InsightFace tooling from the photos in validation.rec + validation_pairs.txt."""
    folder = shared_data / "kzface-insightface-rec" / "validation"
    bins, issame = read_bin_encoded(folder / "validation.bin")
    assert len(bins) == 1498 and len(issame) == 749 and issame.all()
    images, issame2 = read_bin(folder / "validation.bin")
    assert images.shape == (1498, 112, 112, 3) and np.array_equal(issame, issame2)
    # unpack the .rec into a folder with the .lst names and rebuild the .bin from the pairs file
    ds = RecordDataset(folder / "validation.rec", num_classes=25)
    names = {int(k): name for k, _, name in (line.split("\t") for line in
                                                (folder / "validation.lst").read_text().splitlines())}
    for key in ds.keys.tolist():
        target = tmp_path / "faces" / names[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(ds.reader.read_key(key)[24:]))
    # The InsightFace-style script skipped line 1 of pairs.txt as LFW's "folds pairs" header, although
    # this file has none, so the .bin holds pairs 2..750; we rebuild from the same lines.
    lines = (folder / "validation_pairs.txt").read_text().splitlines()
    (tmp_path / "pairs.txt").write_text("\n".join(lines[1:]) + "\n")
    summary = build_bin_from_pairs(tmp_path / "faces", tmp_path / "pairs.txt", tmp_path / "v.bin")
    rebuilt, same = read_bin(tmp_path / "v.bin")
    assert summary["pairs"] == 749 and same.all()
    # same photos in the same order, RGB like the .bin (im2rec re-encoded them: small JPEG differences)
    diff = np.abs(rebuilt.astype(np.float32) - images.astype(np.float32)).mean(axis=(1, 2, 3))
    assert diff.max() < 3, diff.max()
