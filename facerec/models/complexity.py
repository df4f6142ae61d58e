"""Parameters and paper-style multiply-adds (MADDs) per layer and per stage, and the complexity CLI.

Counting rules (as MobileFaceNet and the DRConv paper report MADDs; BN, PReLU, pooling, additions of the
shortcut and the argmax are not counted):

* ``nn.Conv2d``: out_channels * in_channels / groups * kh * kw per output pixel.
* ``nn.Linear``: in_features * out_features per output row.
* DRConv (``facerec.nn.DRConv2d``): its guide conv and the layers of its filter generator are ordinary
  ``nn.Conv2d`` / ``nn.Linear`` children and are counted by the rules above (so a generator with hidden
  width h costs C*h + h*C*O per sample); the region convolution counts one filter per output pixel
  (C*O*kh*kw per pixel, as a standard conv); a "basis" generator's mix of r shared kernels into m filters
  adds m*r*C*O*kh*kw per sample.
* CondConv: routing layers by the rules above; mixing the E experts E*C*O*kh*kw per sample; then the conv.
* Local convolution: C*O*kh*kw per output pixel (its weights are unshared, the arithmetic is a conv's).

CLI::

    facerec-complexity --model drconv_mobilefacenet --input-size 112 96 [--json]

prints the per-stage table of the model and Table 2 of the DRConv paper with our figure beside the paper's;
with ``--json`` one JSON object with ``params`` and ``madds`` (plain integers), ``paper_madds`` and the stages.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from facerec._quote import quote
from .registry import PAPER_TABLE2_MADDS

__all__ = ["LayerCost", "Complexity", "count_complexity", "stage_of", "format_stage_table",
           "format_table2"]


@dataclass
class LayerCost:
    """One module's own parameters (not its children's) and MADDs for one sample."""

    name: str
    kind: str
    params: int
    madds: int
    output_shape: Tuple[int, ...] = ()


@dataclass
class Complexity:
    """Per-layer costs of a model for one input of ``input_size``; totals as properties."""

    input_size: Tuple[int, int]
    layers: List[LayerCost] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def madds(self) -> int:
        return sum(layer.madds for layer in self.layers)

    def stages(self) -> List[Dict[str, object]]:
        """Costs grouped by ``stage_of`` in network order: dicts with name, output, params, madds."""
        order: List[str] = []
        rows: Dict[str, Dict[str, object]] = {}
        for layer in self.layers:
            stage = stage_of(layer.name)
            if stage not in rows:
                order.append(stage)
                rows[stage] = {"name": stage, "output": "", "params": 0, "madds": 0}
            row = rows[stage]
            row["params"] = int(row["params"]) + layer.params
            row["madds"] = int(row["madds"]) + layer.madds
            if layer.output_shape and len(layer.output_shape) >= 2 and layer.kind.startswith(
                    ("Conv2d", "BatchNorm", "PReLU")):
                row["output"] = "x".join(str(v) for v in layer.output_shape[1:])
        return [rows[s] for s in order]


_STAGE_LABELS = {
    "stem.0": "conv3x3 s2",
    "stem.1": "depthwise conv3x3",
    "conv_sep": "conv1x1 512",
    "gdconv": "linear GDConv",
    "embedding": "linear conv1x1 + BN",
}


def stage_of(name: str) -> str:
    """Stage label of a qualified module name of ``MobileFaceNet`` (other models: the top-level child)."""
    parts = name.split(".")
    if parts[0] == "stages" and len(parts) > 1 and parts[1].isdigit():
        from .mobilefacenet import MOBILEFACENET_SETTINGS
        t, c, n, s = MOBILEFACENET_SETTINGS[int(parts[1])]
        return f"bottlenecks {int(parts[1]) + 1} (t={t}, c={c}, n={n}, s={s})"
    for prefix, label in _STAGE_LABELS.items():
        if name == prefix or name.startswith(prefix + "."):
            return label
    return parts[0] or "(root)"


def _kernel_numel(module: nn.Module) -> int:
    ks = getattr(module, "kernel_size", 1)
    if isinstance(ks, int):
        return ks * ks
    total = 1
    for v in ks:
        total *= int(v)
    return total


def _special_madds(module: nn.Module, output: torch.Tensor) -> Optional[int]:
    """MADDs of the facerec.nn layers' own arithmetic (children are counted by their own hooks)."""
    cls = type(module).__name__
    if cls not in ("DRConv2d", "CondConv2d", "LocallyConnected2d"):
        return None
    cin, cout = int(module.in_channels), int(module.out_channels)
    k2 = _kernel_numel(module)
    pixels = int(output.shape[-1] * output.shape[-2])
    conv = cin * cout * k2 * pixels
    if cls == "DRConv2d":
        extra = 0
        if getattr(module, "generator", None) == "basis":
            bases = int(module.filter_generator.num_bases)
            extra = int(module.regions) * bases * cin * cout * k2
        return conv + extra
    if cls == "CondConv2d":
        return conv + int(module.experts) * cin * cout * k2
    return conv


def count_complexity(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> Complexity:
    """Run one (1, 3, H, W) zero input through ``model`` in eval mode with hooks and count every layer.

    ``input_size`` defaults to ``model.input_size``. The model's train/eval mode is restored afterwards.
    """
    size = tuple(int(v) for v in (input_size if input_size is not None else model.input_size))
    if len(size) != 2:
        raise ValueError(f"input_size must be (H, W), got {quote(input_size)}")
    result = Complexity(input_size=size)  # type: ignore[arg-type]
    seen: Dict[int, LayerCost] = {}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inputs, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            madds = _special_madds(module, out)
            if madds is None:
                per_sample = out.numel() // max(1, out.shape[0])
                if isinstance(module, nn.Conv2d):
                    madds = per_sample * (module.in_channels // module.groups) * _kernel_numel(module)
                elif isinstance(module, nn.Linear):
                    madds = per_sample * module.in_features
                else:
                    madds = 0
            cost = seen.get(id(module))
            if cost is None or id(module) in no_madds:
                return
            cost.madds += int(madds)
            cost.output_shape = tuple(out.shape)
        return fn

    # paper-style: a basis generator's kernels are counted as mixed into m filters (in _special_madds), not
    # as the dense r*O-output conv the layer may run instead
    no_madds = {id(m.filter_generator.basis) for m in model.modules()
                if type(m).__name__ == "DRConv2d" and getattr(m, "generator", None) == "basis"}
    for name, module in model.named_modules():
        params = sum(p.numel() for p in module.parameters(recurse=False))
        leaf_like = params > 0 or isinstance(module, (nn.Conv2d, nn.Linear)) or type(module).__name__ in (
            "DRConv2d", "CondConv2d", "LocallyConnected2d")
        if not leaf_like:
            continue
        cost = LayerCost(name=name, kind=type(module).__name__, params=int(params), madds=0)
        seen[id(module)] = cost
        result.layers.append(cost)
        handles.append(module.register_forward_hook(hook(name)))
    # paper-style: a paper generator makes its m filters per sample (counted through its children's hooks),
    # whatever execution path the layer would pick (the structured path never materialises them)
    paths = [(m, m.path) for m in model.modules()
             if type(m).__name__ == "DRConv2d" and m.generator == "paper" and m.path != "gather"]
    was_training = model.training
    model.eval()
    try:
        for module, _ in paths:
            module.path = "gather"
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, 3, *size, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
        for module, path in paths:
            module.path = path
        model.train(was_training)
    return result


def _m(value: float) -> str:
    return f"{value / 1e6:.2f}"


def format_stage_table(model_name: str, cost: Complexity) -> str:
    """Markdown table: one row per stage (output, params, MADDs) and the total."""
    h, w = cost.input_size
    lines = [f"{model_name} at {h}x{w}", "",
             "| stage | output (C x H x W) | params (M) | MADDs (M) |", "|---|---|---:|---:|"]
    for row in cost.stages():
        lines.append(f"| {row['name']} | {row['output']} | {_m(row['params'])} | {_m(row['madds'])} |")
    lines.append(f"| **total** | | **{_m(cost.params)}** | **{_m(cost.madds)}** |")
    return "\n".join(lines)


def format_table2(rows: List[Tuple[str, Complexity]]) -> str:
    """Markdown table: our params and MADDs beside the DRConv paper's Table 2 MADDs column."""
    lines = ["| model | input | params (M) | MADDs (M), ours | MADDs (M), paper Table 2 | ours / paper |",
             "|---|---|---:|---:|---:|---:|"]
    for name, cost in rows:
        paper = PAPER_TABLE2_MADDS.get(name)
        ratio = f"{cost.madds / (paper * 1e6):.3f}" if paper else "-"
        paper_s = f"{paper:.0f}" if paper else "-"
        h, w = cost.input_size
        lines.append(f"| {name} | {h}x{w} | {_m(cost.params)} | {_m(cost.madds)} | {paper_s} | {ratio} |")
    return "\n".join(lines)
