"""RecordDataset / ImageFolderDataset: header layout, plain im2rec, real files, corrupt data, workers, flips."""
import logging
import struct

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facerec.data import ImageFolderDataset, RecordDataset
from facerec.data.codec import encode_image
from facerec.data.pack import FaceRecWriter
from facerec.data.recordio import IndexedRecordWriter, IRHeader, RecordIOError, pack_header


def _images(n, seed=0, size=112):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return [cv2.resize(b, (size, size), interpolation=cv2.INTER_NEAREST) for b in base]


def _write_header_rec(folder, labels, ext=".png"):
    imgs = _images(len(labels))
    with FaceRecWriter(folder / "train.rec", len(labels), max(labels) + 1) as w:
        for img, label in zip(imgs, labels):
            w.add(label, encode_image(img, ext))
    return folder / "train.rec", imgs


def test_header_layout_reads_images_and_ranges(tmp_path):
    labels = [0, 0, 1, 2, 2, 2]
    path, imgs = _write_header_rec(tmp_path, labels)
    ds = RecordDataset(path, train=False)
    assert (len(ds), ds.num_classes, ds.image_size, ds.identity_key_range) == (6, 3, (112, 112), (7, 10))
    for i in range(6):
        img, label = ds.read(i)
        assert img.dtype == np.uint8 and img.shape == (112, 112, 3) and label == labels[i]
        np.testing.assert_array_equal(img, imgs[i])  # PNG: lossless, and RGB in == RGB out
    assert ds.scan_labels().tolist() == labels
    x, label = ds[2]
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32 and label == 1
    torch.testing.assert_close(x, torch.from_numpy(imgs[2]).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6, rtol=0)
    # identity records hold [start, end) key ranges
    rng_rec = ds.reader.read_key(7 + 2)
    assert struct.unpack_from("<IfQQ", rng_rec)[0] == 2
    assert np.frombuffer(rng_rec[24:32], "<f4").tolist() == [4.0, 7.0]
    with pytest.raises(IndexError):
        ds.read(6)


def test_plain_im2rec_layout_and_label_arrays(tmp_path):
    imgs = _images(4)
    with IndexedRecordWriter(tmp_path / "p.rec") as w:
        for k in (2, 0, 3, 1):  # keys out of order in the file and the idx
            label = [float(k % 2), 7.0] if k == 3 else float(k % 2)  # arrays reduce to label[0]
            w.write_idx(k, pack_header(IRHeader(0, label, k, 0), encode_image(imgs[k], ".png")))
    (tmp_path / "property").write_text("2,112,112")
    ds = RecordDataset(tmp_path / "p.rec", train=False)
    assert len(ds) == 4 and ds.identity_key_range is None
    assert [ds.read(i)[1] for i in range(4)] == [0, 1, 0, 1]
    np.testing.assert_array_equal(ds.read(3)[0], imgs[3])


def test_folder_path_and_label_array_records(tmp_path):
    imgs = _images(2)
    with IndexedRecordWriter(tmp_path / "train.rec") as w:
        for k in range(2):
            w.write_idx(k, pack_header(IRHeader(0, [float(k), 5.0], k, 0), encode_image(imgs[k], ".png")))
    (tmp_path / "property").write_text("2,112,112")
    ds = RecordDataset(tmp_path, train=False)
    assert ds.identity_key_range is None and len(ds) == 2 and [ds.read(i)[1] for i in range(2)] == [0, 1]


def test_input_size_112x96_crop_and_flip_determinism(tmp_path):
    path, imgs = _write_header_rec(tmp_path, [0, 1])
    ds = RecordDataset(path, train=True, input_size=(112, 96))
    torch.manual_seed(3)
    a = [ds[i % 2][0] for i in range(16)]
    torch.manual_seed(3)
    b = [ds[i % 2][0] for i in range(16)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == (3, 112, 96) for x in a)
    ref = torch.from_numpy(imgs[0][:, 8:104]).permute(2, 0, 1).float() / 127.5 - 1
    flips = [torch.equal(x, ref.flip(-1)) for x in a[::2]]
    plain = [torch.allclose(x, ref, atol=1e-6) for x in a[::2]]
    assert all(f or p for f, p in zip(flips, plain)) and any(flips) and any(plain)
    with pytest.raises(ValueError, match="input_size"):
        RecordDataset(path, input_size=(96, 96))


def test_dataloader_two_workers_matches_one_process(tmp_path):
    path, _ = _write_header_rec(tmp_path, [0, 0, 1, 1, 2, 2, 3, 3, 4])
    ds = RecordDataset(path, train=False)
    single = [(x, y) for x, y in DataLoader(ds, batch_size=2, num_workers=0)]
    multi = [(x, y) for x, y in DataLoader(ds, batch_size=2, num_workers=2)]
    assert len(single) == len(multi) == 5
    for (x0, y0), (x1, y1) in zip(single, multi):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_dataloader_workers_flip_reproducibly(tmp_path):
    path, _ = _write_header_rec(tmp_path, [0, 1, 2, 3])
    ds = RecordDataset(path, train=True)

    def run():
        torch.manual_seed(7)
        return torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)])

    a, b = run(), run()
    assert torch.equal(a, b)


def test_corrupt_jpeg_label_range_and_skip_corrupt(tmp_path, caplog):
    imgs = _images(3)
    with FaceRecWriter(tmp_path / "train.rec", 3, 2) as w:
        w.add(0, encode_image(imgs[0], ".jpg"))
        w.add(0, b"\xff\xd8 this is not a jpeg")
        w.add(1, encode_image(imgs[2], ".jpg"))
    ds = RecordDataset(tmp_path / "train.rec", train=False)
    offset = ds.reader.offset_of(2)
    with pytest.raises(RecordIOError, match=rf"train\.rec, key 2, byte offset {offset}: undecodable image"):
        ds.read(1)
    (tmp_path / "property").write_text("1,112,112")  # now label 1 is out of range
    ds = RecordDataset(tmp_path / "train.rec", train=False)
    with pytest.raises(RecordIOError, match=r"key 3, byte offset \d+: label 1 out of range \[0, 1\)"):
        ds.read(2)
    skipping = RecordDataset(tmp_path / "train.rec", train=False, skip_corrupt=True, num_classes=2)
    with caplog.at_level(logging.WARNING, logger="facerec.data.datasets"):
        x, label = skipping[1]  # corrupt -> the next sample
    assert label == 1 and skipping.num_skipped == 1 and "undecodable" in caplog.text
    with pytest.raises(RecordIOError):
        skipping.read(1)  # read() never hides errors


def test_missing_idx_or_property(tmp_path):
    path, _ = _write_header_rec(tmp_path, [0, 1])
    (tmp_path / "property").unlink()
    with pytest.raises(FileNotFoundError, match=r"property file not found: .*property"):
        RecordDataset(path)
    assert RecordDataset(path, num_classes=2).num_classes == 2
    (tmp_path / "property").write_text("two,112,112")
    with pytest.raises(ValueError, match=r"property: line 1: expected 'num_classes,H,W'"):
        RecordDataset(path)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.idx"):
        RecordDataset(path, num_classes=2)
    with pytest.raises(FileNotFoundError, match=r"nothere\.rec"):
        RecordDataset(tmp_path / "nothere.rec")


def test_real_im2rec_validation_set(shared_data):
    folder = shared_data / "kzface-insightface-rec"
    ds = RecordDataset(folder / "validation" / "validation.rec", train=False, num_classes=25)
    assert len(ds) == 229
    labels = ds.scan_labels()
    assert labels.min() == 0 and labels.max() == 24 and np.bincount(labels).min() >= 8
    lst = {int(line.split("\t")[0]): line.split("\t") for line in
           (folder / "validation" / "validation.lst").read_text().splitlines()}
    for i in (0, 100, 228):
        img, label = ds.read(i)
        assert img.shape == (112, 112, 3) and label == int(float(lst[int(ds.keys[i])][1]))
    # the same identities/labels in the testing set; property beside the folders says 25 classes
    assert RecordDataset(folder / "testing" / "testing.rec", num_classes=25).read(0)[0].shape == (112, 112, 3)


def test_real_out_of_order_index(shared_data):
    folder = shared_data / "adaface-tiny-rec"
    ds = RecordDataset(folder / "train.rec", train=False, num_classes=2)
    lst = [line.split("\t") for line in (folder / "train.lst").read_text().splitlines()]
    by_key = {int(k): (int(float(label)), name) for k, label, name in lst}
    assert len(ds) == 8 and ds.keys.tolist() == sorted(by_key)
    for i, key in enumerate(ds.keys.tolist()):
        img, label = ds.read(i)
        assert label == by_key[key][0] and img.shape == (112, 112, 3)
    # RGB, not BGR: decoding by hand with OpenCV and swapping channels gives the same pixels
    raw = ds.reader.read_key(4)[24:]
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(ds.read(4)[0], bgr[..., ::-1])


def test_image_folder_dataset(tmp_path):
    imgs = _images(5)
    for i, (name, count) in enumerate([("bob", 2), ("alice", 3)]):
        (tmp_path / name).mkdir()
        for j in range(count):
            cv2.imwrite(str(tmp_path / name / f"{j}.png"), cv2.cvtColor(imgs[i * 2 + j], cv2.COLOR_RGB2BGR))
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "alice" / "grey.pgm"), np.full((112, 112), 77, np.uint8))
    ds = ImageFolderDataset(tmp_path, train=False)
    assert ds.class_names == ["alice", "bob"] and ds.num_classes == 2 and len(ds) == 6
    assert ds.scan_labels().tolist() == [0, 0, 0, 0, 1, 1]
    grey, _ = ds.read(3)
    assert grey.shape == (112, 112, 3) and (grey == 77).all()
    np.testing.assert_array_equal(ds.read(4)[0], imgs[0])
    x, y = ds[4]
    assert x.shape == (3, 112, 112) and y == 1
    (tmp_path / "bob" / "1.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"1\.png: not a decodable image"):
        ds.read(5)
