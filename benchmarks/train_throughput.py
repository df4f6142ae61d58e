"""Runner overhead: samples/s of ``facerec.train.loop.train`` against a bare loop, same model and data.

Both paths build the backbone, AM-Softmax head and SGD (weight-decay groups) the same way, read the
same in-memory dataset through the same DataLoader, and time the second half of their steps (the
first half is warm-up). The runner adds everything it does per step: lr from the schedule, the
non-finite-loss check (a host sync), the signal flag, the tqdm bar and logging. The two are
interleaved ``--reps`` times and the medians compared, so machine load affects both alike.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/train_throughput.py
    # on a shared machine: OMP_WAIT_POLICY=PASSIVE ... train_throughput.py --threads 1 --reps 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facerec.config import config_from_dict  # noqa: E402
from facerec.data.transforms import normalize_image  # noqa: E402
from facerec.train import builders  # noqa: E402
from facerec.train.loop import train  # noqa: E402
from facerec.train.schedule import lr_at  # noqa: E402


class MemoryFaces(torch.utils.data.Dataset):
    """Random uint8 faces (H, W, 3) held in memory, normalised per item like RecordDataset."""

    def __init__(self, n: int, size: tuple[int, int], num_classes: int) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, *size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, num_classes, size=n)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return normalize_image(self.images[i]), int(self.labels[i])


def _config(args, out_dir: str):
    return config_from_dict({
        "name": "bench",
        "model": {"name": args.model, "input_size": [112, 96]},
        "data": {"batch_size": args.batch, "num_workers": 0},
        "schedule": {"total_steps": 2 * args.steps, "milestones": [10 ** 9]},
        "train": {"out_dir": out_dir, "log_every": args.steps, "tensorboard": False},
        "checkpoint": {"every": 10 ** 9, "keep": 1},
    })


def run_bare(cfg, dataset) -> float:
    torch.manual_seed(0)
    backbone = builders.build_backbone(cfg.model)
    head = builders.build_head(cfg.head, cfg.model.embedding_size, dataset.num_classes)
    optimizer = builders.build_optimizer(cfg.optim, backbone, head)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True)
    half = cfg.schedule.total_steps // 2
    step, start = 0, 0.0
    while step < cfg.schedule.total_steps:
        for images, labels in loader:
            if step == half:
                start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.schedule, cfg.optim)
            loss = torch.nn.functional.cross_entropy(head(backbone(images), labels), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == cfg.schedule.total_steps:
                break
    return half * cfg.data.batch_size / (time.perf_counter() - start)


def run_runner(cfg, dataset) -> float:
    builders.build_train_dataset = lambda _cfg: dataset
    builders.load_eval_sets = lambda _cfg: []
    builders.prepare_data = lambda _cfg: None
    train(cfg)
    lines = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in lines if "samples_per_s" in r][-1]  # steps half..end


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilefacenet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after as many warm-up steps)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = MemoryFaces(4 * args.batch * args.steps, (112, 96), 300)
    bare, runner = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            cfg = _config(args, f"{tmp}/run{rep}")
            bare.append(run_bare(cfg, dataset))
            runner.append(run_runner(cfg, dataset))
    b, r = statistics.median(bare), statistics.median(runner)
    print(f"\n{args.model}, 112x96, batch {args.batch}, {args.steps} timed steps, median of {args.reps}, "
          f"{torch.get_num_threads()} threads\n")
    print("| loop | samples/s | ratio to bare |")
    print("|---|---|---|")
    print(f"| bare loop (model + head + SGD + DataLoader) | {b:.2f} | 1.00 |")
    print(f"| facerec.train.loop.train | {r:.2f} | {r / b:.3f} |")
    print(f"\nrunner overhead: {100 * (1 - r / b):+.1f}% (target < 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
