"""One prepared GPU check of DRConv (Chen et al., CVPR 2021): every path's correctness on the device, layer and model
speed as ratios to the plain network (eager and torch.compile), a CUDA-graph-captured training step, no host sync
in a training step, MegaFace scoring at scale.

Sections, in the order they run (each prints a markdown table, catches its own errors, stops adding rows when its
time is spent; the whole run stays under --time-limit seconds, torch.compile warm-ups included):

0. env: python, torch, CUDA, cuDNN, triton (interpreted or not), the GPU (name, capability, SMs, memory), the
   float32 precision switches and ``facerec.nn.settings``.
1. correctness: a 1x1 DRConv2d (m=8, batch 4, strides 1 and 2) by every path name ``DRConv2d(path=...)`` takes
   (``facerec.nn.paths.PATHS``, "triton" included), both generators: output and every gradient (input, guide conv,
   generator) on the device in float32 and under bf16 autocast against the same layer in float64 on the CPU (path
   "all_regions", the definition), max |error| / max |reference|, pass / fail thresholds.
2. layers: nn.Conv2d-relative time of the "triton" and "structured" paths, both generators, 64->128 @56x56,
   128->128 @14x14, 128->512 @7x7, batch 32: forward and forward+backward, fp32 and bf16 autocast (CUDA events,
   median).
3. models: drconv_mobilefacenet (both generators; "triton" and "structured" paths) / mobilefacenet, batch 128,
   112x112: training step (SGD + AM-Softmax head) and inference, fp32 and bf16 autocast, eager.
4. graph: a training step of drconv_mobilefacenet (and of mobilefacenet) captured whole in a CUDA graph (static
   inputs, warm-up on a side stream), replay time against the eager step.
5. sync: ``torch.cuda.set_sync_debug_mode("error")`` over one eager training step of drconv_mobilefacenet on the
   auto path: PASS, or the error naming the sync.
6. megaface: ``facerec.eval.megaface.evaluate`` with 3,530 probes against 1M random 128-d distractors (100k with
   --quick) beside the bare GEMM.
7. compile: section 3's ratios under ``torch.compile`` (the DRConv model with fullgraph=True, auto path), run last
   because its warm-ups are the least predictable; each compile starts only if the time left allows it.

Without CUDA sections 0 and 1 run on the CPU (float32 and bf16 autocast against float64; "triton" under Triton's
interpreter, TRITON_INTERPRET=1, which the script sets before triton is first imported) and the others say they
need CUDA; --smoke runs the timing sections at tiny sizes on any device, to exercise the script. The tables go to
stdout and to OUT_DIR/gpu_check.md (gpu_check_cpu.md without CUDA), rewritten after every section: OUT_DIR is
--out, else $OUT, else docs/results/gpu.

    python benchmarks/gpu_check.py [--quick] [--out DIR] [--sections correctness,layers] [--time-limit 450]
"""
from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facerec.models import create_head, create_model, param_groups  # noqa: E402
from facerec.nn import DRConv2d, paths, settings  # noqa: E402
from facerec.nn.functional import region_conv2d  # noqa: E402
from facerec.nn.kernels import fused_cpu, triton_region  # noqa: E402

SECTIONS = ("env", "correctness", "layers", "models", "graph", "sync", "megaface", "compile")
CUDA_APIS = ("graph", "sync")                     # need CUDA even with --smoke
# Seconds each section may take at --time-limit 450 (scaled with it); compile takes what is left, up to its cap.
CAPS = {"env": 15, "correctness": 120, "layers": 60, "models": 60, "graph": 30, "sync": 30, "megaface": 45,
        "compile": 240}
CASES = ((16, 32, 7, 1), (32, 16, 14, 2))        # correctness: C, O, size, stride (batch 4, m = 8)
FP32_TOL = (1e-4, 1e-3)                           # max relative error: output, gradients
BF16_TOL = (3e-2, 0.05)                           # output over same-region pixels, share of flipped pixels
LAYER_SHAPES = ((64, 128, 56), (128, 128, 14), (128, 512, 7))
LAYER_PATHS = (("paper", "triton"), ("paper", "structured"), ("basis", "triton"), ("basis", "structured"))
MODELS = (("mobilefacenet", "mobilefacenet", {}),
          ("drconv paper, triton", "drconv_mobilefacenet", {"generator": "paper", "path": "triton"}),
          ("drconv paper, structured", "drconv_mobilefacenet", {"generator": "paper", "path": "structured"}),
          ("drconv basis, triton", "drconv_mobilefacenet", {"generator": "basis", "path": "triton"}),
          ("drconv basis, structured", "drconv_mobilefacenet", {"generator": "basis", "path": "structured"}))
NUM_CLASSES = 1000


class Report:
    """Lines printed to stdout and kept for the markdown file (rewritten whole by ``save``)."""

    def __init__(self, path: Path):
        self.path, self.lines = path, []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, *header: str) -> None:
        self("| " + " | ".join(header) + " |")
        self("|" + "---|" * len(header))

    def row(self, *cells) -> None:
        self("| " + " | ".join(str(c) for c in cells) + " |")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(self.lines) + "\n")
        os.replace(tmp, self.path)


class Clock:
    """A section's deadline."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _err(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:240]}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() over reps (CUDA events on a GPU, the wall clock on a CPU)."""
    for _ in range(warmup):
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


def _amp(device: torch.device, bf16: bool, cache: bool = True):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache)


def _triton_state() -> str:
    """"compiled", "interpreted" or why the Triton kernels cannot run here."""
    if not triton_region.available():
        return "not installed"
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(tl.sum, InterpretedFunction):
        return "interpreted"
    return "compiled" if torch.cuda.is_available() else "imported without TRITON_INTERPRET=1 (no CPU kernels)"


def section_env(rep: Report, device: torch.device, args, clock: Clock) -> None:
    rep.table("item", "value")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    rep.row("command", "`python benchmarks/gpu_check.py " + " ".join(args.argv) + "`")
    rep.row("commit", commit)
    rep.row("python / platform", f"{platform.python_version()} / {platform.machine()}")
    rep.row("torch", f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
    state = _triton_state()
    version = __import__("triton").__version__ if triton_region.available() else "-"
    rep.row("triton", f"{version} ({state})")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rep.row("GPU", f"{props.name}, capability {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
                       f"{props.total_memory / 2**30:.0f} GiB")
    else:
        rep.row("GPU", "none: CUDA sections skipped" + ("" if args.smoke else " (--smoke runs them at tiny sizes)"))
        rep.row("fused CPU kernels", "built" if fused_cpu.built() else "not built")
    rep.row("float32 precision", f"matmul {torch.get_float32_matmul_precision()!r}, cuDNN TF32 "
                                 f"{torch.backends.cudnn.allow_tf32} (timing sections; section 1 runs exact float32)")
    rep.row("CPU threads", torch.get_num_threads())
    rep.row("facerec.nn.settings", ", ".join(f"{k}={settings.get(k)}" for k in settings.NAMES))


def _path_skip(path: str, device: torch.device) -> str | None:
    if path == "fused":
        if device.type != "cpu":
            return "CPU kernels only"
        if not fused_cpu.built():
            return "fused CPU kernels not built here"
    if path == "triton" and _triton_state() not in ("compiled", "interpreted"):
        return f"triton {_triton_state()}"
    return None


def _rel(a, b, where=None) -> float:
    """max |a - b| / max |b| (a None gradient counts as zeros; over the pixels ``where`` (B, H, W) when given)."""
    b = b.detach().double().cpu()
    a = torch.zeros_like(b) if a is None else a.detach().double().cpu()
    diff = (a - b).abs()
    if where is not None:
        diff = diff * where.unsqueeze(1)
    return float(diff.max() / b.abs().max().clamp_min(1e-30))


def _masked(layer: nn.Module) -> dict:
    store: dict = {}
    layer.guide.register_forward_hook(lambda mod, inp, out: store.__setitem__("mask", out.argmax(1).cpu()))
    return store


def _check_layer(rep, device, generator: str, path: str, case) -> bool:
    c, o, size, stride = case
    torch.manual_seed(0)
    ref = DRConv2d(c, o, 1, stride=stride, regions=8, generator=generator, init="spread", path="all_regions")
    ref = ref.double()
    ref_mask = _masked(ref)
    x64 = torch.randn(4, c, size, size, dtype=torch.float64, requires_grad=True)
    y64 = ref(x64)
    gy = torch.randn_like(y64)
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    g64 = torch.autograd.grad(y64, [x64] + list(ref.parameters()), gy)
    cells, ok, resolved = [], True, []
    for bf16 in (False, True):
        layer = DRConv2d(c, o, 1, stride=stride, regions=8, generator=generator, init="spread", path=path)
        layer = layer.to(device)
        layer.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
        mask = _masked(layer)
        x = x64.detach().float().to(device).requires_grad_()
        with _amp(device, bf16):
            if path == "auto":
                resolved.append(paths.select_path(layer.facts, x, x[..., ::stride, ::stride][0, 0].numel()))
            y = layer(x)
        g = torch.autograd.grad(y.float(), [x] + list(layer.parameters()), gy.float().to(device), allow_unused=True)
        agree = mask["mask"] == ref_mask["mask"]
        out_err = _rel(y.float(), y64, agree)
        errs = [_rel(a, b) for a, b in zip(g, g64)]
        worst = max(range(len(errs)), key=errs.__getitem__)
        if bf16:
            flipped = 1.0 - float(agree.float().mean())
            ok = ok and out_err <= BF16_TOL[0] and flipped <= BF16_TOL[1]
            cells += [f"{out_err:.1e}", f"{flipped:.1%}", f"{errs[worst]:.1e}"]
        else:
            same = bool(agree.all())
            good = out_err <= FP32_TOL[0] and errs[worst] <= FP32_TOL[1] and same
            ok = ok and good
            cells += [f"{out_err:.1e}" + ("" if same else " (mask differs)"),
                      f"{errs[worst]:.1e}" + ("" if good else f" ({names[worst]})")]
    shown = path if path != "auto" else "auto -> " + "/".join(dict.fromkeys(resolved))
    rep.row(generator, shown, f"{c}->{o} @{size} s{stride}", *cells, "yes" if ok else "**NO**")
    return ok


def section_correctness(rep: Report, device: torch.device, args, clock: Clock) -> bool | str:
    rep(f"Device {device}; reference: the same layer in float64 on the CPU, path 'all_regions'. Errors are max "
        "|error| / max |reference|. fp32 passes at output <= "
        f"{FP32_TOL[0]:g}, every gradient <= {FP32_TOL[1]:g} and the same mask everywhere. bf16: the guide runs in "
        "bf16 too, so near-tie pixels may take another region than in float64; the output error is over the pixels "
        f"whose region agrees (pass <= {BF16_TOL[0]:g}, flipped <= {BF16_TOL[1]:.0%}); bf16 gradients are shown, "
        "not judged. 'worst' names the parameter when fp32 fails.\n")
    rep.table("generator", "path", "layer", "fp32 out", "fp32 grads (worst)", "bf16 out", "bf16 flipped",
              "bf16 grads (worst)", "pass")
    ok_all = True
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        cases = CASES[1:] if args.quick and device.type == "cpu" else CASES
        for generator in ("paper", "basis"):
            facts = DRConv2d(8, 8, 1, regions=8, generator=generator).facts
            for path in paths.PATHS:
                try:
                    paths.check_path(facts, path)
                except ValueError:
                    continue
                skip = _path_skip(path, device)
                if skip is not None:
                    rep.row(generator, path, "-", *["-"] * 5, f"skipped: {skip}")
                    continue
                for case in cases:
                    if clock.left() < 0:
                        rep("\n(time limit: the remaining rows were skipped)")
                        return "incomplete (time limit)" if ok_all else False
                    try:
                        ok_all = _check_layer(rep, device, generator, path, case) and ok_all
                    except Exception as exc:  # noqa: BLE001 -- one path's failure must not end the run
                        ok_all = False
                        rep.row(generator, path, f"{case[0]}->{case[1]} @{case[2]} s{case[3]}", *["-"] * 5,
                                f"**error** {_err(exc)}")
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
        ok = out_err <= FP32_TOL[0] and grad_err <= FP32_TOL[1]
        ok_all = ok_all and ok
        rep.row("region_conv2d", "3x3, padding 1", "8->8 @9", f"{out_err:.1e}", f"{grad_err:.1e}", "-", "-", "-",
                "yes" if ok else "**NO**")
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]
    return ok_all


def section_layers(rep: Report, device: torch.device, args, clock: Clock) -> None:
    batch, shapes = (2, ((16, 32, 8),)) if args.smoke else (32, LAYER_SHAPES)
    rep(f"Ratio to nn.Conv2d of the same shape (batch {batch}, m=8, 1x1, {args.layout}): forward / forward+backward "
        f"(input gradient included), median of {args.reps} ({'CUDA events' if device.type == 'cuda' else 'wall'}).\n")
    rep.table("layer", "dtype", "conv fwd / f+b ms", *(f"{g} {p}" for g, p in LAYER_PATHS))
    for c, o, size in shapes:
        layers = [nn.Conv2d(c, o, 1, bias=False)]
        for generator, path in LAYER_PATHS:
            layers.append(None if _path_skip(path, device) else DRConv2d(c, o, 1, regions=8, generator=generator,
                                                                         path=path))
        x = torch.randn(batch, c, size, size, device=device).contiguous(memory_format=args.memory_format)
        x.requires_grad_()
        grad = torch.randn(batch, o, size, size, device=device).contiguous(memory_format=args.memory_format)
        for bf16 in (False, True):
            if clock.left() < 0:
                rep("\n(time limit: the remaining rows were skipped)")
                return
            cells = []
            for layer in layers:
                if layer is None:
                    cells.append("n/a")
                    continue
                layer.to(device)

                def fwd(layer=layer):
                    with torch.no_grad(), _amp(device, bf16):
                        layer(x)

                def step(layer=layer):
                    with _amp(device, bf16):
                        y = layer(x)
                    y.backward(grad.to(y.dtype))

                try:
                    cells.append((_time(fwd, device, args.reps), _time(step, device, args.reps)))
                except Exception as exc:  # noqa: BLE001
                    cells.append(f"**error** {_err(exc)}")
            base = cells[0]
            if not isinstance(base, tuple):
                rep.row(f"{c}->{o} @{size}x{size}", "bf16" if bf16 else "fp32", base, *["-"] * len(LAYER_PATHS))
                continue
            text = [f"{base[0]:.3f} / {base[1]:.3f}"] + [
                f"{t[0] / base[0]:.2f} / {t[1] / base[1]:.2f}" if isinstance(t, tuple) else t for t in cells[1:]]
            rep.row(f"{c}->{o} @{size}x{size}", "bf16" if bf16 else "fp32", *text)


class Bench:
    """A backbone with an AM-Softmax head and SGD on one fixed batch: ``train_step`` and ``infer`` closures."""

    def __init__(self, name: str, kw: dict, device: torch.device, args, compiled: bool = False):
        torch.manual_seed(0)
        self.device, self.bf16 = device, False
        self.model = create_model(name, **kw).to(device).to(memory_format=args.memory_format)
        self.net = torch.compile(self.model, fullgraph=True) if compiled else self.model
        self.head = create_head("am_softmax", 128, NUM_CLASSES).to(device)
        self.opt = torch.optim.SGD(param_groups(self.model, self.head), lr=0.01, momentum=0.9)
        self.x = torch.randn(args.batch, 3, 112, 112, device=device).contiguous(memory_format=args.memory_format)
        self.y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)

    def loss(self, cache: bool = True):
        with _amp(self.device, self.bf16, cache):
            logits = self.head(self.net(self.x), self.y)
        return F.cross_entropy(logits.float(), self.y)

    def train_step(self, cache: bool = True, read_loss: bool = False):
        """One SGD step; ``read_loss`` reads the loss back to the host (a sync: the sync check's control)."""
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(cache)
        loss.backward()
        self.opt.step()
        return float(loss) if read_loss else loss

    def infer(self):
        self.model.eval()
        with torch.no_grad(), _amp(self.device, self.bf16):
            return self.net(self.x)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _usable(kw: dict, device: torch.device) -> str | None:
    path = kw.get("path")
    if path is None:
        return None
    if path == "triton" and device.type != "cuda":
        return "the interpreter is too slow for a whole model"
    return _path_skip(path, device)


def section_models(rep: Report, device: torch.device, args, clock: Clock) -> None:
    rep(f"Batch {args.batch}, 112x112, {args.layout}; training step = SGD (momentum 0.9) + AM-Softmax head "
        f"({NUM_CLASSES} classes) + cross-entropy; ratios to mobilefacenet in the same dtype; median of "
        f"{args.model_reps}; eager.\n")
    rep.table("model", "dtype", "train ms", "train ratio", "inference ms", "inference ratio")
    base = {}
    for label, name, kw in MODELS:
        why = _usable(kw, device)
        if why:
            rep.row(label, "-", "-", "-", "-", f"skipped: {why}")
            continue
        bench = None
        for bf16 in (False, True):
            if clock.left() < 0:
                rep("\n(time limit: the remaining rows were skipped)")
                return
            dtype = "bf16" if bf16 else "fp32"
            try:
                bench = bench or Bench(name, kw, device, args)
                bench.bf16 = bf16
                t = _time(bench.train_step, device, args.model_reps), _time(bench.infer, device, args.model_reps)
            except Exception as exc:  # noqa: BLE001
                rep.row(label, dtype, "-", "-", "-", f"**error** {_err(exc)}")
                continue
            base.setdefault(bf16, t)
            b = base[bf16]
            rep.row(label, dtype, f"{t[0]:.1f}", f"{t[0] / b[0]:.2f}x", f"{t[1]:.2f}", f"{t[1] / b[1]:.2f}x")
        del bench
        _free()


def _capture(bench: Bench):
    """The whole training step captured in one CUDA graph (warm-up on a side stream, grads allocated by the capture,
    autocast's weight-cast cache off as graphs need)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            bench.train_step(cache=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    bench.opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = bench.loss(cache=False)
        loss.backward()
        bench.opt.step()
    return graph, loss


def section_graph(rep: Report, device: torch.device, args, clock: Clock) -> None:
    rep(f"One training step (batch {args.batch}, SGD + AM-Softmax head; its label-range check is a device assert on "
        "CUDA) captured whole in a torch.cuda.CUDAGraph and replayed, against the same step run eagerly; median "
        f"of {args.model_reps}. 'loss' is the static loss after the timed replays (finite: the replays ran).\n")
    rep.table("model", "dtype", "eager ms", "graph replay ms", "speed-up", "loss")
    for label, name, kw in (MODELS[0], ("drconv paper, auto", "drconv_mobilefacenet", {"generator": "paper"})):
        for bf16 in (False, True):
            if clock.left() < 0:
                rep("\n(time limit: the remaining rows were skipped)")
                return
            dtype = "bf16" if bf16 else "fp32"
            try:
                bench = Bench(name, kw, device, args)
                bench.bf16 = bf16
                eager = _time(bench.train_step, device, args.model_reps)
                graph, loss = _capture(bench)
                replay = _time(graph.replay, device, args.model_reps)
                rep.row(label, dtype, f"{eager:.1f}", f"{replay:.1f}", f"{eager / replay:.2f}x", f"{loss.item():.4f}")
                bench = graph = loss = None
            except Exception as exc:  # noqa: BLE001
                rep.row(label, dtype, "-", "-", "-", f"**error** {_err(exc)}")
            _free()


def _sync_free(step) -> str:
    """PASS, or the error set_sync_debug_mode("error") raised in step()."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as exc:
        return ("sync: " if "synchroniz" in str(exc) else "**error** ") + _err(exc)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return "PASS"


def section_sync(rep: Report, device: torch.device, args, clock: Clock) -> bool:
    rep("torch.cuda.set_sync_debug_mode('error') over one eager training step (zero_grad, forward, AM-Softmax head, "
        "loss, backward, SGD step) after two warm-up steps. The last row also reads the loss back to the host, a "
        "positive control: it must be caught, or PASS means nothing.\n")
    rep.table("model", "path", "dtype", "host read", "result", "expected")
    rows = (("drconv_mobilefacenet", {"generator": "paper"}, "auto", False, False, "PASS"),
            ("drconv_mobilefacenet", {"generator": "paper"}, "auto", True, False, "PASS"),
            ("drconv_mobilefacenet", {"generator": "basis"}, "auto", False, False, "PASS"),
            ("mobilefacenet", {}, "-", False, False, "PASS"),
            ("drconv_mobilefacenet", {"generator": "paper", "path": "structured"}, "structured", False, False,
             "(information)"),
            ("mobilefacenet", {}, "-", False, True, "caught"))
    ok = True
    for name, kw, path, bf16, read_loss, expected in rows:
        if clock.left() < 0:
            rep("\n(time limit: the remaining rows were skipped)")
            return False
        dtype = "bf16" if bf16 else "fp32"
        head = "loss read back" if read_loss else "-"
        try:
            bench = Bench(name, kw, device, args)
            bench.bf16 = bf16
            for _ in range(2):
                bench.train_step()
            result = _sync_free(partial(bench.train_step, read_loss=read_loss))
            bench = None
        except Exception as exc:  # noqa: BLE001
            result = f"**error** {_err(exc)}"
        if expected == "PASS":
            ok = ok and result == "PASS"
        elif expected == "caught":
            ok = ok and result.startswith("sync:")
        label = name if not kw.get("generator") else f"{name} ({kw['generator']})"
        rep.row(label, path, dtype, head, result, expected)
        _free()
    return ok


def section_megaface(rep: Report, device: torch.device, args, clock: Clock) -> None:
    from facerec.eval.megaface import evaluate

    distractors = args.distractors
    rep(f"3,530 probes (80 identities) x {distractors:,} random unit 128-d distractors, "
        "facerec.eval.megaface.evaluate (rank-1, CMC, ROC) vs the bare GEMM + max of the same size.\n")
    rng = np.random.default_rng(0)
    counts = np.full(80, 3530 // 80)
    counts[: 3530 - counts.sum()] += 1
    ids = [f"id{k}" for k, n in enumerate(counts) for _ in range(n)]
    centres = rng.standard_normal((80, 128)).astype(np.float32)
    probes = np.repeat(centres, counts, axis=0) + 0.6 * rng.standard_normal((3530, 128)).astype(np.float32)
    gallery = rng.standard_normal((distractors, 128), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    block = min(65536, distractors)
    _sync(device)
    t0 = time.perf_counter()
    result = evaluate(probes, ids, gallery, device=device, block_size=block)
    _sync(device)
    seconds = time.perf_counter() - t0
    p = torch.from_numpy(probes).to(device)
    t0 = time.perf_counter()
    for i in range(0, distractors, block):
        (p @ torch.from_numpy(gallery[i:i + block]).to(device).T).max()
    _sync(device)
    gemm = time.perf_counter() - t0
    rep.table("trials", "rank-1", "seconds", "bare GEMM seconds", "ratio")
    rep.row(f"{result['num_trials']:,}", f"{result['rank1']:.4f}", f"{seconds:.2f}", f"{gemm:.2f}",
            f"{seconds / gemm:.1f}x")


def section_compile(rep: Report, device: torch.device, args, clock: Clock) -> None:
    modes = ((True, "train"), (True, "inference"), (False, "train"), (False, "inference"))
    modes = modes[:2] if args.quick else modes
    rep("torch.compile (default mode) of the backbone; the DRConv model with fullgraph=True on the auto path (the "
        "operator facerec::region_conv). Head, loss and SGD step stay eager. 'compile s' is the first call's time "
        f"(the graphs of that mode). Median of {args.model_reps}; ratios to mobilefacenet in the same mode.\n")
    rep.table("mode", "dtype", "plain eager / compiled ms", "drconv eager / compiled ms", "ratio eager",
              "ratio compiled", "compile s (plain / drconv)")
    benches = [(Bench("mobilefacenet", {}, device, args), Bench("mobilefacenet", {}, device, args, compiled=True)),
               (Bench("drconv_mobilefacenet", {}, device, args),
                Bench("drconv_mobilefacenet", {}, device, args, compiled=True))]
    longest, notes = (60.0 if device.type == "cuda" else 5.0), []
    for bf16, mode in modes:
        dtype = "bf16" if bf16 else "fp32"
        times, compile_s = [], []
        for eager, compiled in benches:
            eager.bf16 = compiled.bf16 = bf16
            run = (lambda b: b.train_step) if mode == "train" else (lambda b: b.infer)
            eager_ms = _time(run(eager), device, args.model_reps)
            if clock.left() < 1.5 * longest:
                times.append((eager_ms, None))
                compile_s.append("time limit")
                continue
            try:
                t0 = time.perf_counter()
                run(compiled)()
                _sync(device)
                took = time.perf_counter() - t0
                longest = max(longest, took)
                compile_s.append(f"{took:.0f}")
                times.append((eager_ms, _time(run(compiled), device, args.model_reps)))
            except Exception as exc:  # noqa: BLE001
                times.append((eager_ms, None))
                compile_s.append("error")
                notes.append(f"{mode} {dtype}, {'drconv' if eager is benches[1][0] else 'plain'}: {_err(exc)}")
        (pe, pc), (de, dc) = times
        cells = [f"{pe:.1f} / {pc:.1f}" if pc else f"{pe:.1f} / -", f"{de:.1f} / {dc:.1f}" if dc else f"{de:.1f} / -",
                 f"{de / pe:.2f}x", f"{dc / pc:.2f}x" if pc and dc else "-", " / ".join(compile_s)]
        rep.row(mode, dtype, *cells)
    for note in notes:
        rep(f"\n**error** {note}")
    del benches
    torch._dynamo.reset()
    _free()


RUNNERS = {"env": section_env, "correctness": section_correctness, "layers": section_layers,
           "models": section_models, "graph": section_graph, "sync": section_sync, "megaface": section_megaface,
           "compile": section_compile}
TITLES = {"env": "Environment", "correctness": "Correctness of every path", "layers": "Layers",
          "models": "Models (eager)", "graph": "CUDA-graph training step", "sync": "No host sync in a training step",
          "megaface": "MegaFace scoring at scale", "compile": "Models under torch.compile"}


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions, 100k MegaFace distractors, torch.compile in bf16 only; on a CPU one "
                         "layer shape per path")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes and one repetition, and the timing sections on a CPU too: checks the script")
    ap.add_argument("--out", default=None, help="directory of the markdown file (default: $OUT, else docs/results/gpu)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    ap.add_argument("--time-limit", type=float, default=450.0, help="seconds for the whole run (default 450)")
    ap.add_argument("--channels-last", action="store_true", help="layers and models in channels_last (default NCHW)")
    ap.add_argument("--tf32", action="store_true", help="TF32 float32 matmuls in the timing sections")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    args.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    args.layout = "channels_last" if args.channels_last else "NCHW"
    args.reps = 1 if args.smoke else 5 if args.quick else 20
    args.model_reps = 1 if args.smoke else 3 if args.quick else 10
    args.batch = 2 if args.smoke else 128
    args.distractors = 5000 if args.smoke else 100_000 if args.quick else 1_000_000
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    cuda = torch.cuda.is_available()
    if not cuda and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")    # Triton reads it once, at its first import
    device = torch.device("cuda" if cuda else "cpu")
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "docs" / "results" / "gpu")
    rep = Report(out_dir / ("gpu_check.md" if cuda else "gpu_check_cpu.md"))
    faulthandler.dump_traceback_later(args.time_limit + 120, exit=True)
    start, end = time.perf_counter(), time.perf_counter() + args.time_limit
    scale = args.time_limit / 450.0
    rep(f"# GPU check ({torch.cuda.get_device_name(0) if cuda else 'no CUDA device'})")
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True
    summary, failed = [], False
    for number, key in enumerate(SECTIONS):
        if key not in args.sections:
            continue
        rep(f"\n## {number}. {TITLES[key]}\n")
        t0 = time.perf_counter()
        if key not in ("env", "correctness") and not (cuda or (args.smoke and key not in CUDA_APIS)):
            rep("Needs CUDA: skipped on this machine.")
            summary.append((number, key, "skipped (no CUDA)", 0.0))
            rep.save()
            continue
        later = sum(1 for k in SECTIONS[number + 1:] if k in args.sections)
        budget = min(CAPS[key] * scale, end - t0 - 5 * later)
        if budget <= 0:
            rep("Skipped: the run's time limit is spent.")
            summary.append((number, key, "skipped (time limit)", 0.0))
            rep.save()
            continue
        errors = sum("**error**" in line for line in rep.lines)
        try:
            result = RUNNERS[key](rep, device, args, Clock(budget))
            status = result if isinstance(result, str) else {True: "passed", False: "**FAILED**", None: "done"}[result]
            if result is not False and sum("**error**" in line for line in rep.lines) > errors:
                status, result = "**errors in rows**", False
            failed = failed or result is False
        except Exception as exc:  # noqa: BLE001 -- report and go on with the next section
            traceback.print_exc()
            rep(f"\n**error**: {_err(exc)}")
            status, failed = "**error**", True
            _free()
        summary.append((number, key, status, time.perf_counter() - t0))
        rep(f"\n_{time.perf_counter() - t0:.1f} s_")
        rep.save()
    rep("\n## Summary\n")
    rep.table("section", "status", "seconds")
    for number, key, status, seconds in summary:
        rep.row(f"{number}. {key}", status, f"{seconds:.1f}")
    rep(f"\nTotal {time.perf_counter() - start:.0f} s. Written to {rep.path}.")
    rep.save()
    faulthandler.cancel_dump_traceback_later()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
