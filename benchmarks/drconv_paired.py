"""Paired start: DRConv-MobileFaceNet started from the very same function as a plain MobileFaceNet.

With ``init="static"`` a DRConv layer starts as a conv (``shared`` filter, per-region deltas and dynamic part V at
zero). This script makes that exact: it builds a plain MobileFaceNet, copies every parameter and buffer into the
DRConv model (each plain pointwise weight into its layer's ``filter_generator.shared``) and the same AM-Softmax
head, then trains all models on the very same batches (real faces, the study's recipe: SGD momentum 0.9, the
MobileFaceNet weight-decay split, batch 64, linear warm-up to lr 0.1). The per-step loss difference to the plain
model is then the effect of DRConv's training dynamics alone, free of init and data-order noise.

Arms (``--arms``, comma separated):
  plain       MobileFaceNet.
  frozen      DRConv with only ``shared`` (and the non-DRConv layers) trainable: must equal ``plain`` up to
              float rounding (a check of the DRConv gradients to the shared filter).
  drconv      DRConv as shipped (every parameter trainable).
  nodyn       DRConv without the dynamic part (V and the squeeze conv frozen at their start): static per-region
              filters only.
  noguidex    DRConv whose guide sees a detached input: the guide learns from Eq.7-8, the backbone does not
              receive the mask gradient.
  guide0.1    DRConv with the guide's gradient scaled by 0.1 (``guide_grad_scale``).
  deltalr     DRConv with the per-region parameters (deltas, V, squeeze) at lr / regions.

Usage:
    .venv/bin/python benchmarks/drconv_paired.py --steps 30 --arms plain,frozen,drconv --out paired.jsonl
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from drconv_dynamics import DEFAULT_DATA, emit, load_faces, real_batches  # noqa: E402

from facerec.models import create_model, param_groups  # noqa: E402
from facerec.models.heads import create_head  # noqa: E402
from facerec.nn import guide_modules  # noqa: E402

ARMS = ("plain", "frozen", "drconv", "nodyn", "noguidex", "guide0.1", "deltalr")


def paired_drconv(plain: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """A drconv_mobilefacenet computing exactly ``plain``'s function (static init, shared = plain weight)."""
    model = create_model("drconv_mobilefacenet", input_size=(112, 96), embedding_size=128, **kwargs)
    src = plain.state_dict()
    dst = model.state_dict()
    with torch.no_grad():
        for name, value in dst.items():
            if name in src:
                value.copy_(src[name])
            elif name.endswith("filter_generator.shared"):
                value.copy_(src[name.replace("filter_generator.shared", "weight")])
    return model


def _detach_guide_input(model: torch.nn.Module) -> None:
    for _, guide in guide_modules(model):
        guide.register_forward_pre_hook(lambda mod, args: (args[0].detach(),) + tuple(args[1:]))


def make_arm(arm: str, plain_state: dict, head_state: dict, num_classes: int):
    """(model, head, optimizer) of one arm; every arm starts from copies of the same plain model and head."""
    plain = create_model("mobilefacenet", input_size=(112, 96), embedding_size=128)
    plain.load_state_dict(plain_state)
    head = create_head("amsoftmax", 128, num_classes, scale=30.0, margin=0.35)
    head.load_state_dict(head_state)
    if arm == "plain":
        model = plain
    else:
        model = paired_drconv(plain, guide_grad_scale=0.1) if arm == "guide0.1" else paired_drconv(plain)
    if arm == "noguidex":
        _detach_guide_input(model)
    slow_ids: set[int] = set()
    for name, p in model.named_parameters():
        gen = "filter_generator" in name
        if arm == "frozen" and (gen and not name.endswith("shared") or "guide" in name):
            p.requires_grad_(False)
        if arm == "nodyn" and gen and ("expand.weight" in name or "squeeze" in name):
            p.requires_grad_(False)
        if arm == "deltalr" and gen and not name.endswith("shared"):
            slow_ids.add(id(p))
    groups = []
    for g in param_groups(model, head, 4e-5, 4e-4):
        params = [p for p in g["params"] if p.requires_grad]
        fast = [p for p in params if id(p) not in slow_ids]
        slow = [p for p in params if id(p) in slow_ids]
        if fast:
            groups.append(dict(g, params=fast, lr_mult=1.0))
        if slow:
            groups.append(dict(g, params=slow, lr_mult=1.0 / 8, name=g["name"] + "_slow"))
    opt = torch.optim.SGD(groups, lr=0.0, momentum=0.9)
    return model, head, opt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default="plain,frozen,drconv")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    arms = args.arms.split(",")
    bad = [a for a in arms if a not in ARMS]
    if bad:
        ap.error(f"unknown arm(s) {bad}; valid: {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_faces(args.data, ROOT / "data" / "real-faces-323" / "train_112x96.npz")
    num_classes = int(labels.max()) + 1
    plain0 = create_model("mobilefacenet", input_size=(112, 96), embedding_size=128)
    head0 = create_head("amsoftmax", 128, num_classes, scale=30.0, margin=0.35)
    plain_state = {k: v.clone() for k, v in plain0.state_dict().items()}
    head_state = {k: v.clone() for k, v in head0.state_dict().items()}
    runs = {a: make_arm(a, plain_state, head_state, num_classes) for a in arms}
    batches = real_batches(images, labels, args.batch, np.random.default_rng(args.seed))
    out = open(args.out, "w") if args.out else None
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
        x, y = next(batches)
        rec = {"step": step + 1, "lr": lr}
        for arm, (model, head, opt) in runs.items():
            t0 = time.process_time()
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            loss = F.cross_entropy(head(model(x), y), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec[arm] = float(loss.detach())
            rec[arm + "_cpu"] = round(time.process_time() - t0, 2)
        emit(out, rec, " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()
                                if not k.endswith("_cpu")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
