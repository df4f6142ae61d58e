"""Training dynamics of DRConv-MobileFaceNet against MobileFaceNet on real faces (issue: DRConv trains worse).

Trains one backbone + AM-Softmax (s=30, m=0.35) with SGD momentum 0.9 and the MobileFaceNet weight-decay split
on ``real-faces-323/train`` (aligned 112x112 JPEGs, centre-cropped to 112x96 as the MS1M-V2 configs do, random
flips), and logs every ``--log-every`` steps, as JSON lines:

* loss (mean over the window), lr;
* gradient norms of four parameter groups: guide convs, DRConv filter generators, head, everything else;
* for every guide conv, on a fixed probe batch of 64 training faces run in eval mode: the fraction of pixels
  whose region changed since the previous log (mask flip rate), the share of the most used region
  (occupancy; 1/m is uniform, 1 is collapse), the guide logits' std and the mean top-1 minus top-2 gap.

It is a diagnostic, not the study (``benchmarks/real_faces.py`` is the study); it bypasses the runner to
keep the loop in one screen. The data are read once and cached as a uint8 .npy beside the packed set.

Usage (model keywords with --set, e.g. the layer before the fix: --set init=spread --set guide_norm=false):
    .venv/bin/python benchmarks/drconv_dynamics.py --model drconv_mobilefacenet --steps 200 --lr 0.1 \\
        [--warmup 0] [--batch 64] [--seed 0] [--threads 2] [--set generator=basis] [--guide-lr-mult 0.1] \\
        [--out run.jsonl]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facerec.data.codec import decode_rgb  # noqa: E402
from facerec.data.datasets import scan_image_folder  # noqa: E402
from facerec.data.transforms import normalize  # noqa: E402
from facerec.models import create_model, param_groups  # noqa: E402
from facerec.models.heads import create_head  # noqa: E402
from facerec.nn import guide_modules  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-faces-323" / "train"


def load_faces(folder: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """All faces of ``folder`` as uint8 (N, 112, 96, 3) RGB (centre 112x96 crop) and int64 labels (N,)."""
    if cache.exists():
        blob = np.load(cache, allow_pickle=False)
        return blob["images"], blob["labels"]
    paths, labels, _ = scan_image_folder(folder)
    images = np.stack([decode_rgb(p.read_bytes())[:, 8:104] for p in paths])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, labels=np.asarray(labels, dtype=np.int64))
    return images, np.asarray(labels, dtype=np.int64)


def real_batches(images: np.ndarray, labels: np.ndarray, batch: int, rng: np.random.Generator):
    """Endless training batches (x (B, 3, H, W) normalised float, y (B,) int64): epochs reshuffled with ``rng``,
    a partial last batch dropped, each face mirrored with probability 1/2 (also drawn from ``rng``)."""
    order, cursor = rng.permutation(len(images)), 0
    while True:
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(images)), 0
        idx = order[cursor:cursor + batch]
        cursor += batch
        faces = torch.from_numpy(images[idx])
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        yield normalize(torch.where(flip.view(-1, 1, 1, 1), faces.flip(2), faces)), torch.from_numpy(labels[idx])


def emit(out, rec: dict, line: str) -> None:
    """Print ``line`` and append ``rec`` as one JSON line to the open file ``out`` (if any)."""
    print(line, flush=True)
    if out:
        out.write(json.dumps(rec) + "\n")
        out.flush()


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def grad_norms(model: torch.nn.Module, head: torch.nn.Module) -> dict:
    sums = {"guide": 0.0, "generator": 0.0, "rest": 0.0, "head": 0.0}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        key = "guide" if "guide" in name else "generator" if "filter_generator" in name else "rest"
        sums[key] += float(p.grad.detach().pow(2).sum())
    sums["head"] = sum(float(p.grad.detach().pow(2).sum()) for p in head.parameters() if p.grad is not None)
    return {k: math.sqrt(v) for k, v in sums.items()}


class GuideProbe:
    """Masks of every guide conv on a fixed batch; flip rate between calls, occupancy, logit statistics."""

    def __init__(self, model: torch.nn.Module, probe: torch.Tensor) -> None:
        self.model, self.probe, self.previous = model, probe, None
        self.guides = guide_modules(model)

    def __call__(self) -> list[dict]:
        if not self.guides:
            return []
        outs = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: outs.__setitem__(n, out.detach()))
                 for n, m in self.guides]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            self.model(self.probe)
        self.model.train(was_training)
        for h in hooks:
            h.remove()
        stats, masks = [], {}
        for name, _ in self.guides:
            f = outs[name]
            mask = f.argmax(1)
            masks[name] = mask
            top2 = f.topk(2, dim=1).values
            share = torch.bincount(mask.flatten(), minlength=f.shape[1]).float() / mask.numel()
            flip = None if self.previous is None else float((self.previous[name] != mask).float().mean())
            stats.append({"guide": name, "flip": flip, "max_share": float(share.max()),
                          "std": float(f.std()), "gap": float((top2[:, 0] - top2[:, 1]).mean())})
        self.previous = masks
        return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="drconv_mobilefacenet")
    ap.add_argument("--set", action="append", default=[], help="model keyword, e.g. generator=basis")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grad-clip", type=float, default=0.0)
    ap.add_argument("--guide-lr-mult", type=float, default=1.0, help="lr multiplier of the guide convs")

    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_faces(args.data, ROOT / "data" / "real-faces-323" / "train_112x96.npz")
    num_classes = int(labels.max()) + 1
    model = create_model(args.model, input_size=(112, 96), embedding_size=128, **_parse_set(args.set))
    head = create_head("amsoftmax", 128, num_classes, scale=30.0, margin=0.35)
    groups = param_groups(model, head, 4e-5, 4e-4)
    guide_ids = {id(m.weight) for _, m in guide_modules(model)} | {id(m.bias) for _, m in guide_modules(model)
                                                                   if m.bias is not None}
    split = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in guide_ids]
        guide = [p for p in g["params"] if id(p) in guide_ids]
        split.append(dict(g, params=rest, lr_mult=1.0))
        if guide:
            split.append(dict(g, params=guide, lr_mult=args.guide_lr_mult, name=g["name"] + "_guide"))
    opt = torch.optim.SGD([g for g in split if g["params"]], lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(args.seed)
    probe = normalize(torch.from_numpy(images[rng.choice(len(images), 64, replace=False)]))
    probe_stats = GuideProbe(model, probe)
    probe_stats()
    out = open(args.out, "w") if args.out else None
    window, start = [], time.time()
    batches = real_batches(images, labels, args.batch, rng)
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        x, y = next(batches)
        loss = F.cross_entropy(head(model(x), y), y)
        if not torch.isfinite(loss):
            rec = {"step": step + 1, "loss": float(loss), "nonfinite": True}
            emit(out, rec, json.dumps(rec))
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms = grad_norms(model, head) if (step + 1) % args.log_every == 0 else None
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), args.grad_clip)
        opt.step()
        window.append(float(loss.detach()))
        if norms is not None:
            rec = {"step": step + 1, "lr": lr, "loss": sum(window) / len(window), "grad": norms,
                   "guides": probe_stats(), "sec": round(time.time() - start, 1)}
            window = []
            g = rec["guides"]
            summary = ""
            if g:
                summary = (f" flip {np.mean([s['flip'] for s in g]):.3f} max_share "
                           f"{np.mean([s['max_share'] for s in g]):.2f} gap {np.mean([s['gap'] for s in g]):.3f}")
            emit(out, rec, f"step {rec['step']:4d} loss {rec['loss']:.3f} |g| guide {norms['guide']:.3g} gen "
                           f"{norms['generator']:.3g} rest {norms['rest']:.3g} head {norms['head']:.3g}{summary} "
                           f"({rec['sec']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
