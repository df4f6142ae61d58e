"""Fixtures of the extraction tests: a folder of random face-sized images and a small seeded model behind a
FeatureExtractor that counts the images it is given."""
import cv2
import numpy as np
import pytest
import torch

from facerec.eval.features import ModelFeatureExtractor


class TinyConvNet(torch.nn.Module):
    """(N, 3, 112, 112) -> (N, 6), the same weights on every construction (seed 0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=4)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.fixture
def write_images():
    """``write_images(root, relative_paths, seed=0)``: random 112x112 RGB images at those paths."""
    def write(root, paths, seed=0):
        rng = np.random.default_rng(seed)
        for p in paths:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / p), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    return write


@pytest.fixture
def counting_extractor():
    """(extractor, calls): a FeatureExtractor over :class:`TinyConvNet`; ``calls`` gets each batch's size."""
    base = ModelFeatureExtractor(TinyConvNet())
    calls = []

    def extract(images):
        calls.append(len(images))
        return base(images)
    return extract, calls
