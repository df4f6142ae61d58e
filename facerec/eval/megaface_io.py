"""MegaFace scoring from files: feature sources, noise-list matching, results.json / cmc_*.json / plot.

Feature sources (docs/megaface.md): a devkit matio tree ``<root>/<listed path><suffix>``
or one packed float32/float64 ``.npy`` whose rows follow the list. Both are read in row blocks with plain
file reads (no memory map), so memory stays bounded. Noise lists (section 3.3, 6): FaceScrub entries are
image basenames, MegaFace entries relative paths; both are matched on the name without its extension
(spaces read as underscores), and entries that match nothing are counted and reported.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from facerec._quote import quote
from facerec.data.megaface import (FeatureFileError, parse_matio, feature_file_path, read_noise_list,
                                   read_template_list)

from .megaface import devkit_json, evaluate

__all__ = ["PackedFeatures", "MatioTreeFeatures", "open_features", "match_noise", "score_files",
           "summary_line", "plot_results"]

log = logging.getLogger(__name__)


class PackedFeatures:
    """Rows of a packed ``.npy`` (N, D) float32/float64, read block by block; ``feats[a:b]`` -> float32."""

    def __init__(self, path: str | Path, expected_rows: int | None = None):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                self.offset = f.tell()
        except FileNotFoundError:
            raise FileNotFoundError(f"packed feature file not found: {self.path}") from None
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            raise ValueError(f"{self.path}: not a .npy file ({type(exc).__name__}: {exc})") from None
        if len(shape) != 2 or fortran or dtype not in (np.dtype("<f4"), np.dtype("<f8")):
            raise ValueError(f"{self.path}: packed features must be a C-order little-endian float32/float64 "
                             f"(N, D) array, got shape {shape}, dtype {dtype}, fortran_order={fortran}")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        if expected_rows is not None and self.shape[0] != expected_rows:
            raise ValueError(f"{self.path}: has {self.shape[0]} rows but its list has {expected_rows} entries "
                             f"(rows must follow the list order)")
        size = self.path.stat().st_size
        need = self.offset + self.shape[0] * self.shape[1] * dtype.itemsize
        if size < need:
            raise ValueError(f"{self.path}: truncated: header says {self.shape} ({need} bytes) but the file has "
                             f"{size} bytes")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl: slice) -> np.ndarray:
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise TypeError(f"PackedFeatures supports contiguous row slices only, got {quote(sl)}")
        a, b, _ = sl.indices(self.shape[0])
        n = max(0, b - a)
        row = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset + a * row)
            out = np.fromfile(f, dtype=self.dtype, count=n * self.shape[1])
        return out.reshape(n, self.shape[1]).astype(np.float32, copy=False)

    def read_all(self) -> np.ndarray:
        return self[0:self.shape[0]]


class MatioTreeFeatures:
    """A devkit feature tree ``<root>/<path><suffix>``; checked whole on creation (every missing or
    wrong-sized file is reported in one FeatureFileError), then read in row blocks."""

    def __init__(self, root: str | Path, paths: Sequence[str], suffix: str, dim: int | None = None):
        self.root, self.paths, self.suffix = Path(root), list(paths), suffix
        if not self.root.is_dir():
            raise FileNotFoundError(f"feature tree not found: {self.root}")
        missing, wrong = [], []
        sizes = {}
        for p in self.paths:
            fp = feature_file_path(self.root, p, suffix)
            try:
                sizes[p] = os.stat(fp).st_size
            except FileNotFoundError:
                missing.append(str(fp))
        if dim is None:
            for p in self.paths:
                if p in sizes:
                    with open(feature_file_path(self.root, p, suffix), "rb") as f:
                        head = f.read(16)
                    if len(head) == 16:
                        dim = int(np.frombuffer(head, "<i4")[0]) * int(np.frombuffer(head, "<i4")[1])
                    break
        ok = {16 + 4 * (dim or 0), 16 + 8 * (dim or 0)}
        for p, size in sizes.items():
            if size not in ok:
                wrong.append((str(feature_file_path(self.root, p, suffix)),
                              f"{size} bytes; a {dim}-d feature file has {16 + 4 * (dim or 0)} (float32) or "
                              f"{16 + 8 * (dim or 0)} (float64)"))
        if missing or wrong:
            raise FeatureFileError(missing, wrong)
        self.shape = (len(self.paths), int(dim or 0))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, _ = sl.indices(self.shape[0])
        out = np.empty((max(0, b - a), self.shape[1]), dtype=np.float32)
        wrong = []
        for i in range(a, b):
            fp = feature_file_path(self.root, self.paths[i], self.suffix)
            with open(fp, "rb") as f:
                buf = f.read()
            try:
                v = parse_matio(buf, fp).reshape(-1)
                if v.shape[0] != self.shape[1]:
                    raise ValueError(f"dimension {v.shape[0]}, expected {self.shape[1]}")
            except ValueError as exc:
                wrong.append((str(fp), str(exc)))
                continue
            out[i - a] = v
        if wrong:
            raise FeatureFileError([], wrong)
        return out

    def read_all(self) -> np.ndarray:
        return self[0:self.shape[0]]


def open_features(source: str | Path, paths: Sequence[str], suffix: str | None, dim: int | None = None):
    """A packed ``.npy`` file (rows follow ``paths``) or a matio tree directory (needs ``suffix``)."""
    source = Path(source)
    if source.is_dir():
        if not suffix:
            raise ValueError(f"{source} is a matio feature tree: give the feature file suffix (e.g. _facerec.bin)")
        return MatioTreeFeatures(source, paths, suffix, dim)
    if source.suffix == ".npy" or source.is_file():
        feats = PackedFeatures(source, expected_rows=len(paths))
        if dim is not None and feats.shape[1] != dim:
            raise ValueError(f"{source}: features are {feats.shape[1]}-d, the probes are {dim}-d")
        return feats
    raise FileNotFoundError(f"feature source not found: {source} (a matio tree directory or a packed .npy)")


def _noise_key(name: str) -> str:
    return os.path.splitext(name.strip())[0].replace(" ", "_")


def match_noise(paths: Sequence[str], entries: Sequence[str], by_basename: bool) -> tuple[np.ndarray, dict]:
    """Mark listed paths that are on a noise list -> (bool mask over paths, report dict).

    by_basename: FaceScrub style (entries are image file names); else MegaFace style (relative paths).
    """
    keys = [_noise_key(os.path.basename(p) if by_basename else p) for p in paths]
    wanted = {_noise_key(os.path.basename(e) if by_basename else e) for e in entries}
    mask = np.fromiter((k in wanted for k in keys), dtype=bool, count=len(keys))
    found = {k for k, m in zip(keys, mask) if m}
    report = {"entries": len(entries), "unique_entries": len(wanted), "matched_images": int(mask.sum()),
              "unmatched_entries": len(wanted - found)}
    return mask, report


def _tag(list_path: Path, n: int, used: set) -> str:
    m = re.search(r"_(\d+_\d+)$", list_path.name)
    tag = m.group(1) if m else f"{n}_{list_path.stem}"
    base, i = tag, 1
    while tag in used:
        i += 1
        tag = f"{base}_{i}"
    used.add(tag)
    return tag


def summary_line(entry: dict) -> str:
    """One human line for one distractor list's result."""
    tar = entry["tar_at_far"].get("1e-06")
    rank1 = entry["rank1"]
    return (f"MegaFace {entry['distractor_list']}: rank-1 {100 * rank1:.2f}% @ {entry['num_distractors']} "
            f"distractors | CMC@5 {100 * entry['cmc'].get('5', float('nan')):.2f}% | "
            f"TAR@FAR=1e-6 {('%.2f%%' % (100 * tar)) if tar is not None else 'n/a'} | trials {entry['num_trials']} | "
            f"{entry['feature_dim']}-d | refined: {entry['num_probes_replaced']} probes replaced, "
            f"{entry['num_distractors_removed']} distractors at -inf"
            if rank1 is not None else f"MegaFace {entry['distractor_list']}: no trials")


def plot_results(entries: Sequence[dict], path: str | Path, title: str = "MegaFace Challenge 1") -> None:
    """CMC (rank, log x) and ROC (FAR, log x) side by side, one curve per distractor list (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for e in entries:
        label = f"{e['num_distractors']} distractors"
        ax1.step(np.asarray(e["cmc_curve"]["rank"]) + 1, e["cmc_curve"]["value"], where="post", label=label)
        fpr = np.asarray(e["roc_curve"]["fpr"], dtype=float)
        if len(fpr):
            ax2.step(np.maximum(fpr, 1e-9), e["roc_curve"]["tpr"], where="post", label=label)
    ax1.set(xscale="log", xlabel="rank", ylabel="identification rate", title=f"{title}: CMC", ylim=(0, 1.01))
    ax2.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate", title=f"{title}: ROC",
            ylim=(0, 1.01))
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_files(probe_list: str | Path, distractor_lists: Sequence[str | Path], probe_features: str | Path,
                distractor_features: Sequence[str | Path], out_dir: str | Path, *,
                feature_suffix: str | None = None, facescrub_noises: str | Path | None = None,
                megaface_noises: str | Path | None = None, algo: str | None = None, plot: bool = True,
                **evaluate_kw) -> dict:
    """Score a probe list against each distractor list from files and write the outputs into ``out_dir``.

    ``distractor_features`` is one source shared by every list (a matio tree) or one per list. Writes
    ``results.json``, ``cmc_facescrub_megaface_<algo>_<tag>.json`` per list (devkit shape) and
    ``megaface_<algo>.png``; returns the results dict. ``evaluate_kw`` go to :func:`evaluate`.
    """
    out_dir = Path(out_dir)
    probe_paths, probe_ids = read_template_list(probe_list)
    if probe_ids is None:
        raise ValueError(f'{probe_list}: a probe list needs an "id" list beside "path"')
    distractor_lists = [Path(p) for p in distractor_lists]
    if not distractor_lists:
        raise ValueError("give at least one distractor list")
    sources = list(distractor_features)
    if len(sources) == 1:
        sources = sources * len(distractor_lists)
    if len(sources) != len(distractor_lists):
        raise ValueError(f"{len(distractor_features)} distractor feature sources for {len(distractor_lists)} lists: "
                         f"give one (a matio tree) or one per list")
    if algo is None:
        algo = feature_suffix.split(".")[0].strip("_") if feature_suffix else "facerec"
    probe_src = open_features(probe_features, probe_paths, feature_suffix)
    probes = probe_src.read_all()
    probe_noise, probe_report = None, None
    if facescrub_noises is not None:
        probe_noise, probe_report = match_noise(probe_paths, read_noise_list(facescrub_noises), by_basename=True)
        log.info("facescrub noise list: %d probe images matched (expect 24 or 25 on the official list), "
                 "%d entries matched nothing", probe_report["matched_images"], probe_report["unmatched_entries"])
    megaface_entries = read_noise_list(megaface_noises) if megaface_noises is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"probe_list": str(probe_list), "probe_features": str(probe_features), "algo": algo,
               "facescrub_noises": str(facescrub_noises) if facescrub_noises else None,
               "megaface_noises": str(megaface_noises) if megaface_noises else None,
               "probe_noise": probe_report, "results": []}
    used: set = set()
    for dlist, src in zip(distractor_lists, sources):
        d_paths, _ = read_template_list(dlist)
        feats = open_features(src, d_paths, feature_suffix, dim=probes.shape[1])
        d_noise, d_report = None, None
        if megaface_entries is not None:
            d_noise, d_report = match_noise(d_paths, megaface_entries, by_basename=False)
            log.info("%s: megaface noise list: %d distractors matched, %d entries matched nothing", dlist.name,
                     d_report["matched_images"], d_report["unmatched_entries"])
        res = evaluate(probes, probe_ids, feats, probe_noise=probe_noise, distractor_noise=d_noise, **evaluate_kw)
        tag = _tag(dlist, len(d_paths), used)
        cmc_name = f"cmc_facescrub_megaface_{algo}_{tag}.json"
        (out_dir / cmc_name).write_text(json.dumps(devkit_json(res)))
        entry = {"distractor_list": str(dlist), "distractor_features": str(src), "cmc_json": cmc_name,
                 "distractor_noise": d_report, **res}
        results["results"].append(entry)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    if plot:
        plot_results(results["results"], out_dir / f"megaface_{algo}.png")
    return results
