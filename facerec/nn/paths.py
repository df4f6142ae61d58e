"""How DRConv runs: the path names and the one choice among them, ``select_path``, with every threshold and the
measurement behind it (DRConv, Chen et al., CVPR 2021: every path computes Eq.3-5 forward, exact hard-mask
gradients for the input and the filters, Eq.7-8 for the guide).

Paths (``PATHS``; ``DRConv2d(path=...)`` takes any of them, "auto" asks ``select_path``):

* "fused": the fused C++ kernels (``facerec.nn.kernels.fused_cpu``), forward and backward; CPU float32, 1x1.
* "triton": the Triton kernels (``facerec.nn.kernels.triton_region``); CUDA, 1x1.
* "structured": region GEMMs against the generator's static kernels, no per-sample filters
  (``facerec.nn.structured``); 1x1.
* "dense_mix": basis generator only: one conv with all r*O basis outputs, then a per-pixel mix
  (``facerec.nn.basis_functional.basis_mix``); any kernel size.
* "dense_pointwise": basis generator only: the input scaled per pixel, one 1x1 conv with r*C inputs
  (``basis_pointwise``); 1x1.
* "gather": the m filters materialised per sample, pixels grouped by (sample, region), one GEMM per group
  (``facerec.nn.functional.region_conv2d``; the groups' plan: ``group_plan``); any kernel size.
* "all_regions": all m region outputs with plain tensor ops, then a one-hot select
  (``facerec.nn.functional.all_regions_conv2d``, the form ONNX export computes); m conv units, any kernel size.

1x1 layers (no padding) run "fused", "triton", "structured", "gather" and the dense forms through the operator
``facerec::region_conv`` (``facerec.nn.ops``) whenever it is needed (fused, triton; and every path under
``torch.compile`` / ``torch.export``). Costs and measurements: docs/drconv-speed.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from facerec.nn import _onednn, settings
from facerec.nn._grouped import grouped_mm_ok
from facerec.nn.kernels import fused_cpu, triton_region

__all__ = ["PATHS", "POINTWISE_PATHS", "BASIS_PATHS", "LayerFacts", "check_path", "filter_grads_in_kernel",
           "group_plan", "select_path", "stacked_eq7", "use_onednn_gemm"]

PATHS = ("auto", "fused", "triton", "structured", "dense_mix", "dense_pointwise", "gather", "all_regions")
POINTWISE_PATHS = ("fused", "triton", "structured", "dense_pointwise")     # 1x1 kernels without padding only
BASIS_PATHS = ("dense_mix", "dense_pointwise")                             # the basis generator only

# --- the layer's path ---------------------------------------------------------------------------------------
# The fused thresholds below were measured with the AVX-512 build of the fused kernels. The AVX2 build keeps the
# order at the sizes measured (docs/results/speed/avx2/layer_t1*.md, 2026-12-03, AVX2-only EPYC, batch 32, m = 8,
# 1 thread CPU time, fwd / fwd+bwd ratio to a conv; fused against the best unfused path): paper 64->128 @56x56
# 1.86 / 4.60 vs gathered 2.90 / 5.66, 128->128 @14x14 1.88 / 5.10 vs structured 3.69 / 7.11, 128->512 @7x7
# 2.12 / 6.02 vs structured 3.77 / 8.20; basis @56x56 fused 1.86 / 4.48 vs gathered 2.77 / 5.71, @7x7 dense as on
# AVX-512 (4.32 / 4.37).
# The paper generator (not fused) takes the structured form up to this many output pixels per sample and the
# gathered form above. Measured with benchmarks/drconv_layer.py (m=8, batch 32, 1 thread CPU time, fwd / fwd+bwd
# ratio to a conv): 7x7 128->512 structured 2.75 / 6.13 vs gathered 9.58 / 13.08; 14x14 128->128 2.82 / 7.26 vs
# 4.35 / 7.87; 28x28 128->64 4.14 / 8.31 vs 3.93 / 7.91; 56x56 64->128 3.31 / 6.05 vs 2.65 / 4.86. At 28x28 and
# above the per-sample filters are small next to the activations and the gathered form does 1 conv of MACs, not 2.
STRUCTURED_MAX_PIXELS = 14 * 14
# The basis generator (not fused) takes a dense form (cost ~ r convs) up to this many output pixels per sample,
# or, when gradients are recorded, when r <= 3/4 m at any size; otherwise the
# gathered form (~ m + 2 conv units, with gather/scatter and per-group GEMM overheads). Measured with
# benchmarks/drconv_layer.py (m=8, CPU): at 56x56 gathered beats dense for r=8 (6.3x vs 8.6x a conv's training
# step) and loses for r=4 (6.3x vs 4.9x), while its forward alone is the faster (3.2x vs 3.6x); at 14x14 and 7x7
# dense wins. The input-side form ("dense_pointwise") when C <= O, the output-side one ("dense_mix") otherwise:
# the narrow side carries the r-fold tensor.
DENSE_BASIS_MAX_PIXELS = 14 * 14
# Fused inference of the basis generator from this many output pixels per (basis, region), i.e. 2*r*m: each
# (sample, region) filter costs r kernel reads to build, and with few pixels per region (7x7) the dense form is
# the faster (measured: 128->512 @7x7 8.4x a conv fused vs 5.0x dense).
FUSED_BASIS_INFERENCE_MIN_PIXELS = 2
# Fused training of the basis generator from this many output pixels per region (64*m: 28x28 and up with m = 8),
# where it beats the gathered / dense paths (layer forward+backward, 2 threads: 64->128 @56x56 4.20x a conv vs
# 5.38x, 128->64 @28x28 4.68x vs 6.47x; at 14x14 and 7x7 mixed or worse: 128->256 @14x14 6.19x vs 5.38x, 128->512
# @7x7 7.21x vs 4.15x). The paper generator trains fused at every size.
FUSED_BASIS_TRAINING_MIN_PIXELS_PER_REGION = 64

# --- choices inside a path --------------------------------------------------------------------------------------
# Fused backward: each (sample, region)'s filter gradient (O x C) in one GEMM inside the kernel when a region has at
# least this many pixels per sample on average (28x28 and up with m = 8); with fewer, forming and folding B*m such
# matrices costs more than their GEMMs, and the gradients come per region over the whole batch. Measured (layer
# forward+backward, batch 32, m = 8, 2 threads, ratio to a conv; in the kernel / per region): 64->128 @56x56 3.02x
# / 5.16x, 64->128 @28x28 3.44x / 4.81x, 128->64 @28x28 4.18x / 5.28x; 128->128 @14x14 5.07x / 4.91x, 128->256
# @14x14 5.08x / 4.98x, 256->128 @14x14 5.16x / 5.01x; 128->512 @7x7 9.41x / 5.79x, 512->128 @7x7 10.02x / 6.35x.
FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION = 64
# Structured backward: per-sample filters (m conv units for Eq.7) when a sample has more than this many pixels per
# region, else products with the stacked static kernels ((1+t) m units, no per-sample filter at all): at 7x7
# building B*m*O*C values costs more than the extra units.
STACKED_EQ7_MAX_PIXELS_PER_REGION = 8
# A oneDNN call (facerec.nn._onednn) for a GEMM of at least this many multiply-adds: below, its ~40 us fixed cost
# outweighs the faster kernel. Measured (structured forward GEMMs at 7x7, batch 32, 8 region calls of 196 rows, 2
# threads, ratio to a conv's forward): 128 -> 2 x 128 outputs (6.4M MACs per call) 4.3x through _grouped_mm, 4.8x
# through oneDNN; 128 -> 2 x 512 (25.7M MACs per call) 5.1x vs 3.3x.
ONEDNN_MIN_MACS = 8 << 20
# Gather path, the plan of its per-(sample, region) GEMMs (facerec.nn._grouped): "onednn" when oneDNN runs and
# groups hold at least ONEDNN_MIN_MEAN_ROWS rows on average (28x28 and up with m = 8); else "padded" for at least
# PADDED_MIN_GROUPS groups of at most PADDED_MAX_MEAN_ROWS mean rows on more than one thread, or wherever one
# torch._grouped_mm call cannot run (float64, unaligned sizes, CUDA without the bf16 sm90 kernel); else "grouped".
# Measured on this project's 2-core AMD VM (B = 32, m = 8; region_conv2d alone, forward / forward+backward):
# * "onednn", 2 threads, ratio to an NCHW conv: 64->128 @56x56 2.99x ("grouped") -> 1.99x; @28x28 4.55x
#   ("padded") -> 4.17x, 128->64 @28x28 4.24x -> 3.83x; at 14x14 (24 rows per group) the oneDNN layout lost, 7.6x
#   vs 6.1x.
# * 1 thread (CPU time): "grouped" is the faster at every MobileFaceNet shape (7x7 to 56x56): padded costs 5-40%
#   more per training step and 1.2-2.6x in the forward (padding, and a filter-sized weight gather when group sizes
#   vary). With one thread a per-group aten::mm costs only its dispatch.
# * 2 threads (wall clock, default OpenMP wait policy): every per-group GEMM opens an OpenMP parallel region, and
#   with the cores oversubscribed some of the 256 barriers per pass stall: single passes of "grouped" took 1.4-6 s
#   (128->512 @14x14 forward: 6056 ms vs 43 ms padded; 64->128 @28x28 training step: 4144 ms vs 472 ms).
# * Few groups (< 64) or large ones (56x56: ~392 rows each): per-call costs are amortised and _grouped_mm does the
#   exact MACs (padding may double them), so "grouped".
ONEDNN_MIN_MEAN_ROWS = 64
PADDED_MIN_GROUPS = 64
PADDED_MAX_MEAN_ROWS = 128


@dataclass(frozen=True)
class LayerFacts:
    """What the choice needs to know of a layer: generator ("paper" / "basis"), pointwise (1x1 kernel, no
    padding), regions m, bases r (basis generator; 0 otherwise), in and out channels."""
    generator: str
    pointwise: bool
    regions: int
    bases: int
    in_channels: int
    out_channels: int


def check_path(facts: LayerFacts, path: str) -> None:
    """ValueError unless ``path`` is a path name this layer can run."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    valid = [p for p in PATHS if (facts.pointwise or p not in POINTWISE_PATHS)
             and (facts.generator == "basis" or p not in BASIS_PATHS)]
    if path not in valid:
        raise ValueError(f"path {path!r} cannot run this layer (generator={facts.generator!r}, "
                         f"{'1x1' if facts.pointwise else 'not 1x1 or padded'}); valid: {', '.join(valid)}")


# Whether the fused CPU kernels are built and Triton importable, as last found out in eager mode (the first time by
# a build or an import), read from here while compiling: a graph traced before any eager call of a DRConv layer on
# that device runs the composite paths.
_AVAILABLE: dict = {}


def _available(kind: str) -> bool:
    if torch.compiler.is_compiling():
        return _AVAILABLE.get(kind, False)
    _AVAILABLE[kind] = fused_cpu.built() if kind == "fused" else triton_region.available()
    return _AVAILABLE[kind]


def _fused(facts: LayerFacts, x: Tensor, out_pixels: int, grad: bool) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or not settings.use_fused():
        return False
    if not grad:
        return (facts.generator != "basis"
                or out_pixels >= FUSED_BASIS_INFERENCE_MIN_PIXELS * facts.bases * facts.regions)
    if not settings.use_fused_train() or torch.is_autocast_enabled("cpu"):
        return False
    return facts.generator != "basis" or out_pixels >= FUSED_BASIS_TRAINING_MIN_PIXELS_PER_REGION * facts.regions


def _triton(x: Tensor) -> bool:
    if x.device.type != "cuda" or not settings.use_triton():
        return False
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    return dtype in (torch.float32, torch.bfloat16, torch.float16) and _available("triton")


def select_path(facts: LayerFacts, x: Tensor, out_pixels: int, requested: str = "auto", grad: bool | None = None,
                compiling: bool | None = None) -> str:
    """The path a layer runs for input ``x`` (B, C, H, W) with ``out_pixels`` output pixels per sample.

    ``requested``: a path name is returned as it is (``check_path`` validates it); "auto" applies the rules:
    1x1 layers take "fused" (CPU float32, kernels built, ``settings.use_fused``; with gradients also
    ``use_fused_train`` and no autocast; basis generator: from 2*r*m output pixels in inference, 64*m in training)
    or "triton" (CUDA, float32 / bfloat16 / float16, Triton importable, ``settings.use_triton``); otherwise the paper
    generator takes "structured" for 1x1 layers up to 14x14 outputs, else "gather"; the basis generator a dense form
    up to 14x14 outputs or, with gradients, when r <= 3m/4 ("dense_pointwise" for 1x1 layers with C <= O, else
    "dense_mix"), else "gather". While compiling or exporting a layer that is not 1x1 takes "all_regions" where
    the rules say "gather" (the grouped GEMMs size their work on the host, which a graph cannot hold).
    ``grad`` / ``compiling``: default ``torch.is_grad_enabled()`` / ``torch.compiler.is_compiling()``.
    """
    if requested != "auto":
        return requested
    grad = torch.is_grad_enabled() if grad is None else grad
    if facts.pointwise:
        if _fused(facts, x, out_pixels, grad) and _available("fused"):
            return "fused"
        if _triton(x):
            return "triton"
    if facts.generator == "paper":
        if facts.pointwise and out_pixels <= STRUCTURED_MAX_PIXELS:
            return "structured"
    elif out_pixels <= DENSE_BASIS_MAX_PIXELS or (grad and 4 * facts.bases <= 3 * facts.regions):
        return "dense_pointwise" if facts.pointwise and facts.in_channels <= facts.out_channels else "dense_mix"
    compiling = torch.compiler.is_compiling() if compiling is None else compiling
    return "all_regions" if compiling and not facts.pointwise else "gather"


def filter_grads_in_kernel(pixels: int, regions: int) -> bool:
    """Fused backward: kernel and coefficient gradients per (sample, region) inside the kernel (else per region)."""
    return pixels >= FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION * regions


def stacked_eq7(pixels: int, regions: int) -> bool:
    """Structured backward: Eq.7 and dX against the stacked static kernels (else per-sample filters in chunks)."""
    return pixels <= STACKED_EQ7_MAX_PIXELS_PER_REGION * regions


def use_onednn_gemm(t: Tensor, macs: int) -> bool:
    """Whether a GEMM of ``macs`` multiply-adds on tensors like ``t`` goes through oneDNN."""
    return macs >= ONEDNN_MIN_MACS and _onednn.available(t)


def group_plan(num_rows: int, num_groups: int, dtype: torch.dtype, inner: int, outer: int,
               threads: int | None = None, onednn: bool = False, device: torch.device = torch.device("cpu")) -> str:
    """The gather path's GEMM plan for ``num_rows`` rows in ``num_groups`` groups, rows (N, inner) @ (inner, outer)
    weights of ``dtype`` on ``device``: ``settings.group_plan`` when it is not "auto", else the rule above.

    threads: torch's intra-op thread count (default ``torch.get_num_threads()``); onednn: whether oneDNN may run
    the pass (``use_onednn_gemm`` for its multiply-adds).
    """
    forced = settings.group_plan()
    if forced != "auto":
        return forced
    if onednn and num_rows >= ONEDNN_MIN_MEAN_ROWS * num_groups:
        return "onednn"
    if not grouped_mm_ok(device, dtype, inner, outer):
        return "padded"
    if (torch.get_num_threads() if threads is None else threads) <= 1:
        return "grouped"
    many_small = num_groups >= PADDED_MIN_GROUPS and num_rows <= PADDED_MAX_MEAN_ROWS * num_groups
    return "padded" if many_small else "grouped"
