"""facerec: face recognition with DRConv (Chen et al., "Dynamic Region-Aware Convolution", CVPR 2021).

Subpackages: ``nn`` (layers), ``models`` (MobileFaceNet family, margin heads), ``data`` (RecordIO,
verification .bin, MegaFace lists, alignment, synthetic faces), ``eval`` (verification, MegaFace),
``train`` (schedule runner), ``viz`` (guided-mask figures). Nothing here parses argv or touches files
at import time.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
