"""Untrusted files other than .bin: decompression bombs refused from the header, listed paths that would
leave their root refused before anything is read or written."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from facerec.data import codec
from facerec.data.codec import ImageTooLargeError, decode_rgb, encode_image, image_size, read_rgb
from facerec.data.megaface import (check_listed_path, read_template_list, write_feature_tree,
                                   write_template_list)
from facerec.data.pack import FaceRecWriter
from facerec.data.recordio import RecordIOError


def _png_header(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 32


def _jpeg_header(w, h):
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\1\1\0\0\1\0\1\0\0"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\1\x22\0\2\x11\1\3\x11\1"
    return b"\xff\xd8" + app0 + sof + b"\0" * 32


def _gif_header(w, h):
    return b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b",\0\0\0\0\1\0\1\0\0\2\2D\1\0;"


BOMBS = {"png": _png_header(100_000, 100_000), "jpg": _jpeg_header(60_000, 60_000), "gif": _gif_header(65535, 65535)}


def test_header_sniffers_match_real_images():
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for ext in (".png", ".jpg"):
        assert image_size(encode_image(rgb, ext)) == (37, 53)
    ok, bmp = cv2.imencode(".bmp", rgb)
    assert image_size(bmp.tobytes()) == (37, 53)  # through Pillow's lazy header parse
    assert image_size(b"not an image") is None


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decompression_bombs_refused_before_decoding(tmp_path, kind):
    data = BOMBS[kind]
    assert len(data) < 100
    with pytest.raises(ImageTooLargeError, match="more than MAX_IMAGE_PIXELS"):
        decode_rgb(data)
    (tmp_path / f"bomb.{kind}").write_bytes(data)
    with pytest.raises(ValueError, match=rf"bomb\.{kind}: image header announces \d+x\d+"):
        read_rgb(tmp_path / f"bomb.{kind}")


def test_pixel_limit_applies_to_real_images(monkeypatch):
    data = encode_image(np.zeros((16, 16, 3), np.uint8), ".jpg")
    assert decode_rgb(data).shape == (16, 16, 3)
    monkeypatch.setattr(codec, "MAX_IMAGE_PIXELS", 255)
    with pytest.raises(ImageTooLargeError, match="16x16 = 256 pixels"):
        decode_rgb(data)


def test_bomb_inside_a_rec_names_file_and_key(tmp_path):
    from facerec.data import RecordDataset

    good = encode_image(np.zeros((112, 112, 3), np.uint8), ".jpg")
    with FaceRecWriter(tmp_path / "train.rec", 2, 1) as w:
        w.add(0, good)
        w.add(0, BOMBS["png"])
    ds = RecordDataset(tmp_path / "train.rec", train=False)
    assert ds.read(0)[0].shape == (112, 112, 3)
    with pytest.raises(RecordIOError, match=r"train\.rec, key 2, byte offset \d+: image header announces"):
        ds.read(1)


def test_bomb_inside_a_bin_names_file_and_image(tmp_path):
    from facerec.data.verification import read_bin, write_bin

    good = encode_image(np.zeros((16, 16, 3), np.uint8), ".png")
    write_bin(tmp_path / "v.bin", [good, BOMBS["jpg"]], [True])
    with pytest.raises(ValueError, match=r"v\.bin: image 1 \(pair 0\): image header announces"):
        read_bin(tmp_path / "v.bin")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../up.jpg", "a/../../up.jpg", "a\\..\\..\\up.jpg", "C:/x.jpg",
                                 "\\\\server\\share\\x.jpg", "a\0b.jpg", ""])
def test_listed_paths_that_leave_the_root_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="must be relative to its root"):
        check_listed_path(bad)
    write_template_list(tmp_path / "list.json", ["ok/a.jpg", bad])
    with pytest.raises(ValueError, match=r'list\.json: "path"\[1\]: listed path'):
        read_template_list(tmp_path / "list.json")
    out = tmp_path / "feats"
    with pytest.raises(ValueError, match="must be relative"):
        write_feature_tree(out, ["ok/a.jpg", bad], "_x.bin", np.ones((2, 4), np.float32))
    assert not (tmp_path / "up.jpg_x.bin").exists() and not (tmp_path.parent / "up.jpg_x.bin").exists()


def test_extract_list_refuses_escaping_paths_before_writing(tmp_path):
    from facerec.eval.megaface_extract import extract_list

    (tmp_path / "img").mkdir()
    with pytest.raises(ValueError, match=r"extract_list paths: entry 1: listed path '\.\./x\.jpg'"):
        extract_list(lambda x: np.zeros((len(x), 4), np.float32), tmp_path / "img", ["a.jpg", "../x.jpg"],
                     tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_ordinary_listed_paths_pass():
    for ok in ["Adam_Brody/Adam_Brody_1.png", "000/000001@N00/123_0.jpg", "a..b/c.jpg", "x.jpg"]:
        assert check_listed_path(ok) == ok


def test_text_lists_report_bad_bytes_and_escaping_names(tmp_path):
    from facerec.data.align import read_landmarks_file
    from facerec.data.megaface import read_noise_list
    from facerec.data.verification import read_pairs_txt

    (tmp_path / "noise.txt").write_bytes(b"# c\nA_1.png\nB_\x80.png\n")
    with pytest.raises(ValueError, match=r"noise\.txt: line 3 \(byte offset 14\): not UTF-8 text"):
        read_noise_list(tmp_path / "noise.txt")
    (tmp_path / "pairs.txt").write_text("Abel 1 2\n../../etc 1 2\n")
    with pytest.raises(ValueError, match=r"pairs\.txt: line 2: listed path '\.\./\.\./etc' must be relative"):
        read_pairs_txt(tmp_path / "pairs.txt")
    (tmp_path / "pairs.txt").write_text("Abel 1 2\nAbel inf 2\n")
    with pytest.raises(ValueError, match=r"pairs\.txt: line 2: expected"):
        read_pairs_txt(tmp_path / "pairs.txt")
    (tmp_path / "marks.txt").write_text("a.png 1 2 3 4 5 6 7 8 9 10\nb.png 1 2 3 nan 5 6 7 8 9 10\n")
    with pytest.raises(ValueError, match=r"marks\.txt: line 2: .*finite"):
        read_landmarks_file(tmp_path / "marks.txt")


def test_png_chunk_overrunning_the_data_is_not_handed_to_opencv():
    import time

    # found by the fuzz suite: an 80-byte PNG announcing a 184 MB chunk made OpenCV spend seconds and gigabytes
    data = bytearray(encode_image(np.zeros((10, 14, 3), np.uint8), ".png"))
    ihdr_end = 8 + 12 + 13
    data[ihdr_end:ihdr_end + 4] = struct.pack(">I", 0x0B000000)
    start = time.perf_counter()
    assert decode_rgb(bytes(data)) is None
    assert time.perf_counter() - start < 0.5


def test_gif_frame_larger_than_its_screen_counts():
    # found by the fuzz suite: OpenCV decodes a frame at the frame's size, not the screen's
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).convert("P").save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    i = data.index(b",", 13)  # the image descriptor
    data[i + 5:i + 9] = struct.pack("<HH", 65000, 65000)
    assert image_size(buf.getvalue()) == (10, 14) and image_size(bytes(data)) == (65000, 65000)
    with pytest.raises(ImageTooLargeError):
        decode_rgb(bytes(data))
    assert decode_rgb(bytes(data[:i + 3])) is None  # broken block structure: not handed to OpenCV
