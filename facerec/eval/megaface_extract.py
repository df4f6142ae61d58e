"""Features for every image of a MegaFace/FaceScrub template list, written as a matio tree or a packed .npy.

The InsightFace testpack pipeline (docs/megaface.md): read each aligned image, feature =
L2-normalise(f(img) + f(mirrored img)), write ``<out>/<listed path><suffix>`` (devkit matio) or
one float32 ``.npy`` whose rows follow the list. Work is split into chunks of the list; under torchrun chunk i
belongs to rank ``i % world_size``. Finished chunks are skipped on a rerun (resumable): a matio chunk is done
when all its files exist (each written atomically), a packed chunk when its part file exists; rank 0 joins
the parts into the final ``.npy`` at the end. A write that fails (a full disk) leaves no partial file and
raises an OSError saying which chunk failed and that a rerun resumes there; finished chunks are kept.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from facerec._quote import quote
from facerec.data.codec import read_rgb
from facerec.data.megaface import check_listed_path, feature_file_path, write_matio

from .features import dist_rank_world, extract_features

__all__ = ["extract_list", "read_rgb"]

log = logging.getLogger(__name__)


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, root: Path, paths: Sequence[str]):
        self.root, self.paths = root, list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.paths[i], read_rgb(self.root / self.paths[i])


def _stack(items):
    names = [n for n, _ in items]
    shapes = {im.shape for _, im in items}
    if len(shapes) != 1:
        raise ValueError(f"images in one batch differ in size {sorted(shapes)} (e.g. {names[0]}): align every "
                         f"image to the model's input first (facerec.data.align)")
    return names, np.stack([im for _, im in items])


def _chunk_done_matio(out: Path, paths: Sequence[str], suffix: str) -> bool:
    return all(feature_file_path(out, p, suffix).is_file() for p in paths)


def extract_list(extractor: Callable, image_root: str | Path, paths: Sequence[str], out: str | Path, *,
                 fmt: str = "matio", suffix: str = "_facerec.bin", batch_size: int = 128, workers: int = 0,
                 flip: bool = True, chunk_size: int = 4096, progress: bool = True) -> Path:
    """Extract features of ``<image_root>/<path>`` for every listed path.

    Args:
        extractor: a FeatureExtractor (uint8 (n, H, W, 3) -> (n, D)).
        fmt: "matio" (``out`` is a directory; files ``<out>/<path><suffix>``) or "npy" (``out`` is the .npy).
        batch_size, workers: images per forward and DataLoader worker processes for decoding.
        flip: flip-sum before the L2 normalisation.
        chunk_size: images per resumable unit.
    Returns ``out``. Rerunning with the same arguments continues where it stopped.
    """
    if fmt not in ("matio", "npy"):
        raise ValueError(f"fmt must be 'matio' or 'npy', got {quote(fmt)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for i, p in enumerate(paths):
        check_listed_path(p, "extract_list paths", i)
    root, out = Path(image_root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    rank, world = dist_rank_world()
    n = len(paths)
    chunks = [(i, s, min(n, s + chunk_size)) for i, s in enumerate(range(0, n, chunk_size))]
    mine = [c for c in chunks if c[0] % world == rank]
    parts = out.with_name(out.name + ".parts")
    if fmt == "npy" and out.is_file():
        log.info("%s exists: nothing to do", out)
        return out
    if fmt == "matio":
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        parts.mkdir(parents=True, exist_ok=True)
    todo = []
    for i, s, e in mine:
        done = (_chunk_done_matio(out, paths[s:e], suffix) if fmt == "matio"
                else (parts / f"chunk_{i:07d}.npy").is_file())
        if not done:
            todo.append((i, s, e))
    if len(todo) < len(mine):
        log.info("rank %d: %d of %d chunks already done, resuming", rank, len(mine) - len(todo), len(mine))
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=sum(e - s for _, s, e in todo), desc=f"extract -> {out.name}", unit="img")
    for i, s, e in todo:
        loader = torch.utils.data.DataLoader(_ImageList(root, paths[s:e]), batch_size=batch_size,
                                             num_workers=workers, collate_fn=_stack)
        feats, names = [], []
        for batch_names, images in loader:
            feats.append(extract_features(extractor, images, batch_size=batch_size, flip=flip, shard=False))
            names.extend(batch_names)
            if bar is not None:
                bar.update(len(batch_names))
        feats = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
        try:
            _write_chunk(fmt, out, parts, i, names, feats, suffix)
        except OSError as exc:
            finished = len(mine) - len(todo) + todo.index((i, s, e))
            raise OSError(exc.errno, f"could not write the features of chunk {i} (list entries {s}..{e - 1}) "
                          f"under {out}: {exc.strerror or exc}. Every feature file or part already written "
                          f"is complete ({finished} finished chunks kept); free space and rerun with the same "
                          f"arguments to resume from chunk {i}.") from exc
    if bar is not None:
        bar.close()
    if fmt == "npy":
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            _join_parts(parts, out, len(chunks), n)
        if world > 1:
            torch.distributed.barrier()
    return out


def _write_chunk(fmt: str, out: Path, parts: Path, i: int, names, feats: np.ndarray, suffix: str) -> None:
    """One chunk's features: matio files (each atomic) or one part ``.npy`` (temporary file + rename)."""
    if fmt == "matio":
        for name, vec in zip(names, feats):
            fp = feature_file_path(out, name, suffix)
            fp.parent.mkdir(parents=True, exist_ok=True)
            write_matio(fp, vec)
        return
    tmp = parts / f"chunk_{i:07d}.tmp{os.getpid()}.npy"
    try:
        with open(tmp, "wb") as f:
            np.save(f, feats.astype(np.float32))
        os.replace(tmp, parts / f"chunk_{i:07d}.npy")
    finally:
        if tmp.exists():
            tmp.unlink()


def _join_parts(parts: Path, out: Path, n_chunks: int, n: int) -> None:
    arrays = [np.load(parts / f"chunk_{i:07d}.npy", mmap_mode="r") for i in range(n_chunks)]
    dim = arrays[0].shape[1] if arrays else 0
    rows = sum(len(a) for a in arrays)
    if rows != n:
        raise ValueError(f"{parts}: the parts hold {rows} rows, the list has {n}")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}.npy")
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                    "shape": (n, dim)})
            for a in arrays:
                f.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        os.replace(tmp, out)
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {out} from its parts: {exc.strerror or exc}. The parts in "
                      f"{parts} are kept; free space and rerun with the same arguments to join them.") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    shutil.rmtree(parts)
