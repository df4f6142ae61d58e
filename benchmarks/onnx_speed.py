"""ONNX inference speed of the DRConv backbone relative to the plain backbone, both in onnxruntime (CPU).

Exports two backbones with ``facerec.models.export.export_onnx`` (default: the shipped
``data/pretrained/drconv_mobilefacenet.pt`` and ``data/pretrained/mobilefacenet.pt``, 112x96), opens each with
onnxruntime's CPU provider (default graph optimisations, ``intra_op_num_threads`` = 1 and 2) and times
``session.run`` on random normalised images at batch 1 and 32. Per thread count and batch the models take turns
within every repetition (interleaved, so machine load hits them alike); each figure is the median over
``--repeats`` repetitions of the mean of ``--runs`` calls, after warm-up. The table gives the ratio of medians,
DRConv / plain, measured in the same run. ``--extra FILE`` times further ONNX files of the same input against the
same plain baseline (e.g. an older export). ``--profile`` adds onnxruntime's per-operator profile of every file.
``--weights-read`` adds each file's weight bytes (initializers) and the time one thread takes to read the largest
once (numpy sum over a float32 array of that size, after evicting the caches; median of 15): the memory floor of
any batch-1 inference of that file.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/onnx_speed.py

Target (issue: deployment at a DRConv's cost): at most 1.6x the plain model at batch 1 and 32.
"""
import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facerec.models import load_backbone  # noqa: E402
from facerec.models.export import export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_models(files: dict, threads: int, batch: int, size, repeats: int, runs: int, warmup: int) -> dict:
    """{name: median seconds per call} for ONNX ``files`` {name: path}, interleaved per repetition."""
    sessions = {name: _session(path, threads) for name, path in files.items()}
    images = np.random.default_rng(0).uniform(-1, 1, (batch, 3, *size)).astype(np.float32)
    feeds = {name: {s.get_inputs()[0].name: images} for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feeds[name])
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(runs):
                session.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) / runs)
    return {name: statistics.median(t) for name, t in times.items()}


def profile(path: Path, threads: int, batch: int, size, runs: int = 3, top: int = 12) -> str:
    """onnxruntime's profile of ``runs`` calls after two warm-up calls: per operator type, milliseconds per call
    (kernel time) and node count, largest first."""
    import json
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name:
                np.random.default_rng(0).uniform(-1, 1, (batch, 3, *size)).astype(np.float32)}
        for _ in range(2 + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    time_by_op, nodes = {}, {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[2]:
            op = e["args"]["op_name"]
            time_by_op[op] = time_by_op.get(op, 0) + e["dur"] / runs / 1e3
            nodes[op] = nodes.get(op, 0) + 1 / runs
    lines = [f"{op}: {ms:.1f} ms ({round(nodes[op])} nodes)"
             for op, ms in sorted(time_by_op.items(), key=lambda kv: -kv[1])[:top]]
    return f"{path.name}, {threads} thread(s), batch {batch}, kernel time per call: " + "; ".join(lines)


def weights_read(files: dict, evict_mb: int = 256, repeats: int = 15) -> str:
    """Initializer megabytes per ONNX file, and the median time one thread takes to read the largest once (a sum
    over ``evict_mb`` MB before each read pushes it out of the caches)."""
    import onnx
    from onnx import numpy_helper

    sizes = {name: sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
             for name, path in files.items()}
    data = np.random.default_rng(0).random(max(sizes.values()) // 4, dtype=np.float32)
    evict = np.ones(evict_mb * 2 ** 18, dtype=np.float32)
    reads = []
    for _ in range(repeats):
        evict.sum()
        start = time.perf_counter()
        data.sum()
        reads.append(time.perf_counter() - start)
    per_file = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes.items())
    return (f"weights: {per_file}; one read of {max(sizes.values()) / 1e6:.1f} MB at 1 thread: "
            f"{statistics.median(reads) * 1e3:.2f} ms (numpy, median of {repeats})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drconv", default=str(ROOT / "data/pretrained/drconv_mobilefacenet.pt"),
                        help="DRConv backbone checkpoint")
    parser.add_argument("--plain", default=str(ROOT / "data/pretrained/mobilefacenet.pt"),
                        help="plain backbone checkpoint (the baseline)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="FILE", help="further ONNX files to time")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repetitions (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out-dir", default=None, help="where the exports go (default: a temporary folder)")
    parser.add_argument("--profile", action="store_true",
                        help="also print onnxruntime's per-operator profile of each file at 1 thread, every batch")
    parser.add_argument("--weights-read", action="store_true",
                        help="also print each file's weight bytes and the time to read the largest once (1 thread)")
    args = parser.parse_args()
    try:
        import onnxruntime
    except ImportError:
        print('needs onnxruntime: pip install "facerec[export]"', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out_dir or tmp)
        models = {"plain": load_backbone(args.plain), "drconv": load_backbone(args.drconv)}
        sizes = {tuple(m.input_size) for m in models.values()}
        if len(sizes) != 1:
            print(f"the two backbones take different input sizes: {sorted(sizes)}", file=sys.stderr)
            return 2
        size = sizes.pop()
        files = {}
        for name, model in models.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                files[name] = export_onnx(model, out_dir / f"{name}.onnx")
            print(f"{name}: {files[name].name} exported in {time.perf_counter() - start:.1f} s "
                  f"({files[name].stat().st_size / 1e6:.1f} MB)")
        files.update({Path(f).name: Path(f) for f in args.extra})
        print(f"onnxruntime {onnxruntime.__version__}, {size[0]}x{size[1]}, median of {args.repeats} interleaved "
              f"repetitions")
        print()
        others = [n for n in files if n != "plain"]
        print("| threads | batch | plain (ms) | " + " | ".join(f"{n} (ms) | {n} / plain" for n in others) + " |")
        print("|---:|---:|---:|" + "---:|---:|" * len(others))
        for threads in args.threads:
            for batch in args.batches:
                runs = max(1, 16 // batch)
                t = time_models(files, threads, batch, size, args.repeats, runs, args.warmup)
                cells = " | ".join(f"{t[n] * 1e3:.1f} | {t[n] / t['plain']:.2f}x" for n in others)
                print(f"| {threads} | {batch} | {t['plain'] * 1e3:.1f} | {cells} |", flush=True)
        if args.weights_read:
            print()
            print(weights_read(files))
        if args.profile:
            for batch in args.batches:
                for name, path in files.items():
                    print()
                    print(profile(path, 1, batch, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
