"""Fair DRConv vs MobileFaceNet study on real faces: the paper's recipe scaled to batch 64, trained to convergence.

Three stages, each a list of runs; every run is one ``facerec.train.train`` call (resumable from its checkpoints)
that writes ``<out>/<stage>/<run>/result.json`` when done and is never trained again.

1. ``sweep``: mobilefacenet and drconv_mobilefacenet (shipped settings), seed 0, at each lr of ``LRS``;
   trained on ``train/`` minus ``TUNE`` held-out identities (every 7th identity by sorted name) and scored on
   those held-out identities (never on ``val/``). Each variant's lr is the one with the best selection score
   (mean of 10-fold accuracy, TAR@FAR=1e-3 and rank-1 on the held-out identities). When that is the grid's
   lowest (highest) lr, the variant's grid is extended by half (twice) that lr, up to ``MAX_EXTENSIONS`` points
   each way (``sweep_lrs``), and the later stages wait for it.
2. ``aids``: at DRConv's chosen lr, the paper-exact layer (``@paper``: ``guide_norm=False``, ``init="spread"``)
   against the shipped one, 2 seeds each, same split and length as the sweep. The paper-exact layer is kept
   unless the shipped one is ahead by more than the larger seed spread (fidelity to the paper wins a tie).
3. ``final``: full ``train/``, ``FINAL_STEPS`` steps, scored on ``val/`` every eighth of the run (the curve);
   3 seeds of mobilefacenet and drconv_mobilefacenet (the aids stage's setting), 1 each of local, condconv and
   the basis generator. condconv and local take mobilefacenet's lr, the basis generator DRConv's.
   When the 3 seeds leave DRConv behind the plain model (mean TAR@FAR=1e-3 or rank-1 lower: ``drconv_trails``),
   the one change most likely to close the gap runs too, 3 seeds at DRConv's lr: ``CHANGE``, 100x the weight
   decay on the per-region filter parts (``optim.weight_decay_region_factor``). DRConv's training loss ends a
   quarter below the plain model's while its val/ scores do not, and at this length the shipped decay (4e-5)
   hardly acts: lr x wd / (1 - momentum) summed over the schedule is ~0.004, so the weights shrink by 0.4%
   in all; at 100x, ~0.36 (30%), a pull of every region's filter towards the layer's shared one.

Recipe (all stages): the shipped ``configs/ms1mv2_<variant>.yaml`` (with its weight-decay split: every filter
decays, ``facerec.models.param_groups``), batch 64, linear warm-up of 50 steps, lr divided by 10 at the
paper's fractions of the schedule (252k, 364k, 406k of 420k: 0.6, 0.867, 0.967), 112x96 centre crop, flips,
AM-Softmax s=30 m=0.35, one thread per process. The linear scaling rule (Goyal et al. 2017) maps the paper's
lr 0.1 at batch 512 to 0.0125 at batch 64, the sweep's lowest value.

Every finished run's ``result.json`` is also copied to ``docs/results/real_faces_study/<stage>/<run>.json`` (to be
committed), and copied back into ``--out`` at start, so a fresh checkout continues the study. Processes share the
work through claim files (``<run>/claim``: host and pid; a claim whose process is gone is
taken over), so ``--workers 2`` on two cores, or two invocations, or a restart in a later session all continue
where the study stopped; a stage's runs start when the runs they depend on are done.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\
        nohup .venv/bin/python benchmarks/real_faces_study.py --out runs/real_faces_study --workers 2 \\
        --until 15:55 &
    .venv/bin/python benchmarks/real_faces_study.py --out runs/real_faces_study --report

``--until`` (the session's end) keeps a worker from starting a run that its variant's measured CPU seconds per
step say cannot finish by then; it takes a shorter pending run instead, or stops.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_faces as rf  # noqa: E402

__all__ = ["LRS", "PAPER_FRACTIONS", "plan", "sweep_lrs", "planned_final", "drconv_trails", "change_name",
           "milestones", "selection_score",
           "choose_lr", "choose_setting",
           "split_identities", "cpu_per_step", "estimated_seconds", "parse_until", "main"]

LRS = (0.0125, 0.025, 0.05, 0.1)
MAX_EXTENSIONS = 2      # sweep points added beyond LRS at either end (a best lr at the grid's edge)
PAPER_FRACTIONS = (252 / 420, 364 / 420, 406 / 420)
SWEEP_STEPS = 400
FINAL_STEPS = 1200
WARMUP = 50
BATCH = 64
RESULTS = ROOT / "docs" / "results" / "real_faces_study"    # committed copies of every finished run's result.json
TUNE_EVERY = 7          # every 7th identity of train/ (sorted names, offset 3) is held out for the sweep: 40 of 283
CHANGE = "regionwd100"  # the setting (real_faces.SETTINGS) tested when DRConv trails the plain model
SEEDS_CHANGE = 3
SEEDS_FINAL = {"mobilefacenet": 3, "drconv_mobilefacenet": 3, "local_mobilefacenet": 1,
               "condconv_mobilefacenet": 1, "drconv_mobilefacenet@basis": 1}


def milestones(steps: int) -> list[int]:
    """lr / 10 at the paper's fractions of the schedule (400 steps: 240, 347, 387)."""
    return sorted({int(round(steps * f)) for f in PAPER_FRACTIONS if 0 < round(steps * f) < steps})


def split_identities(names: list[str]) -> tuple[list[str], list[str]]:
    """Sorted identity names -> (trained, held out): every TUNE_EVERY-th name from offset 3 is held out."""
    names = sorted(names)
    held = [n for i, n in enumerate(names) if i % TUNE_EVERY == 3]
    return [n for n in names if n not in set(held)], held


def selection_score(record: dict) -> float:
    """Mean of 10-fold accuracy, TAR@FAR=1e-3 and rank-1 (fractions)."""
    return (record["accuracy"] + record["tar_far1e-3"] + record["rank1"]) / 3.0


def run_name(variant: str, lr: float, seed: int) -> str:
    return f"{variant}_lr{lr:g}_s{seed}"


def sweep_lrs(sweep: dict[str, dict], variant: str) -> tuple[float, ...]:
    """The sweep grid of ``variant``: LRS, extended by halving (doubling) while the best finished lr is the grid's
    lowest (highest) point, at most MAX_EXTENSIONS points each way: a best lr at the edge of the grid is not known
    to be the best one. Ascending."""
    grid = list(LRS)
    while True:
        done = [sweep.get(run_name(variant, lr, 0)) for lr in grid]
        if any(r is None for r in done):
            return tuple(grid)
        best = max(done, key=selection_score)["lr"]
        if best == grid[0] and LRS[0] / grid[0] < 2 ** MAX_EXTENSIONS:
            grid.insert(0, grid[0] / 2)
        elif best == grid[-1] and grid[-1] / LRS[-1] < 2 ** MAX_EXTENSIONS:
            grid.append(grid[-1] * 2)
        else:
            return tuple(grid)


def choose_lr(sweep: dict[str, dict], variant: str) -> float | None:
    """The lr whose sweep run of ``variant`` has the best selection score over ``sweep_lrs``; None until every
    point of that grid is done."""
    mine = [sweep.get(run_name(variant, lr, 0)) for lr in sweep_lrs(sweep, variant)]
    if any(r is None for r in mine):
        return None
    return max(mine, key=selection_score)["lr"]


def choose_setting(runs: dict[str, dict], lr: float) -> str | None:
    """"drconv_mobilefacenet@paper" unless the shipped layer's mean selection score is ahead by more than the
    larger of the two seed spreads; None until both seeds of both are done."""
    scores = {}
    for name in ("drconv_mobilefacenet", "drconv_mobilefacenet@paper"):
        mine = [runs.get(run_name(name, lr, s)) for s in (0, 1)]
        if any(r is None for r in mine):
            return None
        scores[name] = [selection_score(r) for r in mine]
    shipped, paper = scores["drconv_mobilefacenet"], scores["drconv_mobilefacenet@paper"]
    margin = max(statistics.stdev(shipped), statistics.stdev(paper))
    return "drconv_mobilefacenet" if statistics.mean(shipped) - statistics.mean(paper) > margin \
        else "drconv_mobilefacenet@paper"


def change_name(setting: str) -> str:
    """The DRConv final setting with ``CHANGE`` added: "drconv_mobilefacenet@regionwd100",
    "drconv_mobilefacenet@paper+regionwd100"."""
    return f"{setting}{'+' if '@' in setting else '@'}{CHANGE}"


def drconv_trails(final: dict[str, dict], lr_p: float, lr_d: float, setting: str) -> bool | None:
    """True when DRConv's mean TAR@FAR=1e-3 or rank-1 on val/ over its 3 final seeds is below the plain model's;
    None until all 6 runs are done."""
    mean = {}
    for name, lr in (("mobilefacenet", lr_p), (setting, lr_d)):
        mine = [final.get(run_name(name, lr, s)) for s in range(SEEDS_FINAL["mobilefacenet"])]
        if any(r is None for r in mine):
            return None
        mean[name] = {k: statistics.mean(r[k] for r in mine) for k in ("tar_far1e-3", "rank1")}
    return any(mean[setting][k] < mean["mobilefacenet"][k] for k in ("tar_far1e-3", "rank1"))


def load_stage(out: Path, stage: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / stage).glob("*/result.json"))}


def plan(out: Path) -> list[tuple[str, str, float, int]]:
    """Runs (stage, variant[@setting], lr, seed) whose prerequisites are done, in the order they should run."""
    sweep, aids = load_stage(out, "sweep"), load_stage(out, "aids")
    runs = []
    for lr in LRS:
        for variant in ("drconv_mobilefacenet", "mobilefacenet"):
            runs.append(("sweep", variant, lr, 0))
    for variant in ("drconv_mobilefacenet", "mobilefacenet"):
        runs += [("sweep", variant, lr, 0) for lr in sweep_lrs(sweep, variant) if lr not in LRS]
    lr_d, lr_p = choose_lr(sweep, "drconv_mobilefacenet"), choose_lr(sweep, "mobilefacenet")
    if lr_d is not None:
        runs += [("aids", "drconv_mobilefacenet@paper", lr_d, 0), ("aids", "drconv_mobilefacenet@paper", lr_d, 1)]
        # the shipped layer's seed 0 at this lr is the sweep's run
        runs.append(("aids", "drconv_mobilefacenet", lr_d, 1))
    setting = choose_setting({**sweep, **aids}, lr_d) if lr_d is not None else None
    # a final run starts as soon as its own lr (and, for the shipped DRConv, the aids stage's setting) is known,
    # so plain-model finals fill a worker that the aids stage leaves idle
    lrs = {"mobilefacenet": lr_p, "local_mobilefacenet": lr_p, "condconv_mobilefacenet": lr_p,
           "drconv_mobilefacenet": lr_d, "drconv_mobilefacenet@basis": lr_d, CHANGE: lr_d}
    trails = drconv_trails(load_stage(out, "final"), lr_p, lr_d, setting) if None not in (lr_p, setting) else None
    # the 3-seed comparison first (it answers the study's question), then the one-seed variants, with the change's
    # first seed before the basis generator when DRConv trails
    order = [(v, seed) for seed in range(3) for v in ("drconv_mobilefacenet", "mobilefacenet")]
    order += [(v, 0) for v in ("local_mobilefacenet", "condconv_mobilefacenet")]
    order += [(CHANGE, 0), ("drconv_mobilefacenet@basis", 0)] + [(CHANGE, s) for s in range(1, SEEDS_CHANGE)]
    for variant, seed in order:
        if variant == CHANGE:
            if trails:
                runs.append(("final", change_name(setting), lr_d, seed))
            continue
        name = setting if variant == "drconv_mobilefacenet" else variant
        if seed < SEEDS_FINAL[variant] and lrs[variant] is not None and name is not None:
            runs.append(("final", name, lrs[variant], seed))
    return runs


def planned_final(out: Path) -> set[str]:
    """Run names of the final stage at the chosen lrs and setting (a final run made before a sweep extension
    changed the chosen lr is not among them)."""
    return {run_name(v, lr, seed) for stage, v, lr, seed in plan(out) if stage == "final"}


def cpu_per_step(out: Path) -> dict[str, float]:
    """{variant: median CPU seconds per trained step} over the finished runs in ``out`` (all stages)."""
    rates: dict[str, list[float]] = {}
    for stage in ("sweep", "aids", "final"):
        for rec in load_stage(out, stage).values():
            trained = rec.get("steps", 0) - rec.get("resumed_from", 0)
            if trained > 0 and rec.get("cpu_s"):
                rates.setdefault(rec["variant"], []).append(rec["cpu_s"] / trained)
    return {v: statistics.median(r) for v, r in rates.items()}


def estimated_seconds(variant: str, steps: int, rates: dict[str, float]) -> float:
    """Wall seconds a run is expected to take: its variant's CPU rate (a DRConv setting takes its layer's; an
    unmeasured variant the slowest measured one) x steps x 1.3 (two workers' contention, the evaluations).
    Infinite before any run has finished."""
    if not rates:
        return math.inf
    rate = rates.get(variant) or rates.get(variant.split("@")[0]) or max(rates.values())
    return rate * steps * 1.3


def _steps(stage: str) -> int:
    return FINAL_STEPS if stage == "final" else SWEEP_STEPS


def checkpoint_step(run_dir: Path) -> int:
    """The step of the run's latest checkpoint (``ckpt_<step>.pt``), 0 when it has none."""
    steps = [int(p.stem.split("_")[-1]) for p in run_dir.glob("ckpt_*.pt") if p.stem.split("_")[-1].isdigit()]
    return max(steps, default=0)


def _alive(claim: Path) -> bool:
    try:
        host, pid = claim.read_text().split()[:2]
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    try:
        cmd = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except OSError:
        return False
    return b"real_faces_study" in cmd


def try_claim(run_dir: Path) -> bool:
    """Atomically claim a run (O_EXCL); a claim left by a dead process is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = run_dir / "claim"
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _alive(claim):
                return False
            claim.unlink(missing_ok=True)
            continue
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        os.close(fd)
        return True
    return False


class Split:
    """The images a stage trains on (a packed .rec directory) and scores on (uint8 (N, 112, 112, 3), labels)."""

    def __init__(self, rec_dir: Path, images: np.ndarray, labels: np.ndarray):
        self.rec_dir, self.images, self.labels = rec_dir, images, labels


def prepare_splits(data: Path, work: Path) -> dict[str, Split]:
    """``tune``: train/ minus the held-out identities -> scored on them; ``val``: all of train/ -> val/."""
    from facerec.data.codec import decode_rgb
    from facerec.data.datasets import scan_image_folder
    from facerec.data.pack import pack_folder

    rec_dir, val_images, val_labels = rf.prepare(data, work / "full")
    trained, held = split_identities([p.name for p in (data / "train").iterdir() if p.is_dir()])
    tune_dir = work / "tune"
    folder = tune_dir / "images"
    if not (tune_dir / "train.idx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in trained:
            link = folder / name
            if not link.exists():
                link.symlink_to((data / "train" / name).resolve(), target_is_directory=True)
        pack_folder(folder, tune_dir / "train.rec")
    held_root = tune_dir / "held_out"
    held_root.mkdir(parents=True, exist_ok=True)
    for name in held:
        link = held_root / name
        if not link.exists():
            link.symlink_to((data / "train" / name).resolve(), target_is_directory=True)
    paths, labels, _ = scan_image_folder(held_root)
    images = np.stack([decode_rgb(p.read_bytes()) for p in paths])
    return {"tune": Split(tune_dir, images, np.asarray(labels, dtype=np.int64)),
            "val": Split(rec_dir, val_images, val_labels)}


def region_usage(backbone, images: np.ndarray) -> list[dict]:
    """Per DRConv layer: mask size, mean regions used per face, mean area share per region, unused regions."""
    from facerec.viz.masks import capture_masks, find_mask_layers, region_areas

    if not any(name.endswith("guide") for name, _ in backbone.named_modules()):
        return []                     # no DRConv layer
    layers = find_mask_layers(backbone)
    crop = images[:, :, (images.shape[2] - rf.INPUT_SIZE[1]) // 2:][:, :, :rf.INPUT_SIZE[1]]
    masks = capture_masks(backbone, np.ascontiguousarray(crop), layers)
    out = []
    for layer in layers:
        areas = region_areas(masks[layer.name], layer.regions)
        out.append({"layer": layer.name, "mask_size": areas["mask_size"],
                    "regions_used_mean": areas["regions_used_mean"],
                    "area_fraction_mean": areas["area_fraction_mean"], "unused_regions": areas["unused_regions"]})
    return out


def run_one(stage: str, variant: str, lr: float, seed: int, split: Split, out: Path, steps: int) -> dict:
    from facerec.eval.features import ModelFeatureExtractor, extract_features
    from facerec.train.loop import train

    run_dir = out / stage / run_name(variant, lr, seed)
    cfg = rf.study_config(variant, split.rec_dir, run_dir, seed=seed, steps=steps, warmup=WARMUP, batch=BATCH,
                          lr=lr, lr_steps=milestones(steps), checkpoint_every=max(1, steps // 8),
                          eval_every=max(1, steps // (8 if stage == "final" else 4)))

    def scorer(backbone) -> dict:
        feats = extract_features(ModelFeatureExtractor(backbone, "cpu", rf.INPUT_SIZE), split.images, flip=True)
        s = rf.score(feats, split.labels)
        return {k: s[k] for k in ("accuracy", "tar_far1e-3", "rank1")}

    resumed_from = checkpoint_step(run_dir)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(cfg, evaluators={"held": scorer})
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if result["interrupted"]:
        raise SystemExit(f"{run_dir.name} stopped by a signal at step {result['step']}; run again to resume")
    torch.set_num_threads(1)
    backbone = result["backbone"]
    feats = extract_features(ModelFeatureExtractor(backbone, "cpu", rf.INPUT_SIZE), split.images, flip=True)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = {r["step"]: r["loss"] for r in lines if "loss" in r and "step" in r}       # last record per step
    curve = {r["step"]: [r["held_accuracy"], r["held_tar_far1e-3"], r["held_rank1"]] for r in lines
             if "held_accuracy" in r}
    record = {"stage": stage, "variant": variant, "seed": seed, "steps": steps, "warmup": WARMUP, "batch": BATCH,
              "lr": lr, "milestones": milestones(steps), "scored_on": "held-out train/ identities" if
              stage != "final" else "val/", **rf.score(feats, split.labels),
              "final_loss": losses[max(losses)] if losses else math.nan,
              "loss_curve": sorted(losses.items()), "eval_curve": sorted([s, *v] for s, v in curve.items()),
              "region_usage": region_usage(backbone, split.images), "cpu_s": cpu, "wall_s": wall,
              "resumed_from": resumed_from, "torch": torch.__version__}
    (run_dir / "result.json").write_text(json.dumps(record, indent=1))
    return record


def sync_results(out: Path, results: Path = RESULTS) -> None:
    """Committed results -> ``out`` (a fresh checkout continues the study) and finished runs -> ``results``."""
    for src in results.glob("*/*.json"):
        dest = out / src.parent.name / src.stem / "result.json"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(src.read_text())
    for src in out.glob("*/*/result.json"):
        dest = results / src.parent.parent.name / f"{src.parent.name}.json"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(src.read_text())


def work_loop(args) -> None:
    splits = prepare_splits(args.data, args.out / "data")
    while True:
        pending = [r for r in plan(args.out)
                   if not (args.out / r[0] / run_name(r[1], r[2], r[3]) / "result.json").is_file()]
        if not pending:
            if _all_planned(args.out):
                print("study complete", flush=True)
                return
            time.sleep(60)           # another process holds the runs this stage waits for
            continue
        rates = cpu_per_step(args.out)

        def too_late(stage: str, variant: str, lr: float, seed: int) -> bool:
            """Expected to end after --until, counted from the run's latest checkpoint."""
            run_dir = args.out / stage / run_name(variant, lr, seed)
            left = _steps(stage) - checkpoint_step(run_dir)
            return args.until is not None and time.time() + estimated_seconds(variant, left, rates) > args.until

        for stage, variant, lr, seed in pending:
            run_dir = args.out / stage / run_name(variant, lr, seed)
            steps = _steps(stage)
            if not (run_dir / "claim").exists() and too_late(stage, variant, lr, seed):
                continue             # would not finish before the session ends: leave it to the next one
            if try_claim(run_dir):
                try:
                    split = splits["val" if stage == "final" else "tune"]
                    rec = run_one(stage, variant, lr, seed, split, args.out, steps)
                    sync_results(args.out)
                    print(f"{stage} {run_dir.name}: acc {rec['accuracy']:.4f} TAR {rec['tar_far1e-3']:.4f} "
                          f"rank-1 {rec['rank1']:.4f} loss {rec['final_loss']:.3f} ({rec['cpu_s']:.0f} CPU s)",
                          flush=True)
                finally:
                    (run_dir / "claim").unlink(missing_ok=True)
                break
        else:
            if args.until is not None and all(too_late(*run) for run in pending):
                print("no pending run can finish before --until; stopping", flush=True)
                return
            time.sleep(60)


def _all_planned(out: Path) -> bool:
    runs = plan(out)
    changes = sum(r[0] == "final" and r[1].endswith(CHANGE) for r in runs)
    return sum(r[0] == "final" for r in runs) - changes == sum(SEEDS_FINAL.values()) and all(
        (out / s / run_name(v, lr, seed) / "result.json").is_file() for s, v, lr, seed in runs)


def parse_until(text: str | None, now: float | None = None) -> float | None:
    """"HH:MM" -> that local time today as a Unix time (tomorrow if it has passed); None stays None."""
    if text is None:
        return None
    try:
        hours, minutes = (int(p) for p in text.split(":"))
        if not (0 <= hours < 24 and 0 <= minutes < 60):
            raise ValueError
    except ValueError:
        raise SystemExit(f"--until must be HH:MM, got {text!r}") from None
    now = time.time() if now is None else now
    day = time.localtime(now)
    target = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, hours, minutes, 0, 0, 0, -1))
    return target if target > now else target + 86400


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=rf.DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "real_faces_study")
    ap.add_argument("--workers", type=int, default=1, help="processes to start (1 thread each)")
    ap.add_argument("--report", action="store_true", help="print the tables of finished runs; train nothing")
    ap.add_argument("--until", default=None, metavar="HH:MM",
                    help="start only runs expected to finish by this local time today (a session's end): runs "
                         "are lost when their process is, since checkpoints live under --out")
    args = ap.parse_args(argv)
    args.until = parse_until(args.until)
    if args.report:
        from real_faces_report import report
        print(report(args.out))
        return 0
    sync_results(args.out)
    prepare_splits(args.data, args.out / "data")      # once, before any worker reads it
    if args.workers > 1:
        import subprocess
        extra = [] if args.until is None else ["--until", time.strftime("%H:%M", time.localtime(args.until))]
        procs = [subprocess.Popen([sys.executable, __file__, "--data", str(args.data), "--out", str(args.out),
                                   *extra]) for _ in range(args.workers)]
        return max(p.wait() for p in procs)
    work_loop(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
