"""facerec.models: the MobileFaceNet family of the DRConv paper's Table 2, margin heads, weight-decay groups
and the paper-style complexity counter, and ``load_backbone`` (a trained backbone for inference). Builds on
``facerec.nn`` (the pointwise convolution kinds) and ``facerec.config`` (the stored model section).
"""
from .complexity import Complexity, count_complexity
from .heads import AMSoftmax, ArcFace, CosFace, MarginHead, create_head, list_heads
from .loading import build_backbone, load_backbone, read_backbone_state
from .mobilefacenet import INPUT_SIZES, MOBILEFACENET_SETTINGS, Bottleneck, MobileFaceNet
from .registry import PAPER_TABLE2_MADDS, create_model, list_models
from .weight_decay import param_groups

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
    "build_backbone",
    "load_backbone",
    "param_groups",
    "read_backbone_state",
]
