"""facerec.eval: evaluation that sees a model only through a FeatureExtractor (uint8 batch -> (N, D) floats).

``features`` (the FeatureExtractor contract, batched flip-sum extraction, sharded over torchrun ranks),
``megaface`` (MegaFace Challenge 1 identification and verification with the refined lists,
as the official devkit scores it, docs/megaface.md), ``verification`` (the 10-fold pair protocol).
Submodules are imported on use; this package imports nothing heavy.
"""

__all__ = ["features", "megaface", "verification"]
