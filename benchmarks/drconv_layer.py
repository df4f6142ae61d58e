"""Benchmark: whole 1x1 DRConv2d layers at MobileFaceNet shapes, as ratios to nn.Conv2d in the same run.

Times forward and forward+backward (input requires grad, loss = sum of output * fixed grad) of
* conv: nn.Conv2d(C, O, 1, bias=False), the baseline every ratio divides by;
* DRConv2d generator="paper" (guide + generator + region_conv2d);
* DRConv2d generator="basis" with path "gather", the dense form ("dense_pointwise" for C <= O, else
  "dense_mix") and "auto" (what the layer picks);
* all-m: the "compute all m outputs and select" baseline (paper generator, per-sample grouped conv giving
  the m outputs, one-hot select, softmax straight-through for the guide), as the unofficial public code does.

Usage:
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/drconv_layer.py
    [--reps 10] [--batch 32] [--regions 8] [--shapes 64,128,56 128,128,14 ...] [--channels-last]
    [--threads 2] [--clock wall|cpu]
Each layer is timed in interleaved rounds and the fastest round counts (robust on a shared machine).
Prints a markdown table (milliseconds for conv, ratios for the rest) and the FLOP floor of the
DRConv implementations survey (section 5.2) beside it.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from facerec.nn import DRConv2d

SHAPES = ((64, 128, 56), (128, 64, 28), (64, 256, 28), (128, 128, 14), (128, 512, 14), (128, 512, 7),
          (128, 128, 7))


class AllOutputsDRConv(nn.Module):
    """Reference-style DRConv computing all m outputs per pixel, then selecting one (m x the MACs)."""

    def __init__(self, in_channels: int, out_channels: int, regions: int) -> None:
        super().__init__()
        self.inner = DRConv2d(in_channels, out_channels, 1, regions=regions, generator="paper")

    def forward(self, x):
        batch, channels, height, width = x.shape
        guide = self.inner.guide(x)
        filters = self.inner.filter_generator(x)
        m, out_channels = filters.shape[1], filters.shape[2]
        outs = F.conv2d(x.reshape(1, batch * channels, height, width),
                        filters.reshape(batch * m * out_channels, channels, 1, 1), groups=batch)
        outs = outs.view(batch, m, out_channels, height, width)
        soft = torch.softmax(guide, 1)
        hard = F.one_hot(guide.argmax(1), m).permute(0, 3, 1, 2).to(x.dtype)
        coef = (hard + soft - soft.detach()).unsqueeze(2)
        return (coef * outs).sum(1)


def flop_floor(in_channels: int, out_channels: int, pixels: int, regions: int) -> float:
    """Training-step MAC ratio to a conv (spec section 5.2): (m + 2) conv units + guide + generator, over 3."""
    conv = in_channels * out_channels * pixels
    guide = 3 * regions * in_channels * pixels
    generator = 3 * regions * regions * in_channels * out_channels
    return ((regions + 2) * conv + guide + generator) / (3 * conv)


def _train_step(layer, x, grad):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).backward(grad)


def _forward(layer, x):
    with torch.no_grad():
        layer(x)


def bench_round_robin(layers: list, x: torch.Tensor, reps: int, clock=time.perf_counter
                      ) -> list[tuple[float, float]]:
    """(forward ms, forward+backward ms) per layer: the fastest of ``reps`` rounds, layers interleaved.

    Interleaving and taking the minimum keep the ratios stable on a shared, loaded machine (load only ever
    adds time).
    """
    grads = []
    for layer in layers:
        with torch.no_grad():
            grads.append(torch.randn_like(layer(x)))
        for _ in range(2):
            _forward(layer, x)
            _train_step(layer, x, grads[-1])
    best = [[float("inf"), float("inf")] for _ in layers]
    for _ in range(reps):
        for i, layer in enumerate(layers):
            start = clock()
            _forward(layer, x)
            middle = clock()
            _train_step(layer, x, grads[i])
            stop = clock()
            best[i][0] = min(best[i][0], (middle - start) * 1e3)
            best[i][1] = min(best[i][1], (stop - middle) * 1e3)
    return [tuple(b) for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--num-bases", type=int, default=4, help="r of the basis generator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="*", default=None, help="C,O,H triples")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--skip-all-m", action="store_true")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: perf_counter; cpu: process CPU time (robust when other jobs share the "
                             "cores; use with --threads 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    m, r = args.regions, args.num_bases
    variants = [
        ("paper", lambda c, o: DRConv2d(c, o, 1, regions=m, generator="paper")),
        ("paper gather", lambda c, o: DRConv2d(c, o, 1, regions=m, generator="paper", path="gather")),
        ("basis gather", lambda c, o: DRConv2d(c, o, 1, regions=m, generator="basis", num_bases=r,
                                                path="gather")),
        ("basis dense", lambda c, o: DRConv2d(c, o, 1, regions=m, generator="basis", num_bases=r,
                                                path="dense_pointwise" if c <= o else "dense_mix")),
        ("basis auto", lambda c, o: DRConv2d(c, o, 1, regions=m, generator="basis", num_bases=r,
                                                path="auto")),
    ]
    if not args.skip_all_m:
        variants.append(("all-m", lambda c, o: AllOutputsDRConv(c, o, m)))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, N={args.batch}, m={m}, r={r}, "
          "float32, "
          f"{'channels_last' if args.channels_last else 'NCHW'}; ratios = time / nn.Conv2d time (same run)")
    header = "| layer (1x1) | conv fwd / f+b ms | " + " | ".join(f"{n} fwd× / f+b×" for n, _ in variants)
    print(header + " | FLOP floor f+b× |")
    print("|" + "---|" * (len(variants) + 3))
    for in_channels, out_channels, size in shapes:
        x = torch.randn(args.batch, in_channels, size, size).contiguous(memory_format=fmt).requires_grad_()
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False).to(memory_format=fmt)
        layers = [conv] + [build(in_channels, out_channels).to(memory_format=fmt) for _, build in variants]
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        results = bench_round_robin(layers, x, args.reps, clock)
        conv_fwd, conv_fb = results[0]
        cells = [f"{conv_fwd:.2f} / {conv_fb:.2f}"]
        cells += [f"{fwd / conv_fwd:.2f} / {fb / conv_fb:.2f}" for fwd, fb in results[1:]]
        floor = flop_floor(in_channels, out_channels, size * size, m)
        print(f"| {in_channels}->{out_channels} @{size}x{size} | " + " | ".join(cells) + f" | {floor:.2f} |")


if __name__ == "__main__":
    main()
