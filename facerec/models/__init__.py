"""facerec.models: the MobileFaceNet family of the DRConv paper's Table 2, margin heads, weight-decay groups
and the paper-style complexity counter. Builds on ``facerec.nn`` (the pointwise convolution kinds).
"""
from .heads import AMSoftmax, ArcFace, CosFace, MarginHead, create_head, list_heads
from .mobilefacenet import INPUT_SIZES, MOBILEFACENET_SETTINGS, Bottleneck, MobileFaceNet
from .registry import PAPER_TABLE2_MADDS, create_model, list_models
from .weight_decay import param_groups

_LAZY = {"Complexity", "count_complexity"}


def __getattr__(name: str):
    # complexity.py is also a CLI (python -m facerec.models.complexity): importing it lazily keeps runpy from
    # finding it already imported
    if name in _LAZY:
        from . import complexity

        return getattr(complexity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AMSoftmax",
    "ArcFace",
    "Bottleneck",
    "Complexity",
    "CosFace",
    "INPUT_SIZES",
    "MOBILEFACENET_SETTINGS",
    "MarginHead",
    "MobileFaceNet",
    "PAPER_TABLE2_MADDS",
    "count_complexity",
    "create_head",
    "create_model",
    "list_heads",
    "list_models",
    "param_groups",
]
