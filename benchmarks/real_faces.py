"""Real-face study: the four Table 2 MobileFaceNet variants trained on ``real-faces-323/train``, scored on ``val/``.

Data (``../shared/data/real-faces-323``, or ``--data``): aligned 112x112 JPEG photos, one folder per person;
``train/`` 283 identities (8,495 images), ``val/`` 40 other identities (1,049 images). Only ``val/`` is scored.

Recipe (one for every variant; the shipped ``configs/ms1mv2_<variant>.yaml`` with these overrides): 112x96 input
(centre crop), AM-Softmax s=30 m=0.35, SGD momentum 0.9, the MobileFaceNet weight-decay split, batch 64, lr 0.1
after a linear warm-up of ``--warmup`` steps (50), divided by 10 at 5/6 and 19/20 of ``--steps`` (300: steps 250
and 285), random flips, 1 thread
per run (two runs fill two cores), no verification during training. Training goes through the project's runner
(``facerec.train.loop.train``), so a killed run resumes from its last checkpoint (every quarter of the steps).

Scoring, deterministic and documented (``val_protocol``):

* features: flip-sum fusion, L2-normalised (``facerec.eval.features``), of every ``val/`` image;
* pairs: every genuine pair of ``val/`` and every impostor pair (about 13k and 537k): TAR at FAR 1e-3 over all
  of them; 10-fold accuracy (``facerec.eval.verification.evaluate_pairs``, thresholds chosen on 9 folds) on a
  balanced set of 3,000 genuine + 3,000 impostor pairs drawn once with ``numpy.random.default_rng(0)``;
* rank-1 identification: leave-one-out, each image a probe against the 1,048 others (correct when its cosine
  nearest neighbour is the same person).

Resumable and splittable: every (variant, seed) run writes ``<out>/<variant>_s<seed>/result.json`` when done and
is skipped when that file exists; ``--only K/N`` runs every N-th run starting at K, so N processes share a study;
``--report`` gathers whatever results exist into a table (mean +- sample std over seeds, each seed's value, CPU
seconds per step relative to mobilefacenet) without training.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python benchmarks/real_faces.py --out runs/real_faces --only 0/2 &   # and --only 1/2
    .venv/bin/python benchmarks/real_faces.py --out runs/real_faces --report [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facerec.config import load_config  # noqa: E402

__all__ = ["VARIANTS", "DEFAULT_RUNS", "val_protocol", "rank1_leave_one_out", "study_config", "score", "summarize",
           "format_table", "main"]

VARIANTS = ("mobilefacenet", "drconv_mobilefacenet", "condconv_mobilefacenet", "local_mobilefacenet")
# (variant, seed) in the order they run: two seeds of the plain and DRConv models, one of the others.
# Ordered so that ``--only 0/2`` and ``--only 1/2`` take about equal CPU (a DRConv step costs about two plain
# ones) and the first run of each process is a first seed.
DEFAULT_RUNS = (("drconv_mobilefacenet", 0), ("mobilefacenet", 0), ("mobilefacenet", 1),
                ("drconv_mobilefacenet", 1), ("condconv_mobilefacenet", 0), ("local_mobilefacenet", 0))
# DRConv settings other than the shipped defaults, run as "drconv_mobilefacenet@<setting>:<seed>" (several joined
# by "+") with the same recipe: the official code's shared-basis generator, the guide's gradient (Eq.7-8) scaled by
# 0.1, the paper-exact layer, and 100x the weight decay on the per-region filter parts.
SETTINGS = {"basis": ["model.options.generator=basis"], "guide0.1": ["model.options.guide_grad_scale=0.1"],
            "paper": ["model.options.guide_norm=false", "model.options.init=spread"],
            "regionwd100": ["optim.weight_decay_region_factor=100"]}
SETTING_RUNS = (("drconv_mobilefacenet@guide0.1", 0), ("drconv_mobilefacenet@basis", 0),
                ("drconv_mobilefacenet@basis", 1), ("drconv_mobilefacenet@basis", 2))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-faces-323"
INPUT_SIZE = (112, 96)
BALANCED_PAIRS = 3000


def val_protocol(labels: np.ndarray, seed: int = 0) -> dict:
    """Pairs of the val set: all genuine / impostor index pairs, and the balanced 10-fold set.

    labels (N,) int -> {"genuine": (G, 2), "impostor": (I, 2), "balanced": (2K, 2), "balanced_issame": (2K,)};
    the balanced set alternates genuine and impostor pairs so every contiguous fold holds both.
    """
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    genuine = np.stack([i[same], j[same]], 1)
    impostor = np.stack([i[~same], j[~same]], 1)
    rng = np.random.default_rng(seed)
    k = min(BALANCED_PAIRS, len(genuine), len(impostor))
    g = genuine[np.sort(rng.choice(len(genuine), k, replace=False))]
    n = impostor[np.sort(rng.choice(len(impostor), k, replace=False))]
    balanced = np.empty((2 * k, 2), dtype=np.int64)
    balanced[0::2], balanced[1::2] = g, n
    issame = np.zeros(2 * k, dtype=bool)
    issame[0::2] = True
    return {"genuine": genuine, "impostor": impostor, "balanced": balanced, "balanced_issame": issame}


def rank1_leave_one_out(features: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose cosine nearest neighbour among the other images has the same label."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(labels[np.argmax(sim, axis=1)] == labels))


def score(features: np.ndarray, labels: np.ndarray) -> dict:
    """All val metrics from (N, D) features: 10-fold accuracy +- std, TAR@FAR=1e-3 (all pairs), rank-1."""
    from facerec.eval.verification import evaluate_pairs, tar_at_far

    pairs = val_protocol(labels)
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    emb = f[pairs["balanced"].reshape(-1)]
    folds = evaluate_pairs(emb, pairs["balanced_issame"])
    both = np.concatenate([pairs["genuine"], pairs["impostor"]])
    dist = 2.0 - 2.0 * np.einsum("ij,ij->i", f[both[:, 0]], f[both[:, 1]])
    issame = np.zeros(len(both), dtype=bool)
    issame[:len(pairs["genuine"])] = True
    return {"accuracy": folds.accuracy, "accuracy_std": folds.std, "tar_far1e-3": tar_at_far(dist, issame, 1e-3),
            "rank1": rank1_leave_one_out(features, labels), "genuine_pairs": int(len(pairs["genuine"])),
            "impostor_pairs": int(len(pairs["impostor"]))}


def milestones(steps: int) -> list[int]:
    """lr / 10 at 5/6 and 19/20 of the steps (300 steps: 250, 285; distinct and positive; fewer for tiny runs).

    With the default 50-step warm-up, steps 50-250 run at the full lr 0.1: the study's runs are also the
    stability check of the shipped configs (batch 64, warm-up <= 100, then 200 steps at the full lr).
    """
    return sorted({m for m in (steps * 5 // 6, steps * 19 // 20) if 0 < m < steps})


def split_name(name: str) -> tuple[str, list[str]]:
    """"variant", "variant@setting" or "variant@setting+setting" -> (variant, config overrides of the settings)."""
    variant, _, settings = name.partition("@")
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    overrides = []
    for setting in settings.split("+") if settings else []:
        if setting not in SETTINGS:
            raise SystemExit(f"unknown setting {setting!r} in {name!r}; valid: {', '.join(SETTINGS)}")
        overrides += SETTINGS[setting]
    return variant, overrides


def _order(name: str) -> tuple[int, str]:
    return VARIANTS.index(split_name(name)[0]), name


def study_config(name: str, rec_dir: Path, out_dir: Path, *, seed: int, steps: int, warmup: int, batch: int,
                 lr: float, lr_steps: list[int] | None = None, checkpoint_every: int | None = None,
                 eval_every: int = 0):
    """The run's Config: ``configs/ms1mv2_<variant>.yaml`` with the study's overrides (module docstring)."""
    variant, extra = split_name(name)
    steps_at = milestones(steps) if lr_steps is None else lr_steps
    overrides = [
        f"name=real_faces_{variant}", f"model.input_size={INPUT_SIZE[0]},{INPUT_SIZE[1]}", f"data.path={rec_dir}",
        f"data.batch_size={batch}", "data.num_workers=0", f"optim.lr={lr}", "optim.lr_batch=0",
        f"schedule.total_steps={steps}",
        f"schedule.milestones=[{','.join(str(m) for m in steps_at)}]", f"schedule.warmup_steps={warmup}",
        "schedule.gamma=0.1", f"train.seed={seed}", "train.device=cpu", "train.amp=none", "train.threads=1",
        "train.resume=auto", f"train.out_dir={out_dir}", "train.tensorboard=false",
        f"train.log_every={max(1, steps // 20)}",
        "eval.sets=[]", f"eval.every={eval_every}", f"checkpoint.every={checkpoint_every or max(1, steps // 4)}",
        "checkpoint.keep=1",
        *extra,
    ]
    return load_config(ROOT / "configs" / f"ms1mv2_{variant}.yaml", overrides)


def prepare(data: Path, work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Pack train/ once (work/train.rec) and read val/ (uint8 (N, 112, 112, 3) RGB, labels (N,))."""
    from facerec.data.codec import decode_rgb
    from facerec.data.datasets import scan_image_folder
    from facerec.data.pack import pack_folder

    for part in ("train", "val"):
        if not (data / part).is_dir():
            raise SystemExit(f"{data / part} is missing: --data must hold train/ and val/ (real-faces-323)")
    rec = work / "train.rec"
    if not rec.with_suffix(".idx").is_file():
        pack_folder(data / "train", rec)
    paths, labels, _ = scan_image_folder(data / "val")
    images = np.stack([decode_rgb(p.read_bytes()) for p in paths])
    return work, images, np.asarray(labels, dtype=np.int64)


def run_one(variant: str, seed: int, rec_dir: Path, out: Path, images, labels, args) -> dict:
    from facerec.eval.features import ModelFeatureExtractor, extract_features
    from facerec.train.loop import train

    run_dir = out / f"{variant}_s{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = study_config(variant, rec_dir, run_dir, seed=seed, steps=args.steps, warmup=args.warmup,
                       batch=args.batch, lr=args.lr)
    ckpts = sorted(run_dir.glob("ckpt_*.pt"))
    resumed_from = int(ckpts[-1].stem.split("_")[-1]) if ckpts else 0     # CPU time covers the steps after it
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(cfg)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if result["interrupted"]:
        raise SystemExit(f"{variant} seed {seed} stopped by a signal at step {result['step']}; run again to resume")
    torch.set_num_threads(1)
    feats = extract_features(ModelFeatureExtractor(result["backbone"], "cpu", INPUT_SIZE), images, flip=True)
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in losses if "loss" in r and "step" in r]
    record = {"variant": variant, "seed": seed, "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
              "lr": args.lr, **score(feats, labels), "final_loss": losses[-1][1] if losses else math.nan,
              "loss_curve": losses, "cpu_s": cpu, "wall_s": wall, "resumed": resumed_from > 0,
              "resumed_from": resumed_from}
    done.write_text(json.dumps(record, indent=1))
    return record


def summarize(records: list[dict]) -> list[dict]:
    """One row per variant: mean and sample std (0 for one seed) of every metric, CPU s/step ratio to plain."""
    rows = []
    per_step = {}
    for variant in sorted({r["variant"] for r in records}, key=_order):
        mine = sorted((r for r in records if r["variant"] == variant), key=lambda r: r["seed"])
        if not mine:
            continue
        row = {"variant": variant, "seeds": [r["seed"] for r in mine]}
        for key in ("accuracy", "tar_far1e-3", "rank1", "final_loss"):
            values = [r[key] for r in mine]
            row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, values)
        # A resumed run's CPU time covers the steps after its checkpoint (``resumed_from``; older records
        # without it are left out of the ratio).
        timed = [r["cpu_s"] / (r["steps"] - r.get("resumed_from", 0)) for r in mine
                 if not r.get("resumed") or r.get("resumed_from", 0) > 0]
        per_step[variant] = statistics.mean(timed) if timed else math.nan
        rows.append(row)
    base = per_step.get("mobilefacenet", math.nan)
    for row in rows:
        row["cpu_per_step_ratio"] = per_step[row["variant"]] / base
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(stat, pct=True):
        mean, std, values = stat
        k, d = (100.0, 1) if pct else (1.0, 2)
        each = ", ".join(f"{v * k:.{d}f}" for v in values)
        return f"{mean * k:.{d}f} ± {std * k:.{d}f} ({each})"
    lines = ["| variant | seeds | 10-fold acc. % | TAR@FAR=1e-3 % | rank-1 % | final loss | CPU/step vs plain |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {len(row['seeds'])} | {cell(row['accuracy'])} | "
                     f"{cell(row['tar_far1e-3'])} | {cell(row['rank1'])} | {cell(row['final_loss'], False)} | "
                     f"{row['cpu_per_step_ratio']:.2f}x |")
    return "\n".join(lines)


def export_pretrained(records: list[dict], out: Path, dest: Path, run_dir=None) -> list[Path]:
    """The best seed (10-fold accuracy) of each variant -> ``dest/<variant>.pt``: backbone weights (float16) + config.

    The files hold {"config", "model", "card"} and load with ``facerec.models.load_backbone``. ``run_dir(record)``
    gives the run's folder (its newest ``ckpt_*.pt`` is exported); default ``out/<variant>_s<seed>``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in VARIANTS:           # the shipped settings only
        mine = [r for r in records if r["variant"] == variant]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["accuracy"])
        folder = run_dir(best) if run_dir else out / f"{variant}_s{best['seed']}"
        ckpts = sorted(folder.glob("ckpt_*.pt"))
        state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
        card = {k: best[k] for k in ("variant", "seed", "steps", "warmup", "batch", "lr", "accuracy", "accuracy_std",
                                     "tar_far1e-3", "rank1", "final_loss")}
        path = dest / f"{variant}.pt"
        # float16 halves the files (DRConv's paper generator holds 13.6M parameters); load_state_dict casts back.
        weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
        torch.save({"config": state["config"], "model": weights, "card": card}, path)
        written.append(path)
    return written


def stability_table(records: list[dict], warmup: int) -> str:
    """Per run: loss at the end of the warm-up, at the middle and end of the full-lr phase, finiteness, falling."""
    lines = ["| run | loss @ warm-up end | @ mid full lr | @ end of full lr | final | all finite | falling |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (_order(r["variant"]), r["seed"])):
        curve = dict((int(s), v) for s, v in r["loss_curve"])
        full_end = min(milestones(r["steps"]) or [r["steps"]])

        def at(step):
            near = min(curve, key=lambda s: abs(s - step))
            return near, curve[near]
        (s0, l0), (s1, l1), (s2, l2) = at(warmup), at((warmup + full_end) // 2), at(full_end)
        finite = all(math.isfinite(v) for v in curve.values())
        lines.append(f"| {r['variant']} s{r['seed']} | {l0:.2f} (step {s0}) | {l1:.2f} ({s1}) | {l2:.2f} ({s2}) | "
                     f"{r['final_loss']:.2f} | {'yes' if finite else 'NO'} | {'yes' if l2 < l1 < l0 else 'no'} |")
    return "\n".join(lines)


def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = dict(zip(VARIANTS + ("drconv_mobilefacenet@basis",),
                       ("#000000", "#D55E00", "#0072B2", "#009E73", "#CC79A7")))
    for r in sorted(records, key=lambda r: (_order(r["variant"]), r["seed"])):
        if r["variant"] not in colours:
            continue
        steps, losses = zip(*r["loss_curve"])
        ax.plot(steps, losses, color=colours[r["variant"]], linestyle="-" if r["seed"] == 0 else "--",
                label=f"{r['variant']} seed {r['seed']}")
    ax.set_xlabel("step (batch 64)")
    ax.set_ylabel("training loss (AM-Softmax)")
    ax.set_title("real-faces-323/train, lr 0.1 after a 50-step warm-up")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "real_faces")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--runs", nargs="*", default=None,
                    help="variant[@setting]:seed items, or 'settings' for the DRConv settings' four runs (default: "
                         "the study's six runs)")
    ap.add_argument("--only", default="0/1", help="K/N: this process takes runs K, K+N, K+2N, ...")
    ap.add_argument("--report", action="store_true", help="print the table of finished runs; train nothing")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary rows here")
    ap.add_argument("--plot", type=Path, default=None, help="write the loss curves of finished runs (PNG)")
    ap.add_argument("--export-pretrained", type=Path, default=None, metavar="DIR",
                    help="write the best seed's backbone of each finished variant to DIR/<variant>.pt")
    args = ap.parse_args(argv)
    if not args.runs:
        runs = list(DEFAULT_RUNS)
    elif args.runs == ["settings"]:
        runs = list(SETTING_RUNS)
    else:
        runs = []
        for item in args.runs:
            name, _, seed = item.rpartition(":")
            if not name or not seed.isdigit():
                raise SystemExit(f"--runs items are variant[@setting]:seed, got {item!r}")
            runs.append((name, int(seed)))
    for name, _ in runs:
        split_name(name)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        k, n = (int(v) for v in args.only.split("/"))
        rec_dir, images, labels = prepare(args.data, args.out / "data")
        for variant, seed in runs[k::n]:
            rec = run_one(variant, seed, rec_dir, args.out, images, labels, args)
            print(f"{variant} seed {seed}: acc {rec['accuracy']:.4f} TAR@1e-3 {rec['tar_far1e-3']:.4f} rank-1 "
                  f"{rec['rank1']:.4f} loss {rec['final_loss']:.3f} ({rec['cpu_s']:.0f} CPU s)", flush=True)
    records = [json.loads(p.read_text()) for p in sorted(args.out.glob("*_s*/result.json"))]
    wanted = set(runs) | (set(SETTING_RUNS) if args.report and not args.runs else set())
    records = [r for r in records if (r["variant"], r["seed"]) in wanted]
    rows = summarize(records)
    print(format_table(rows))
    if records:
        print()
        print(stability_table(records, args.warmup))
    if args.plot and records:
        plot_losses(records, args.plot)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.export_pretrained:
        for path in export_pretrained(records, args.out, args.export_pretrained):
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
