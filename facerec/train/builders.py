"""Config -> objects: backbone, margin head, SGD with the weight-decay groups, datasets, .bin sets.

The one place where the training runner turns config sections into library objects
(``facerec.models.create_model`` / ``create_head`` / ``param_groups``, ``facerec.data``), so that
``load_backbone`` and ``train`` build exactly the same network from a stored config (``build_backbone`` is
``facerec.models.build_backbone``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facerec.config import Config, DataConfig, HeadConfig, OptimConfig
from facerec.models.loading import build_backbone  # re-exported: load_backbone builds with the same call

__all__ = [
    "build_backbone", "build_head", "build_optimizer", "build_train_dataset", "load_eval_sets",
    "prepare_data", "resolve_data_path",
]

log = logging.getLogger(__name__)


def build_head(cfg: HeadConfig, embedding_size: int, num_classes: int) -> nn.Module:
    """Margin head: ``forward(embeddings (N, D), labels (N,)) -> logits (N, num_classes)`` in fp32."""
    from facerec.models import create_head

    return create_head(cfg.name, embedding_size, num_classes, **cfg.options)


def build_optimizer(cfg: OptimConfig, backbone: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    """SGD over ``facerec.models.param_groups`` (4e-5 general, 4e-4 after the GDConv and classifier)."""
    from facerec.models import param_groups

    groups = param_groups(backbone, head, wd=cfg.weight_decay, wd_late=cfg.weight_decay_last,
                          region_factor=cfg.weight_decay_region_factor)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def resolve_data_path(cfg: DataConfig, name: str) -> Path:
    """``name`` if absolute, else ``data.path / name``."""
    path = Path(name)
    return path if path.is_absolute() else Path(cfg.path) / path


def prepare_data(cfg: Config) -> None:
    """Generate the synthetic set into ``data.path`` on first use (call on one rank)."""
    if cfg.data.synthetic:
        from facerec.data.synthetic import ensure_synthetic

        ensure_synthetic(cfg.data.path, **cfg.data.synthetic_options)


def build_train_dataset(cfg: Config) -> torch.utils.data.Dataset:
    """``RecordDataset(data.path/train.rec, train=True)``; has ``num_classes``."""
    from facerec.data import RecordDataset

    return RecordDataset(resolve_data_path(cfg.data, "train.rec"), train=True,
                         input_size=tuple(cfg.model.input_size), skip_corrupt=cfg.data.skip_corrupt)


def load_eval_sets(cfg: Config) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The configured .bin pair sets as ``(name, images uint8 (2P, H, W, 3) RGB, issame (P,))``."""
    from facerec.data.verification import read_bin

    sets = []
    for name in cfg.eval.sets:
        path = resolve_data_path(cfg.data, name)
        images, issame = read_bin(path)
        sets.append((path.stem, images, np.asarray(issame, dtype=bool)))
        log.info("verification set %s: %d pairs from %s", path.stem, len(issame), path)
    return sets
