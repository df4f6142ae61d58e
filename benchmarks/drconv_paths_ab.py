"""Benchmark: drconv_mobilefacenet against mobilefacenet with DRConv's CPU paths switched on and off, in one
process, interleaved (best of --repeats after one warm-up), so the machine's drift between processes (10-25% on
the shared VM) does not enter the comparison.

Arms (``facerec.nn.settings.override(fused=..., onednn=...)`` between rounds):
* ``all``: both switches on (fused kernels, oneDNN GEMMs; the defaults where torch reports AVX-512);
* ``no_fused``: inference through the structured / gathered paths (oneDNN GEMMs);
* ``neither``: also without oneDNN (torch.mm / _grouped_mm, the code before issue 11's third session);
* ``fused_no_onednn``: the fused kernels with the unfused parts' GEMMs through torch.mm / _grouped_mm (the
  defaults elsewhere).
Training is forward + backward of the backbone (sum of squares as the loss; no head, no optimizer), so the
ratio is the backbone's.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/drconv_paths_ab.py [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facerec.models import create_model  # noqa: E402
from facerec.nn import settings  # noqa: E402
from facerec.nn.kernels import fused_cpu  # noqa: E402

ARMS = {"all": (True, True), "no_fused": (False, True), "neither": (False, False), "fused_no_onednn": (True, False)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-size", default="112x112", help="HxW")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generator", choices=("paper", "basis"), default="paper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = tuple(int(v) for v in args.input_size.split("x"))
    plain = create_model("mobilefacenet", input_size=size)
    drconv = create_model("drconv_mobilefacenet", input_size=size, generator=args.generator)
    x = torch.randn(args.batch, 3, *size)

    def infer(model):
        model.eval()
        with torch.no_grad():
            model(x)

    def train(model):
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()

    times: dict[str, list[float]] = {}
    for round_ in range(args.repeats + 1):
        for name, model, arms in (("plain", plain, {"-": (True, True)}), ("drconv", drconv, ARMS)):
            for arm, (fused, onednn) in arms.items():
                with settings.override(fused=fused, onednn=onednn):
                    for kind, fn in (("inference", infer), ("train", train)):
                        elapsed = _timed(lambda: fn(model))
                        if round_:                                  # round 0 warms up (and builds the kernel)
                            times.setdefault(f"{name} {arm} {kind}", []).append(elapsed)
    best = {key: min(values) for key, values in times.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.input_size}, generator "
          f"{args.generator}, best of {args.repeats} (interleaved, one process); fused kernel built: "
          f"{fused_cpu.built()} ({fused_cpu.instruction_set()})\n")
    print("| drconv_mobilefacenet arm | inference ms | inference ratio | fwd+bwd ms | fwd+bwd ratio |")
    print("|---|---:|---:|---:|---:|")
    plain_inf, plain_train = best["plain - inference"], best["plain - train"]
    print(f"| mobilefacenet (baseline) | {plain_inf * 1e3:.0f} | 1.00x | {plain_train * 1e3:.0f} | 1.00x |")
    for arm in ARMS:
        inf, tr = best[f"drconv {arm} inference"], best[f"drconv {arm} train"]
        print(f"| {arm} | {inf * 1e3:.0f} | {inf / plain_inf:.2f}x | {tr * 1e3:.0f} | {tr / plain_train:.2f}x |")


if __name__ == "__main__":
    main()
