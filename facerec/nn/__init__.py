"""facerec.nn: DRConv (Chen et al., CVPR 2021) and its comparator layers; imports torch only.

Public API: DRConv2d, CondConv2d, LocallyConnected2d, create_pointwise_conv, pointwise_factory,
POINTWISE_KINDS, guide_modules, and the maths in ``facerec.nn.functional`` (region_conv2d) and
``facerec.nn.basis_functional`` (basis_mix).
"""
from facerec.nn import functional
from facerec.nn.condconv import CondConv2d
from facerec.nn.drconv import BASIS_PATHS, GENERATORS, DRConv2d, guide_modules
from facerec.nn.generators import BasisFilterGenerator, PaperFilterGenerator
from facerec.nn.guide import GuideConv
from facerec.nn.local_conv import LocallyConnected2d
from facerec.nn.pointwise import POINTWISE_KINDS, PointwiseFactory, create_pointwise_conv, pointwise_factory

__all__ = [
    "BASIS_PATHS",
    "GENERATORS",
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
    "pointwise_factory",
]
