"""Training datasets: :class:`RecordDataset` (InsightFace MS1M-V2 RecordIO layout) and :class:`ImageFolderDataset`.

Layout (InsightFace's releases, docs/data.md): ``train.rec`` + ``train.idx`` + ``property``
(``num_classes,H,W``) in one folder. Record 0 with flag > 0 is InsightFace's header: its labels are
``[N+1, N+1+C]``, images are keys ``1..N`` and keys ``N+1..N+C`` hold each identity's ``[start, end)`` key
range. Without that header (plain ``im2rec`` output) every key in the index is an image. Labels that arrive
as arrays are reduced to ``label[0]``. Images are decoded to RGB.

A sample is ``(image, label)``: ``read(i)`` gives the RGB uint8 (H, W, 3) array, ``__getitem__(i)`` the
training tensor (3, H, W) after the optional 112x96 centre crop, a random horizontal flip drawn from torch's
RNG (train only) and :func:`facerec.data.transforms.normalize`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facerec._quote import quote
from .codec import IMAGE_SUFFIXES, decode_rgb, read_rgb
from .recordio import IndexedRecordReader, RecordIOError, unpack_header
from .transforms import crop_to_input_size, normalize_image

__all__ = ["RecordDataset", "ImageFolderDataset", "read_property", "scan_image_folder"]

logger = logging.getLogger(__name__)


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """Parse an InsightFace ``property`` file -> ``(num_classes, height, width)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"property file not found: {path} (one line 'num_classes,H,W', e.g. "
                                f"'85742,112,112'; or pass num_classes= to RecordDataset)")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{path}: line 1: expected 'num_classes,H,W' with positive integers, "
                         f"got {quote(text)}") from None
    return values


def _check_input_size(input_size) -> tuple[int, int]:
    size = tuple(int(v) for v in input_size)
    if size not in ((112, 112), (112, 96)):
        raise ValueError(f"input_size must be (112, 112) or (112, 96), got {quote(input_size)}")
    return size


class _TrainSampleMixin:
    """Shared ``__getitem__``: read -> crop -> random flip (torch RNG) -> normalise."""

    train: bool
    input_size: tuple[int, int]
    skip_corrupt: bool

    def _sample(self, i: int):
        img, label = self.read(i)
        img = crop_to_input_size(img, self.input_size)
        if self.train and torch.rand(()).item() < 0.5:
            img = img[:, ::-1]
        return normalize_image(img), label

    def __getitem__(self, i: int):
        if not self.skip_corrupt:
            return self._sample(i)
        n = len(self)
        for attempt in range(n):
            j = (int(i) + attempt) % n
            try:
                return self._sample(j)
            except (RecordIOError, ValueError, FileNotFoundError) as err:
                self.num_skipped += 1
                logger.warning("skipping corrupt sample %d (%d skipped so far in this process): %s",
                               j, self.num_skipped, err)
        raise RuntimeError(f"every one of the {n} samples is corrupt")


class RecordDataset(_TrainSampleMixin, Dataset):
    """MS1M-V2-style RecordIO dataset.

    Args:
        path: the ``.rec`` file; ``.idx`` beside it (same stem) and ``property`` in the same folder.
        train: random horizontal flips in ``__getitem__``.
        input_size: (112, 112) or (112, 96); 112x112 images are centre-cropped for (112, 96).
        skip_corrupt: ``__getitem__`` counts (``num_skipped``), logs and skips a corrupt record by moving on
            to the next index instead of raising. ``read`` always raises.
        num_classes: overrides ``property`` (needed for plain im2rec files that come without one).

    ``path`` may also be the folder holding ``train.rec``. ``len()`` is the number of images, ``num_classes`` the
    number of identities; :meth:`scan_labels` reads every label from the record headers. Record 0 counts as
    InsightFace's header when it carries >= 2 labels and no image bytes (a plain im2rec record with a label
    array still holds its JPEG). Each DataLoader worker opens its own file handle.
    """

    def __init__(self, path, *, train: bool = True, input_size=(112, 112), skip_corrupt: bool = False,
                 num_classes: int | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / "train.rec"
        self.train = bool(train)
        self.input_size = _check_input_size(input_size)
        self.skip_corrupt = bool(skip_corrupt)
        self.num_skipped = 0
        self.reader = IndexedRecordReader(self.path)
        self.property_path = self.path.parent / "property"
        if num_classes is None:
            num_classes, h, w = read_property(self.property_path)
            self.image_size = (h, w)
        else:
            self.image_size = None
        if int(num_classes) <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.identity_key_range = None
        keys = self.reader.keys
        self.keys = keys
        if len(keys) and keys[0] == 0:
            header, payload = self._unpack(0)
            if header.flag >= 2 and (len(payload) == 0 or self._decode(0, payload) is None):
                first_id, end_id = (self._int_label(v, 0) for v in header.label[:2])
                if not 1 <= first_id <= end_id:
                    raise RecordIOError(f"header record labels {header.label[:2].tolist()} are not "
                                        f"[N+1, N+1+C] with N >= 0", path=self.path, key=0,
                                        offset=self.reader.offset_of(0))
                self.keys = np.arange(1, first_id, dtype=np.int64)
                self.identity_key_range = (first_id, end_id)
                missing = np.setdiff1d(self.keys, keys[(keys >= 1) & (keys < first_id)])
                if missing.size:
                    raise RecordIOError(f"header says images are keys 1..{first_id - 1} but the index lacks "
                                        f"{missing.size} of them (first missing: key {int(missing[0])})",
                                        path=self.reader.idx_path)

    def __len__(self) -> int:
        return len(self.keys)

    def _unpack(self, key: int):
        record = self.reader.read_key(key)
        try:
            return unpack_header(record)
        except ValueError as err:
            raise RecordIOError(str(err), path=self.path, key=key, offset=self.reader.offset_of(key)) from None

    def _int_label(self, value, key: int) -> int:
        if not np.isfinite(value):
            raise RecordIOError(f"label {value} is not a finite number", path=self.path, key=key,
                                offset=self.reader.offset_of(key))
        return int(value)

    def _decode(self, key: int, payload):
        try:
            return decode_rgb(payload)
        except ValueError as err:  # ImageTooLargeError: the header announces a decompression bomb
            raise RecordIOError(str(err), path=self.path, key=key, offset=self.reader.offset_of(key)) from None

    def read_key(self, key: int) -> tuple[np.ndarray, int]:
        """Record ``key`` -> (RGB uint8 (H, W, 3), int label); errors name the file, key and byte offset."""
        header, payload = self._unpack(key)
        label = self._int_label(header.label[0] if header.flag > 0 else header.label, key)
        if not 0 <= label < self.num_classes:
            raise RecordIOError(f"label {label} out of range [0, {self.num_classes}) (num_classes from "
                                f"{self.property_path})", path=self.path, key=key, offset=self.reader.offset_of(key))
        img = self._decode(key, payload)
        if img is None:
            raise RecordIOError(f"undecodable image ({len(payload)} bytes)", path=self.path, key=key,
                                offset=self.reader.offset_of(key))
        return img, label

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Sample ``i`` (0 <= i < len) -> (RGB uint8 (H, W, 3), int label)."""
        n = len(self.keys)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images in {self.path}")
        return self.read_key(int(self.keys[i]))

    def label_of(self, i: int) -> int:
        """Label of sample ``i`` without decoding the image."""
        key = int(self.keys[i])
        header, _ = self._unpack(key)
        return self._int_label(header.label[0] if header.flag > 0 else header.label, key)

    def scan_labels(self) -> np.ndarray:
        """Labels of every sample (int64, len N), read from the record headers (no decoding); cached."""
        if getattr(self, "_labels", None) is None:
            self._labels = np.array([self.label_of(i) for i in range(len(self))], dtype=np.int64)
        return self._labels


def scan_image_folder(root) -> tuple[list[Path], list[int], list[str]]:
    """One sub-folder per identity (sorted names -> labels 0..C-1); images found recursively inside each.

    Returns ``(paths, labels, class_names)``; raises ValueError when no class folder holds an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    paths, labels, names = [], [], []
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            logger.warning("%s: no images, folder skipped", d)
            continue
        label = len(names)
        names.append(d.name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise ValueError(f"{root}: no identity sub-folders with images ({', '.join(IMAGE_SUFFIXES)})")
    return paths, labels, names


class ImageFolderDataset(_TrainSampleMixin, Dataset):
    """``root/<identity>/<image>``: one folder per identity, labels by sorted folder name.

    Same sample contract as :class:`RecordDataset`; ``class_names[label]`` is the folder name.
    """

    def __init__(self, root, *, train: bool = True, input_size=(112, 112), skip_corrupt: bool = False):
        self.root = Path(root)
        self.train = bool(train)
        self.input_size = _check_input_size(input_size)
        self.skip_corrupt = bool(skip_corrupt)
        self.num_skipped = 0
        self.paths, labels, self.class_names = scan_image_folder(self.root)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Sample ``i`` -> (RGB uint8 (H, W, 3), int label)."""
        return read_rgb(self.paths[i]), int(self.labels[i])

    def scan_labels(self) -> np.ndarray:
        """Labels of every sample (int64, len N)."""
        return self.labels
