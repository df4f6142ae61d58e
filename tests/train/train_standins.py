"""Tiny stand-ins for the training tests: a 16x16 backbone, an in-memory face-like dataset, a pair set.

``install(target)`` replaces the data/model builders of ``facerec.train.builders`` (on a pytest
``monkeypatch`` or, in torchrun worker scripts, directly on the module) so a run takes seconds.
The real head (AM-Softmax), weight-decay groups, loop, checkpoints and verification are used as is.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from facerec.config import Config, config_from_dict
from facerec.data.transforms import normalize_image

SIZE = 16
NUM_CLASSES = 6
PER_CLASS = 8


class TinyBackbone(nn.Module):
    """(N, 3, 16, 16) -> (N, D); BN and PReLU so buffers and no-decay groups are exercised."""

    late_module_names = ("embedding",)

    def __init__(self, input_size=(SIZE, SIZE), embedding_size: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding = nn.Sequential(nn.Linear(16, embedding_size, bias=False),
                                       nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))


def _prototypes(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(NUM_CLASSES, SIZE, SIZE, 3)).astype(np.float32)


def _noisy(proto: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(proto + rng.normal(0, 40, proto.shape), 0, 255).astype(np.uint8)


class TinyDataset(torch.utils.data.Dataset):
    """NUM_CLASSES * PER_CLASS noisy copies of random prototypes; random flips from torch's RNG."""

    def __init__(self, nan_from: int | None = None) -> None:
        rng = np.random.default_rng(1)
        protos = _prototypes()
        self.images = [_noisy(protos[c], rng) for c in range(NUM_CLASSES) for _ in range(PER_CLASS)]
        self.labels = [c for c in range(NUM_CLASSES) for _ in range(PER_CLASS)]
        self.num_classes = NUM_CLASSES
        self.nan_from = nan_from
        self.calls = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = normalize_image(self.images[i])
        if torch.rand(()).item() < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


class NanDataset(TinyDataset):
    """Every image is NaN: the first loss is NaN."""

    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        return x * float("nan"), y


def tiny_pairs(num_pairs: int = 20):
    """(images uint8 (2P, 16, 16, 3), issame (P,)) from the training prototypes."""
    rng = np.random.default_rng(2)
    protos = _prototypes()
    images, issame = [], []
    for p in range(num_pairs):
        a = p % NUM_CLASSES
        same = p % 2 == 0
        b = a if same else (a + 1 + p // 2) % NUM_CLASSES
        if b == a and not same:
            b = (a + 1) % NUM_CLASSES
        images += [_noisy(protos[a], rng), _noisy(protos[b], rng)]
        issame.append(same)
    return np.stack(images), np.asarray(issame)


def tiny_config(out_dir, **sections) -> Config:
    """A valid config for the stand-ins: 16x16, global batch 8, 6 steps, checkpoint every 2."""
    data = {
        "name": "tiny",
        "model": {"name": "tiny", "input_size": [SIZE, SIZE], "embedding_size": 8},
        "data": {"path": str(out_dir), "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 0.05},
        "schedule": {"total_steps": 6, "milestones": [4]},
        "train": {"out_dir": str(out_dir), "log_every": 2, "tensorboard": False},
        "eval": {"sets": ["tiny.bin"], "every": 3, "batch_size": 16, "nfolds": 2},
        "checkpoint": {"every": 2, "keep": 2},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def install(target, module=None, dataset_cls=TinyDataset) -> None:
    """Patch facerec.train.builders: ``target`` is a pytest monkeypatch, or None to set attributes."""
    from facerec.train import builders

    module = module or builders
    replacements = {
        "build_backbone": lambda cfg: TinyBackbone(cfg.input_size, cfg.embedding_size),
        "build_train_dataset": lambda cfg: dataset_cls(),
        "load_eval_sets": lambda cfg: [("tiny", *tiny_pairs())] if cfg.eval.sets else [],
        "prepare_data": lambda cfg: None,
    }
    for name, fn in replacements.items():
        if target is None:
            setattr(module, name, fn)
        else:
            target.setattr(module, name, fn)
