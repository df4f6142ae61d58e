"""Data-loading throughput: RecordDataset vs the same JPEGs read from a folder with OpenCV, in one run.

Measures read + decode + augment (112x112 -> optional flip -> normalised float tensor) per sample in one
process (one worker). Reports images/s of wall time and images per CPU-second (process time, so the per-core
rate holds on a busy machine), plus the ratio to the folder baseline. Target: >= 1,500 images/s per core.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/data.py [--images 3000]
"""
import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from facerec.data import RecordDataset
from facerec.data.codec import decode_rgb
from facerec.data.synthetic import generate
from facerec.data.transforms import crop_to_input_size, normalize_image


class _OpenCVFolder(torch.utils.data.Dataset):
    """Baseline: cv2.imread of one JPEG per sample + the same crop/flip/normalise as RecordDataset."""

    def __init__(self, paths, labels, input_size=(112, 112)):
        self.paths, self.labels, self.input_size = paths, labels, input_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = cv2.cvtColor(cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        img = crop_to_input_size(img, self.input_size)
        if torch.rand(()).item() < 0.5:
            img = img[:, ::-1]
        return normalize_image(img), self.labels[i]


def _time(fn, order, repeats):
    best = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in order:
            fn(int(i))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if best is None or cpu < best[1]:
            best = (wall, cpu)
    return len(order) / best[0], len(order) / best[1]


def _loader_rate(ds, workers, batch_size=128):
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = max(2, args.images // 20)
        generate(tmp / "syn", num_identities=ids, images_per_identity=args.images // ids, val_identities=2,
                 val_images_per_identity=2, val_pairs=2, megaface=False)
        ds = RecordDataset(tmp / "syn" / "train.rec", train=True)
        paths, labels = [], []
        for i in range(len(ds)):  # the very same JPEG bytes as files
            key = int(ds.keys[i])
            data = bytes(ds.reader.read_key(key)[24:])
            p = tmp / "folder" / str(ds.label_of(i)) / f"{key}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            paths.append(p)
            labels.append(ds.label_of(i))
        folder = _OpenCVFolder(paths, labels)
        ds96 = RecordDataset(tmp / "syn" / "train.rec", train=True, input_size=(112, 96))
        order = np.random.default_rng(0).permutation(len(ds))
        torch.manual_seed(0)
        rows = [
            ("JPEG folder, cv2.imread + augment (baseline)", _time(folder.__getitem__, order, args.repeats)),
            ("RecordDataset.__getitem__ 112x112 (read + decode + flip + normalise)",
             _time(ds.__getitem__, order, args.repeats)),
            ("RecordDataset.__getitem__ 112x96 crop", _time(ds96.__getitem__, order, args.repeats)),
            ("RecordDataset.read (read + decode only)", _time(ds.read, order, args.repeats)),
            ("record bytes only (seek + read + reassemble)",
             _time(lambda i: ds.reader.read_key(int(ds.keys[i])), order, args.repeats)),
            ("cv2 JPEG decode only (bytes in memory)",
             _time(lambda i, b=[bytes(ds.reader.read_key(int(k))[24:]) for k in ds.keys]: decode_rgb(b[i]),
                   order, args.repeats)),
        ]
        base_wall, base_cpu = rows[0][1]
        print(f"\n{len(ds)} synthetic 112x112 JPEGs, one process, random order, best of {args.repeats}\n")
        print("| pipeline | images/s (wall) | images per CPU-second | vs folder (CPU) |")
        print("|---|---:|---:|---:|")
        for name, (wall, cpu) in rows:
            print(f"| {name} | {wall:,.0f} | {cpu:,.0f} | {cpu / base_cpu:.2f}x |")
        rate1 = _loader_rate(ds, 0)
        rate2 = _loader_rate(ds, 2)
        print(f"\nDataLoader(batch 128) RecordDataset: 0 workers {rate1:,.0f} img/s, 2 workers {rate2:,.0f} img/s "
              f"(wall; shared machine)")
        target = 1500
        got = rows[1][1][1]
        print(f"\ntarget >= {target:,} images/s per core for RecordDataset.__getitem__ at 112x112: "
              f"{'MET' if got >= target else 'MISSED'} ({got:,.0f} per CPU-second)")


if __name__ == "__main__":
    main()
