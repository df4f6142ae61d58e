"""One prepared GPU check: correctness and speed of the DRConv paths on CUDA, model ratios, MegaFace at scale.

Sections (each prints a markdown table; each is bounded so the whole script stays under about 8 minutes on one
recent GPU):

1. correctness: every DRConv2d path (paper structured / gathered, basis dense / gathered) and
   ``region_conv2d``: output and all gradients on the device in float32 and under bf16 autocast against the
   same layer in float64 on the CPU (max error relative to the reference's max magnitude);
2. layers: forward and forward+backward of DRConv2d (both generators, the paths ``auto`` picks) as ratios to
   nn.Conv2d of the same shape, N=32, fp32 and bf16 autocast, timed with CUDA events (median of 20);
3. models: drconv_mobilefacenet / mobilefacenet, batch 128, 112x112: training step (SGD + AM-Softmax) and
   inference, fp32 and bf16 autocast, both generators;
4. MegaFace: ``facerec.eval.megaface.evaluate`` with 3,530 probes (80 identities) against 1,000,000 random
   128-d distractors on the GPU, seconds, beside the bare GEMM of the same size.

Without CUDA, section 1 runs on the CPU (float32 against float64) so the script is exercised, and sections 2-4
print that they were skipped.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/gpu_check.py [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facerec.models import create_head, create_model, param_groups  # noqa: E402
from facerec.nn import DRConv2d  # noqa: E402
from facerec.nn.functional import region_conv2d  # noqa: E402

LAYER_SHAPES = ((64, 128, 56), (128, 128, 14), (128, 512, 7))
PATHS = (("paper", {"generator": "paper", "paper_path": "structured"}),
         ("paper gather", {"generator": "paper", "paper_path": "gather"}),
         ("basis dense", {"generator": "basis", "basis_path": "dense"}),
         ("basis gather", {"generator": "basis", "basis_path": "gather"}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """max |a - b| / max |b| (over the pixels ``where`` (B, H, W) is True, when given)."""
    diff = (a.detach().double().cpu() - b.detach().double().cpu()).abs()
    if where is not None:
        diff = diff * where.unsqueeze(1).cpu()
    return float(diff.max() / b.detach().double().abs().max().clamp_min(1e-30))


def _masks(layer: nn.Module):
    """Forward hook storage of the layer guide's argmax mask."""
    store = {}
    layer.guide.register_forward_hook(lambda mod, inp, out: store.__setitem__("mask", out.argmax(1).cpu()))
    return store


def check_correctness(device: torch.device) -> bool:
    print(f"\n## 1. Correctness on {device} (max |error| / max |reference|, float64 CPU reference)\n")
    print("bf16: the guide runs in bf16 too, so near-tie pixels may pick another region than in float64; the bf16 "
          "output error is over the pixels whose region agrees (the flipped share is shown), gradients are "
          "informative only.\n")
    print("| path | shape | fp32 out | fp32 grads (worst) | bf16 autocast out | bf16 flipped | bf16 grads (worst) "
          "| pass |")
    print("|---|---|---|---|---|---|---|---|")
    ok_all = True
    for name, kw in PATHS:
        for c, o, size, stride in ((16, 32, 7, 1), (32, 16, 14, 2)):
            torch.manual_seed(0)
            ref = DRConv2d(c, o, 1, stride=stride, regions=8, init="spread", **kw).double()
            ref_mask = _masks(ref)
            x64 = torch.randn(4, c, size, size, dtype=torch.float64, requires_grad=True)
            y64 = ref(x64)
            gy = torch.randn_like(y64)
            g64 = torch.autograd.grad(y64, [x64] + list(ref.parameters()), gy)
            row = [name, f"{c}->{o} @{size} s{stride}"]
            ok = True
            for amp in (False, True):
                layer = DRConv2d(c, o, 1, stride=stride, regions=8, init="spread", **kw).to(device)
                layer.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
                mask = _masks(layer)
                x = x64.detach().float().to(device).requires_grad_()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    y = layer(x)
                g = torch.autograd.grad(y.float(), [x] + list(layer.parameters()), gy.float().to(device))
                agree = mask["mask"] == ref_mask["mask"]
                out_err = _rel(y.float(), y64, agree)
                grad_err = max(_rel(a, b) for a, b in zip(g, g64))
                if amp:
                    flipped = 1.0 - float(agree.float().mean())
                    ok = ok and out_err <= 3e-2 and flipped <= 0.05
                    row += [f"{out_err:.1e}", f"{flipped:.1%}", f"{grad_err:.1e}"]
                else:
                    ok = ok and out_err <= 1e-4 and grad_err <= 1e-3 and bool(agree.all())
                    row += [f"{out_err:.1e}", f"{grad_err:.1e}"]
            ok_all = ok_all and ok
            print("| " + " | ".join(row) + f" | {'yes' if ok else '**NO**'} |")
    # The functional op alone (materialised filters), 3x3 with padding.
    torch.manual_seed(0)
    x64 = torch.randn(2, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(2, 4, 8, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    f64 = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    y64 = region_conv2d(x64, w64, f64, padding=1)
    gy = torch.randn_like(y64)
    g64 = torch.autograd.grad(y64, (x64, w64, f64), gy)
    ins = [t.detach().float().to(device).requires_grad_() for t in (x64, w64, f64)]
    y = region_conv2d(*ins, padding=1)
    g = torch.autograd.grad(y, ins, gy.float().to(device))
    out_err, grad_err = _rel(y, y64), max(_rel(a, b) for a, b in zip(g, g64))
    ok = out_err <= 1e-4 and grad_err <= 1e-3
    ok_all = ok_all and ok
    print(f"| region_conv2d 3x3 | 8->8 @9 | {out_err:.1e} | {grad_err:.1e} | - | - | - | {'yes' if ok else '**NO**'} |")
    return ok_all


def _time(fn, device: torch.device, reps: int) -> float:
    """Median milliseconds of fn() over reps, CUDA events on a GPU."""
    for _ in range(3):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_layers(device: torch.device, reps: int) -> None:
    print(f"\n## 2. Layers on {device}: ratio to nn.Conv2d (N=32, m=8, 1x1; fwd / fwd+bwd; median of {reps})\n")
    print("| layer | dtype | conv fwd / f+b ms | paper (auto) | basis (auto) |")
    print("|---|---|---|---|---|")
    for c, o, size in LAYER_SHAPES:
        for amp in (False, True):
            x = torch.randn(32, c, size, size, device=device, requires_grad=True)
            layers = [nn.Conv2d(c, o, 1, bias=False), DRConv2d(c, o, 1, regions=8, generator="paper"),
                      DRConv2d(c, o, 1, regions=8, generator="basis")]
            cells = []
            for layer in layers:
                layer.to(device)
                grad = torch.randn(32, o, size, size, device=device)

                def fwd(layer=layer):
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        layer(x)

                def step(layer=layer, grad=grad):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        y = layer(x)
                    y.backward(grad.to(y.dtype))

                cells.append((_time(fwd, device, reps), _time(step, device, reps)))
            base = cells[0]
            text = [f"{base[0]:.3f} / {base[1]:.3f}"] + [f"{f / base[0]:.2f} / {b / base[1]:.2f}" for f, b in cells[1:]]
            print(f"| {c}->{o} @{size}x{size} | {'bf16' if amp else 'fp32'} | " + " | ".join(text) + " |")


def bench_models(device: torch.device, reps: int, batch: int) -> None:
    print(f"\n## 3. Models on {device}: drconv_mobilefacenet / mobilefacenet, batch {batch}, 112x112\n")
    print("| generator | dtype | plain train ms | train ratio | plain inference ms | inference ratio |")
    print("|---|---|---|---|---|---|")
    x = torch.randn(batch, 3, 112, 112, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    for generator in ("paper", "basis"):
        for amp in (False, True):
            times = []
            for name, kw in (("mobilefacenet", {}), ("drconv_mobilefacenet", {"generator": generator})):
                torch.manual_seed(0)
                model = create_model(name, **kw).to(device)
                head = create_head("amsoftmax", 128, 1000).to(device)
                opt = torch.optim.SGD(param_groups(model, head), lr=0.01, momentum=0.9)

                def train_step(model=model, head=head, opt=opt):
                    model.train()
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss = F.cross_entropy(head(model(x), y), y)
                    loss.backward()
                    opt.step()

                def infer(model=model):
                    model.eval()
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        model(x)

                times.append((_time(train_step, device, reps), _time(infer, device, reps)))
            (pt, pi), (dt, di) = times
            print(f"| {generator} | {'bf16' if amp else 'fp32'} | {pt:.1f} | {dt / pt:.2f}x | {pi:.1f} | "
                  f"{di / pi:.2f}x |")


def bench_megaface(device: torch.device, distractors: int) -> None:
    from facerec.eval.megaface import evaluate

    print(f"\n## 4. MegaFace scoring on {device}: 3,530 probes x {distractors:,} distractors, 128-d\n")
    rng = np.random.default_rng(0)
    counts = np.full(80, 3530 // 80)
    counts[: 3530 - counts.sum()] += 1
    ids = [f"id{k}" for k, n in enumerate(counts) for _ in range(n)]
    centres = rng.standard_normal((80, 128)).astype(np.float32)
    probes = np.repeat(centres, counts, axis=0) + 0.6 * rng.standard_normal((3530, 128)).astype(np.float32)
    gallery = rng.standard_normal((distractors, 128), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    _sync(device)
    t0 = time.perf_counter()
    result = evaluate(probes, ids, gallery, device=device, block_size=65536)
    _sync(device)
    seconds = time.perf_counter() - t0
    p = torch.from_numpy(probes).to(device)
    t0 = time.perf_counter()
    for i in range(0, distractors, 65536):
        (p @ torch.from_numpy(gallery[i:i + 65536]).to(device).T).max()
    _sync(device)
    gemm = time.perf_counter() - t0
    print("| trials | rank-1 | seconds | bare GEMM seconds | ratio |\n|---|---|---|---|---|")
    print(f"| {result['num_trials']:,} | {result['rank1']:.4f} | {seconds:.1f} | {gemm:.1f} | {seconds / gemm:.1f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, 100k distractors")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    print(f"torch {torch.__version__}, {name}, CPU threads {torch.get_num_threads()}")
    t0 = time.time()
    ok = check_correctness(device)
    if not cuda:
        print("\nSections 2-4 (layer, model and MegaFace timings) need CUDA: skipped on this machine.")
        return 0 if ok else 1
    torch.backends.cudnn.benchmark = True
    reps = 5 if args.quick else 20
    bench_layers(device, reps)
    bench_models(device, reps, batch=128)
    bench_megaface(device, 100_000 if args.quick else 1_000_000)
    print(f"\nTotal {time.time() - t0:.0f} s; correctness {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
