"""Speed of the MobileFaceNet family relative to plain MobileFaceNet, measured in the same run.

Training step = forward + AM-Softmax head + cross-entropy + backward + SGD step (momentum 0.9, the paper's
weight-decay groups), batch 32, 112x112. Inference = eval(), no_grad, batch 32, images/s. Each figure is the
median of ``--repeats`` timed repetitions after warm-up; variants are interleaved round by round so machine
load affects them alike, and each timed call follows an untimed one of the same model: the first call after
another model has run pays for the caches and the allocator refilled (measured: a plain training step of
2.0 s took 2.8 s right after a DRConv step), which would inflate the cheaper model's time most. ``--blocks``
adds a per-bottleneck table (forward+backward of each block alone, the variant's block against the plain block
of the same shape) to show which layers dominate.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/models.py [--blocks]

Targets (issue 3, CPU): drconv_mobilefacenet training step <= 3.5x and inference <= 1.6x plain MobileFaceNet.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facerec.models import create_head, create_model, list_models, param_groups  # noqa: E402

TARGETS = {"drconv_mobilefacenet": (2.5, 1.4)}   # issue 11: train step <= 2.5x, inference <= 1.4x plain
SIZE = (112, 112)     # --input-size
DRCONV_KW: dict = {}  # --generator


def _kw(name: str) -> dict:
    return DRCONV_KW if name == "drconv_mobilefacenet" else {}


def _train_step_fn(model, head, batch, classes):
    opt = torch.optim.SGD(param_groups(model, head), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, *SIZE)
    y = torch.randint(0, classes, (batch,))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(model(x), y), y)
        loss.backward()
        opt.step()
    return step


def _infer_fn(model, batch):
    x = torch.randn(batch, 3, *SIZE)
    model.eval()

    def step():
        with torch.no_grad():
            model(x)
    return step


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_models(names, batch, repeats, warmup, classes):
    torch.manual_seed(0)
    models = {n: create_model(n, input_size=SIZE, **_kw(n)) for n in names}
    heads = {n: create_head("am_softmax", 128, classes) for n in names}
    results = {}
    for mode in ("train", "infer"):
        fns = {n: (_train_step_fn(models[n], heads[n], batch, classes) if mode == "train"
                   else _infer_fn(models[n], batch)) for n in names}
        for n in names:
            for _ in range(warmup):
                fns[n]()
        times = {n: [] for n in names}
        for _ in range(repeats):
            for n in names:
                fns[n]()             # after another model ran: refill caches and the allocator, untimed
                times[n].append(_time(fns[n]))
        for n in names:
            results.setdefault(n, {})[mode] = statistics.median(times[n])
    return results


def bench_blocks(variant, batch, repeats):
    """fwd+bwd of every bottleneck alone: (label, plain seconds, variant seconds)."""
    torch.manual_seed(0)
    plain = create_model("mobilefacenet", input_size=SIZE).train()
    other = create_model(variant, input_size=SIZE, **_kw(variant)).train()
    x = torch.randn(batch, 3, *SIZE)
    with torch.no_grad():
        feat = plain.stem(x)
    rows = []
    for i, (pb, ob) in enumerate(zip([b for s in plain.stages for b in s], [b for s in other.stages for b in s])):
        inp = feat.detach().requires_grad_(True)
        label = (f"block {i + 1}: {pb.expand.in_channels}->{pb.expand.out_channels}->"
                 f"{pb.project.out_channels} @{inp.shape[2]}x{inp.shape[3]} s{pb.stride}")
        timings = []
        for block in (pb, ob):
            def fn(block=block):
                block.zero_grad(set_to_none=True)
                block(inp).sum().backward()
            fn()
            timings.append(statistics.median(_time(fn) for _ in range(repeats)))
        rows.append((label, timings[0], timings[1]))
        with torch.no_grad():
            feat = pb(feat)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=1000, help="AM-Softmax classes in the training step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", default="112x112", help="HxW: 112x112 or 112x96")
    parser.add_argument("--generator", choices=("paper", "basis"), default=None,
                        help="DRConv filter generator (default: the model's, paper)")
    parser.add_argument("--blocks", action="store_true", help="per-bottleneck fwd+bwd table for --block-variant")
    parser.add_argument("--block-variant", default="drconv_mobilefacenet", choices=list_models())
    parser.add_argument("--only-blocks", action="store_true", help="skip the whole-model table")
    parser.add_argument("--layers", action="store_true",
                        help="inference time of each bottleneck 1x1 layer, --block-variant against plain")
    parser.add_argument("--profile", action="store_true",
                        help="top operators (self CPU time) of one --block-variant training step")
    args = parser.parse_args()
    global SIZE, DRCONV_KW
    SIZE = tuple(int(v) for v in args.input_size.lower().split("x"))
    DRCONV_KW = {"generator": args.generator} if args.generator else {}
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {SIZE[0]}x{SIZE[1]}, "
          f"{args.classes} classes, drconv {DRCONV_KW or 'defaults'}, median of {args.repeats}")
    if not (args.only_blocks or args.layers):
        model_table(args)
    if args.blocks or (args.only_blocks and not args.layers):
        print()
        print(f"Per-bottleneck forward+backward, {args.block_variant} block vs plain block (batch {args.batch}):")
        print()
        print("| block | plain (ms) | variant (ms) | ratio |")
        print("|---|---:|---:|---:|")
        for label, a, b in bench_blocks(args.block_variant, args.batch, args.repeats):
            print(f"| {label} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f}x |", flush=True)
    if args.layers:
        print()
        print(f"Inference time per bottleneck 1x1 layer (eval, batch {args.batch}; the block guide is counted "
              f"with the expansion), {args.block_variant} vs plain:")
        print()
        print("| layer | plain (ms) | variant (ms) | ratio |")
        print("|---|---:|---:|---:|")
        rows = layer_forward_times(args.block_variant, args.batch, args.repeats)
        for name, a, b in rows:
            print(f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f}x |")
        a_sum, b_sum = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"| **all 30 layers** | {a_sum * 1e3:.1f} | {b_sum * 1e3:.1f} | {b_sum / a_sum:.2f}x |")
    if args.profile:
        profile_step(args.block_variant, args.batch, args.classes)
    return 0


def layer_forward_times(variant, batch, repeats):
    """Inference time of every bottleneck 1x1 layer (plus the block guides): (name, plain s, variant s)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, *SIZE)
    totals = []
    for name in ("mobilefacenet", variant):
        model = create_model(name, input_size=SIZE, **_kw(name)).eval()
        acc = {}
        starts = {}

        def pre(module, args, key=None):
            starts[key] = time.perf_counter()

        def post(module, args, out, key=None):
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - starts[key]

        for mod_name, module in model.named_modules():
            if mod_name.endswith((".expand", ".project", ".guide")):
                key = mod_name.rsplit(".", 1)[0] + (".expand+guide" if mod_name.endswith(".guide") else
                                                    "." + mod_name.rsplit(".", 1)[1])
                key = key.replace(".expand+guide", ".expand")
                module.register_forward_pre_hook(lambda m, a, key=key: pre(m, a, key))
                module.register_forward_hook(lambda m, a, o, key=key: post(m, a, o, key))
        with torch.no_grad():
            model(x)
            acc.clear()
            for _ in range(repeats):
                model(x)
        totals.append({k: v / repeats for k, v in acc.items()})
    return [(k, totals[0][k], totals[1][k]) for k in totals[0]]


def profile_step(variant, batch, classes):
    """Print the operators that dominate one training step of ``variant`` (after one warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    step = _train_step_fn(create_model(variant, input_size=SIZE, **_kw(variant)),
                          create_head("am_softmax", 128, classes), batch, classes)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print()
    print(f"Top operators of one {variant} training step (self CPU time):")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def model_table(args):
    names = ["mobilefacenet"] + [n for n in args.models if n != "mobilefacenet"]
    res = bench_models(names, args.batch, args.repeats, args.warmup, args.classes)
    base = res["mobilefacenet"]
    print()
    print("| model | train step (s) | train ratio | inference (img/s) | inference time ratio | target |")
    print("|---|---:|---:|---:|---:|---|")
    for n in names:
        r = res[n]
        tr, ir = r["train"] / base["train"], r["infer"] / base["infer"]
        target = "-"
        if n in TARGETS:
            tt, it = TARGETS[n]
            target = (f"train <= {tt}x: {'met' if tr <= tt else 'missed'}; "
                      f"inference <= {it}x: {'met' if ir <= it else 'missed'}")
        print(f"| {n} | {r['train']:.3f} | {tr:.2f}x | {args.batch / r['infer']:.1f} | {ir:.2f}x | {target} |")


if __name__ == "__main__":
    sys.exit(main())
