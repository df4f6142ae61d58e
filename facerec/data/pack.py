"""Write InsightFace-layout RecordIO datasets; ``facerec-pack SRC OUT.rec`` packs an image folder.

Layout written (InsightFace's, docs/data.md), readable by :class:`RecordDataset`, mxnet and
arcface_torch: key 0 = header (flag 2, labels ``[N+1, N+1+C]``), keys ``1..N`` = images grouped by identity
(flag 0, scalar float label, ``id`` = key), keys ``N+1..N+C`` = one record per identity (flag 2, labels
``[start, end)`` of its image keys), ``OUT.idx`` beside ``OUT.rec``, ``property`` (``C,H,W``) in the same
folder, and ``OUT.classes.txt`` (label -> source folder name) for packed folders.

CLI: every sub-folder of SRC is one identity (sorted names -> labels 0..C-1); images must already be aligned
to ``--size`` (``facerec-align`` does that). JPEG files of the right size are stored
byte-for-byte, anything else (PNG, greyscale, ...) is re-encoded as JPEG ``--quality``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .codec import decode_rgb, encode_image
from .recordio import IndexedRecordWriter, IRHeader, pack_header

__all__ = ["FaceRecWriter", "pack_folder"]

logger = logging.getLogger(__name__)


class FaceRecWriter:
    """Stream images into an InsightFace-layout ``.rec``/``.idx``/``property``.

    Args:
        rec_path: output ``.rec``; ``.idx`` and ``property`` are written beside it.
        num_images: N, the number of :meth:`add` calls that will follow.
        num_classes: C; labels must arrive grouped and in order 0, 0, ..., 1, ..., C-1.
        image_size: (H, W) written to ``property``.

    Use as a context manager; leaving the block without error checks the counts and writes the identity
    records and ``property``.
    """

    def __init__(self, rec_path, num_images: int, num_classes: int, image_size=(112, 112)):
        if num_images < 1 or num_classes < 1:
            raise ValueError(f"need num_images >= 1 and num_classes >= 1, got {num_images}, {num_classes}")
        self.rec_path = Path(rec_path)
        self.num_images, self.num_classes = int(num_images), int(num_classes)
        self.image_size = tuple(int(v) for v in image_size)
        self._writer = IndexedRecordWriter(self.rec_path)
        n1 = self.num_images + 1
        self._writer.write_idx(0, pack_header(IRHeader(2, [n1, n1 + self.num_classes], 0, 0), b""))
        self._key = 1
        self._starts = []

    def add(self, label: int, data: bytes) -> int:
        """Append one encoded image of identity ``label``; returns its key."""
        label = int(label)
        if self._key > self.num_images:
            raise ValueError(f"more than the announced {self.num_images} images")
        current = len(self._starts) - 1
        if label == current + 1 and label < self.num_classes:
            self._starts.append(self._key)
        elif label != current:
            raise ValueError(f"labels must arrive grouped as 0..{self.num_classes - 1} in order; got {label} "
                             f"after {current}")
        key = self._key
        self._writer.write_idx(key, pack_header(IRHeader(0, float(label), key, 0), data))
        self._key += 1
        return key

    def close(self) -> None:
        """Write the identity records and ``property``; raises ValueError when the counts do not match."""
        if self._writer is None:
            return
        try:
            if self._key != self.num_images + 1 or len(self._starts) != self.num_classes:
                raise ValueError(f"announced {self.num_images} images / {self.num_classes} classes, received "
                                 f"{self._key - 1} / {len(self._starts)}")
            ends = self._starts[1:] + [self._key]
            for c, (start, end) in enumerate(zip(self._starts, ends)):
                self._writer.write_idx(self.num_images + 1 + c,
                                       pack_header(IRHeader(2, [start, end], 0, 0), b""))
        finally:
            self._writer.close()
            self._writer = None
        h, w = self.image_size
        (self.rec_path.parent / "property").write_text(f"{self.num_classes},{h},{w}\n", encoding="ascii")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()
            self._writer = None


def pack_folder(src, out_rec, *, size=(112, 112), quality: int = 95, skip_bad: bool = False) -> dict:
    """Pack ``src/<identity>/<images>`` into ``out_rec`` (InsightFace layout).

    Raises ValueError naming the file for an undecodable or wrongly sized image unless ``skip_bad`` (then it
    is listed in the returned summary's ``skipped``). Returns ``{"images", "classes", "skipped", ...}``.
    """
    from .datasets import scan_image_folder

    paths, labels, names = scan_image_folder(src)
    good, skipped = [], []
    for path, label in zip(paths, labels):
        data = path.read_bytes()
        img = decode_rgb(data)
        if img is None or img.shape[:2] != tuple(size):
            reason = "not decodable" if img is None else f"is {img.shape[0]}x{img.shape[1]}, expected " \
                f"{size[0]}x{size[1]} (align it first: facerec-align)"
            if not skip_bad:
                raise ValueError(f"{path}: {reason}")
            skipped.append(f"{path}: {reason}")
            continue
        is_jpeg = data[:3] == b"\xff\xd8\xff"
        good.append((label, path, data if is_jpeg else None, img))
    used = sorted({label for label, *_ in good})
    remap = {old: new for new, old in enumerate(used)}
    out_rec = Path(out_rec)
    out_rec.parent.mkdir(parents=True, exist_ok=True)
    with FaceRecWriter(out_rec, len(good), len(used), size) as writer:
        for label, path, data, img in good:
            writer.add(remap[label], data if data is not None else encode_image(img, ".jpg", quality))
    classes_path = out_rec.with_suffix(".classes.txt")
    classes_path.write_text("".join(f"{remap[old]}\t{names[old]}\n" for old in used), encoding="utf-8")
    return {"images": len(good), "classes": len(used), "skipped": skipped, "rec": str(out_rec),
            "idx": str(out_rec.with_suffix(".idx")), "property": str(out_rec.parent / "property"),
            "classes_file": str(classes_path)}
