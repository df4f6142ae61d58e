"""The one-command demo: synthetic faces -> DRConv-MobileFaceNet -> verification -> MegaFace -> masks.

``facerec-demo [--config configs/demo.yaml] [--quick] [--set key=value ...]`` runs the main job of
the project end to end on the embedded synthetic set (nothing is downloaded):

1. generate the synthetic faces into ``data.path`` on first use (train.rec, synth_val.bin, a MegaFace tree);
2. train the configured model with the schedule runner (``facerec.train.loop.train``), verification on the
   held-out ``.bin`` sets at the end (10-fold protocol);
3. MegaFace-style identification: features of the synthetic FaceScrub-like probes and of the largest
   distractor list, scored with the refined (noise) lists by ``facerec.eval.megaface`` (rank-1, CMC, TAR@FAR);
4. a guided-mask figure (the paper's Fig. 3) of the trained model on a few probe faces;
5. one summary table (also written as ``summary.md`` / ``summary.json`` into the run folder).

``--quick`` shrinks every stage (fewer identities, steps and distractors) for a smoke run in CI; the numbers
it prints are not meant to be good. The command line itself (argv, printed table) is the ``facerec-demo``
console script.
Importing this module changes nothing in the process (no environment variables, no files).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["run_demo", "QUICK_OVERRIDES"]

log = logging.getLogger("facerec.demo")

# A smoke-sized run: small synthetic set in its own folder, a few dozen steps, 1k distractors.
QUICK_OVERRIDES = (
    "data.path=data/synthetic-quick",
    "data.synthetic_options.num_identities=40",
    "data.synthetic_options.images_per_identity=8",
    "data.synthetic_options.val_identities=20",
    "data.synthetic_options.val_pairs=200",
    "data.synthetic_options.probe_identities=6",
    "data.synthetic_options.probe_images_per_identity=5",
    "data.synthetic_options.num_distractors=1000",
    "schedule.total_steps=30",
    "schedule.milestones=20",
    "schedule.warmup_steps=0",
    "eval.every=0",
    "checkpoint.every=15",
    "train.out_dir=runs/demo-quick",
)


def _timed(name: str, timings: dict):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            log.info("== %s", name)
            return self

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t0
            return False
    return _T()


def _largest_distractor_list(lists_dir: Path) -> Path:
    """The ``megaface_features_list.json_<N>_1`` file with the largest N."""
    candidates = []
    for p in lists_dir.glob("megaface_features_list.json_*_1"):
        try:
            candidates.append((int(p.name.split("_")[-2]), p))
        except ValueError:
            continue
    if not candidates:
        raise ValueError(f"no distractor list megaface_features_list.json_<N>_1 in {lists_dir}")
    return max(candidates)[1]


def _megaface(backbone: torch.nn.Module, input_size, tree: Path, out: Path, batch_size: int, flip: bool) -> dict:
    """Extract probe + distractor features (packed .npy) and score them with the noise lists.

    ``flip`` adds the mirrored image's features (the usual protocol); the demo leaves it off by default
    because it doubles the extraction time, which is most of this stage on a CPU.
    """
    from facerec.data.megaface import read_template_list
    from facerec.eval.features import ModelFeatureExtractor
    from facerec.eval.megaface_extract import extract_list
    from facerec.eval.megaface_io import score_files

    lists = tree / "templatelists"
    probe_list = lists / "facescrub_features_list.json"
    dlist = _largest_distractor_list(lists)
    extractor = ModelFeatureExtractor(backbone, device="cpu", input_size=tuple(input_size))
    probe_paths, _ = read_template_list(probe_list)
    d_paths, _ = read_template_list(dlist)
    pf = extract_list(extractor, tree / "facescrub_images", probe_paths, out / "probe_features.npy", fmt="npy",
                      batch_size=batch_size, flip=flip)
    df = extract_list(extractor, tree / "megaface_images", d_paths, out / "distractor_features.npy", fmt="npy",
                      batch_size=batch_size, flip=flip)
    res = score_files(probe_list, [dlist], pf, [df], out, facescrub_noises=tree / "facescrub_noises.txt",
                      megaface_noises=tree / "megaface_noises.txt", algo="demo")
    return res["results"][0]


def _mask_faces(tree: Path, count: int) -> tuple[np.ndarray, list[str]]:
    """The first image of ``count`` probe identities, uint8 RGB (count, H, W, 3)."""
    from facerec.data.megaface import read_template_list
    from facerec.eval.megaface_extract import read_rgb

    paths, ids = read_template_list(tree / "templatelists" / "facescrub_features_list.json")
    chosen, seen = [], set()
    for p, i in zip(paths, ids):
        if i not in seen:
            seen.add(i)
            chosen.append(p)
        if len(chosen) == count:
            break
    return np.stack([read_rgb(tree / "facescrub_images" / p) for p in chosen]), [ids[paths.index(p)] for p in chosen]


def run_demo(cfg, *, mask_faces: int = 4, eval_batch_size: int = 128, megaface_flip: bool = False) -> dict:
    """Run every stage for the resolved ``cfg`` (a ``facerec.config.Config``); returns the summary dict."""
    from facerec.data.synthetic import ensure_synthetic
    from facerec.data.transforms import crop_to_input_size
    from facerec.train.loop import train
    from facerec.viz.figures import render_mask_figure

    timings: dict = {}
    out = cfg.out_dir
    with _timed("synthetic data", timings):
        data_dir = ensure_synthetic(cfg.data.path, **cfg.data.synthetic_options)
        from facerec.data import RecordDataset
        train_set = RecordDataset(data_dir / "train.rec", train=False)
    with _timed("training", timings):
        if not cfg.train.resume and out.is_dir():  # a fresh demo run: drop the last run's checkpoints
            for old in out.glob("ckpt_*.pt"):
                old.unlink()
        result = train(cfg)
    if result["interrupted"]:
        raise KeyboardInterrupt(f"training stopped by signal {result['signal']} at step {result['step']}; "
                                f"checkpoint {result['checkpoint']}; rerun with --set train.resume=auto")
    backbone = result["backbone"]
    metrics = result["metrics"]
    tree = data_dir / "megaface"
    with _timed("megaface", timings):
        shutil.rmtree(out / "megaface", ignore_errors=True)  # extraction resumes from files: start clean
        mf = _megaface(backbone, cfg.model.input_size, tree, out / "megaface", eval_batch_size, megaface_flip)
    with _timed("masks", timings):
        faces, names = _mask_faces(tree, mask_faces)
        faces = crop_to_input_size(faces, cfg.model.input_size)
        fig = render_mask_figure(backbone, faces, out / "masks", layers="all", formats=("png", "pdf"),
                                 dpi=150, names=names)
    summary = {
        "model": cfg.model.name, "input_size": list(cfg.model.input_size), "steps": result["step"],
        "batch_size": cfg.data.batch_size, "train_images": len(train_set),
        "train_identities": train_set.num_classes, "checkpoint": result["checkpoint"],
        "verification": {k: v for k, v in metrics.items() if "acc" in k or "thr" in k},
        "megaface": {"num_distractors": mf["num_distractors"], "num_probes": mf["num_probes"],
                     "num_trials": mf["num_trials"], "rank1": mf["rank1"], "cmc": mf["cmc"],
                     "tar_at_far": mf["tar_at_far"], "flip": megaface_flip},
        "mask_figure": str(fig.get("png")), "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    table = format_summary(summary)
    (out / "summary.md").write_text(table + "\n")
    return summary


def format_summary(s: dict) -> str:
    """One markdown table of the demo's results."""
    v = s["verification"]
    acc_keys = sorted(k for k in v if k.endswith("_acc"))
    mf = s["megaface"]
    tar = mf["tar_at_far"]
    far = "1e-04" if "1e-04" in tar else (sorted(tar)[-1] if tar else None)
    rows = [("model", f"{s['model']} @ {s['input_size'][0]}x{s['input_size'][1]}", ""),
            ("training", f"{s['steps']} steps, batch {s['batch_size']}, on {s['train_images']} synthetic images "
                 f"of {s['train_identities']} identities", s["seconds"]["training"])]
    for k in acc_keys:
        std = v.get(k + "_std")
        rows.append((f"verification {k[:-4]}", f"{v[k]:.4f}" + (f" +- {std:.4f}" if std is not None else ""), ""))
    rows.append((f"MegaFace-style rank-1 @ {mf['num_distractors']} distractors",
                 f"{mf['rank1']:.4f} ({mf['num_trials']} trials, {mf['num_probes']} probes"
                 f"{', flip-sum' if mf.get('flip') else ', no flip'})",
                 s["seconds"]["megaface"]))
    if far is not None:
        rows.append((f"TAR @ FAR={far}", f"{tar[far]:.4f}", ""))
    rows.append(("mask figure", s["mask_figure"], s["seconds"]["masks"]))
    rows.append(("synthetic data", "generated" if s["seconds"]["synthetic data"] > 1 else "reused",
                 s["seconds"]["synthetic data"]))
    total = sum(s["seconds"].values())
    lines = ["| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c if c == '' else f'{c:.0f}'} |" for a, b, c in rows]
    lines.append(f"| total | | {total:.0f} |")
    return "\n".join(lines)
