"""MegaFace scoring at scale: seconds and peak RSS of the full result (rank-1, CMC, ROC) vs. a bare matmul.

Random unit features, 3,530 probes in 80 identities (27..50 images each, like FaceScrub), distractors
10k / 100k / 1M read from a packed float32 .npy, at 128-d and 512-d. Each case runs in a fresh process so
its peak RSS is its own; the baseline is the bare GEMM of the same size (3,530 x D times D x N, in the same
distractor blocks, no counting) measured in that same process just before. Speed is the ratio.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/megaface_scale.py
    ... --sizes 10000 100000 --dims 128      # a quicker subset
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _probe_ids(rng) -> list[str]:
    counts = rng.integers(27, 51, 80)
    while counts.sum() != 3530:  # nudge to exactly 3,530 images, keeping every identity in 27..50
        i = rng.integers(80)
        step = 1 if counts.sum() < 3530 else -1
        if 27 <= counts[i] + step <= 50:
            counts[i] += step
    return [f"id{k:02d}" for k, c in enumerate(counts) for _ in range(c)]


def _unit(rng, n, d) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_packed(path: Path, n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for i in range(0, n, 65536):
        out[i:i + 65536] = _unit(rng, min(65536, n - i), d)
    out.flush()
    del out


def _probes(rng, ids, d, kind) -> np.ndarray:
    if kind == "random":  # the worst case: mates score like distractors, every count is large
        return _unit(rng, len(ids), d)
    # "clustered": identity centre + noise, same-identity cosine about 0.5 (a trained model's regime)
    codes = np.unique(ids, return_inverse=True)[1]
    x = _unit(rng, codes.max() + 1, d)[codes] + _unit(rng, len(ids), d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _case(path: str, n: int, d: int, threads: int, block: int, kind: str) -> dict:
    from facerec.eval.megaface import evaluate
    from facerec.eval.megaface_io import PackedFeatures

    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    ids = _probe_ids(rng)
    probes = _probes(rng, ids, d, kind)
    # baseline: the bare GEMM, same blocks, one in-memory block reused
    p = torch.from_numpy(probes)
    x = torch.from_numpy(_unit(rng, min(block, n), d))
    out = torch.empty(len(ids), x.shape[0])
    torch.matmul(p, x.T, out=out)
    t0 = time.perf_counter()
    for d0 in range(0, n, block):
        torch.matmul(p, x.T, out=out)
    t_gemm = time.perf_counter() - t0
    del x, out
    feats = PackedFeatures(path)
    t0 = time.perf_counter()
    res = evaluate(probes, ids, feats, block_size=block, device="cpu")
    t_eval = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"n": n, "d": d, "seconds": t_eval, "gemm_seconds": t_gemm, "peak_rss_mb": rss,
            "rank1": res["rank1"], "trials": res["num_trials"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=32768)
    ap.add_argument("--workdir", default=None, help="where the packed distractor files go (default: a temp dir)")
    ap.add_argument("--probes", choices=("random", "clustered", "both"), default="both",
                    help="random unit probes (worst case) and/or identity-clustered probes (realistic mates)")
    ap.add_argument("--case", nargs=4, metavar=("NPY", "N", "D", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(_case(args.case[0], int(args.case[1]), int(args.case[2]), args.threads, args.block_size,
                               args.case[3])))
        return 0
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for d in args.dims:
            for n in args.sizes:
                path = Path(tmp) / f"d{n}_{d}.npy"
                _write_packed(path, n, d, seed=n + d)
                for kind in (("random", "clustered") if args.probes == "both" else (args.probes,)):
                    proc = subprocess.run([sys.executable, __file__, "--case", str(path), str(n), str(d), kind,
                                           "--threads", str(args.threads), "--block-size", str(args.block_size)],
                                          capture_output=True, text=True, env=dict(os.environ))
                    if proc.returncode != 0:
                        print(proc.stderr, file=sys.stderr)
                        return proc.returncode
                    rows.append(dict(json.loads(proc.stdout.strip().splitlines()[-1]), kind=kind))
                    r = rows[-1]
                    print(f"# done: {n} x {d}-d {kind} in {r['seconds']:.1f} s", file=sys.stderr, flush=True)
                path.unlink()
    print(f"\n3530 probes (80 identities), random unit distractors from a packed float32 .npy, "
          f"{args.threads} threads, block {args.block_size}\n")
    print("| distractors | dim | probes | full result (s) | bare matmul (s) | ratio | peak RSS (MB) | rank-1 |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['n']:,} | {r['d']} | {r['kind']} | {r['seconds']:.1f} | {r['gemm_seconds']:.1f} | "
              f"{r['seconds'] / r['gemm_seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['rank1']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
