"""facerec.nn: DRConv (Chen et al., CVPR 2021) and its comparator layers; imports torch only.

Public API: DRConv2d, CondConv2d, LocallyConnected2d, create_pointwise_conv, pointwise_factory,
POINTWISE_KINDS, guide_modules, PATHS; the maths in ``facerec.nn.functional`` (region_conv2d) and
``facerec.nn.basis_functional`` (basis_mix); the operator ``facerec.nn.ops.region_conv``; the path choice
``facerec.nn.paths.select_path``; the runtime switches ``facerec.nn.settings``.
"""
from facerec.nn import functional, ops, paths, settings
from facerec.nn.condconv import CondConv2d
from facerec.nn.drconv import GENERATORS, PATHS, DRConv2d, guide_modules
from facerec.nn.generators import BasisFilterGenerator, PaperFilterGenerator
from facerec.nn.guide import GuideConv
from facerec.nn.local_conv import LocallyConnected2d
from facerec.nn.pointwise import POINTWISE_KINDS, PointwiseFactory, create_pointwise_conv, pointwise_factory

__all__ = [
    "GENERATORS",
    "PATHS",
    "POINTWISE_KINDS",
    "BasisFilterGenerator",
    "CondConv2d",
    "DRConv2d",
    "GuideConv",
    "LocallyConnected2d",
    "PaperFilterGenerator",
    "PointwiseFactory",
    "create_pointwise_conv",
    "functional",
    "guide_modules",
    "ops",
    "paths",
    "pointwise_factory",
    "settings",
]
