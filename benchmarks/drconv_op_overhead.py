"""Benchmark: what the registered operator costs DRConv-MobileFaceNet on CPU, against calling the same kernels
without it, in one process, interleaved (best of --repeats after one warm-up).

Arms:
* ``operator``: the model as shipped: every DRConv layer calls ``torch.ops.facerec.region_conv`` (dispatcher, the
  registered autograd formula, ``facerec::region_conv_backward`` in training);
* ``direct``: ``facerec.nn.ops.region_conv`` replaced by a plain autograd Function that runs the same
  implementation functions (``facerec.nn.kernels.fused_cpu`` forward / backward, Eq.8) with no dispatcher.

The difference is the operator's dispatch cost. Inference is the backbone forward under ``torch.no_grad()``;
training is forward + backward of the backbone (sum of squares as the loss). Whole-model differences of a few
percent are within this VM's round-to-round noise, so the per-call cost is also measured directly: one call of
each arm at a small layer shape (batch 2, 8 -> 8 channels, 4x4), alternating, median of --calls calls; that
cost times the model's 30 DRConv layers, over the model's time, is the dispatch's share.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/drconv_op_overhead.py [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facerec.models import create_model  # noqa: E402
from facerec.nn import ops, paths  # noqa: E402
from facerec.nn.functional import _pair, softmax_straight_through_grad  # noqa: E402
from facerec.nn.kernels import fused_cpu  # noqa: E402


class _DirectFunction(torch.autograd.Function):
    """The fused implementation with the operator's maths, called without the dispatcher."""

    @staticmethod
    def forward(ctx, x, guide, coef, kernels, stride):
        ctx.save_for_backward(x, guide, coef, kernels)
        ctx.stride = stride
        return fused_cpu.region_conv_forward(x, guide, coef, kernels, stride)

    @staticmethod
    def backward(ctx, grad_out):
        x, guide, coef, kernels = ctx.saved_tensors
        per_group = paths.filter_grads_in_kernel(guide.shape[2] * guide.shape[3], guide.shape[1])
        grad_x, eq7, grad_coef, grad_kernels = fused_cpu.region_conv_backward(
            grad_out, x, guide, coef, kernels, ctx.stride, ctx.needs_input_grad[:4], per_group)
        grad_guide = softmax_straight_through_grad(guide, eq7) if ctx.needs_input_grad[1] else None
        return grad_x, grad_guide, grad_coef, grad_kernels, None


def _direct(x, guide, coef, kernels, stride=1, impl="auto"):
    if impl != "fused":
        raise RuntimeError(f"this benchmark times the fused path; a layer asked for {impl!r}")
    return _DirectFunction.apply(x, guide, coef, kernels, _pair(stride, "stride"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--generator", choices=("paper", "basis"), default="paper")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not fused_cpu.built():
        raise SystemExit("the fused kernel is not built here: nothing to compare")
    model = create_model("drconv_mobilefacenet", input_size=(112, 112), generator=args.generator)
    x = torch.randn(args.batch, 3, 112, 112)

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()

    shipped = ops.region_conv
    per_call = _per_call(shipped, args.calls)
    times: dict[str, list[float]] = {}
    try:
        for round_ in range(args.repeats + 1):
            for arm, fn in (("operator", shipped), ("direct", _direct)):
                ops.region_conv = fn
                for kind, step in (("inference", infer), ("train", train)):
                    start = time.perf_counter()
                    step()
                    if round_:                                      # round 0 warms up (and builds the kernel)
                        times.setdefault(f"{arm} {kind}", []).append(time.perf_counter() - start)
    finally:
        ops.region_conv = shipped
    best = {key: min(values) for key, values in times.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, 112x112, generator "
          f"{args.generator}, best of {args.repeats} (interleaved, one process)\n")
    print("| step | direct ms | operator ms | operator / direct |")
    print("|---|---:|---:|---:|")
    for kind in ("inference", "train"):
        direct, operator = best[f"direct {kind}"], best[f"operator {kind}"]
        print(f"| {kind} | {direct * 1e3:.1f} | {operator * 1e3:.1f} | {operator / direct:.3f} |")
    print("\n| step | per call: direct us | operator us | 30 layers' extra / model step (direct) |")
    print("|---|---:|---:|---:|")
    for kind in ("inference", "train"):
        direct, operator = per_call[kind]
        share = 30 * (operator - direct) / best[f"direct {kind}"]
        print(f"| {kind} | {direct * 1e6:.1f} | {operator * 1e6:.1f} | {100 * share:.2f}% |")


def _per_call(shipped, calls: int) -> dict[str, tuple[float, float]]:
    """Median seconds of one call (inference: forward; train: forward + backward) of each arm, alternating."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 4, 4, generator=gen).contiguous(memory_format=torch.channels_last)
    guide, coef = torch.randn(2, 4, 4, 4, generator=gen), torch.rand(2, 4, 2, generator=gen)
    kernels = torch.randn(4, 2, 8, 8, generator=gen)
    grad_out = torch.ones(2, 8, 4, 4)
    result = {}
    for kind in ("inference", "train"):
        samples: dict[str, list[float]] = {"direct": [], "operator": []}
        for i in range(calls):
            for arm, fn in (("direct", _direct), ("operator", shipped)):
                inputs = [t.clone().requires_grad_(kind == "train") for t in (x, guide, coef, kernels)]
                start = time.perf_counter()
                if kind == "train":
                    torch.autograd.grad(fn(*inputs, 1, "fused"), inputs, grad_out)
                else:
                    with torch.no_grad():
                        fn(*inputs, 1, "fused")
                if i >= calls // 10:                                 # the first tenth warms up
                    samples[arm].append(time.perf_counter() - start)
        result[kind] = tuple(sorted(samples[arm])[len(samples[arm]) // 2] for arm in ("direct", "operator"))
    return result


if __name__ == "__main__":
    main()
