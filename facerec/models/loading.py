"""Inference loading: a trained backbone from a checkpoint, without the trainer.

``load_backbone(path)`` reads a ``ckpt_*.pt`` written by ``facerec.train`` (``torch.load(weights_only=True)``;
only its ``config`` and ``model`` entries are used), rebuilds the network of the stored ``model`` config section
with :func:`build_backbone` (the same call the trainer makes) and loads the weights. It imports
``facerec.config`` and ``facerec.models`` only: no DDP, no data loaders, no tqdm. ``facerec.train`` re-exports
both names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec._quote import quote, shorten
from facerec.config import ModelConfig, config_from_dict

from .registry import create_model

__all__ = ["build_backbone", "load_backbone", "read_backbone_state", "read_torch_file"]


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """``create_model(name, input_size, embedding_size, **options)``: (N, 3, H, W) -> (N, D)."""
    return create_model(cfg.name, input_size=tuple(cfg.input_size), embedding_size=cfg.embedding_size,
                        **cfg.options)


def read_torch_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, nothing executed.

    Raises:
        ValueError: the file is missing, truncated or not a torch file; the message names it.
    """
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read; it is "
                         f"truncated or not a torch file: {type(exc).__name__}: {exc}") from exc


def read_backbone_state(path: str | Path, map_location: Any = "cpu") -> tuple[ModelConfig, dict]:
    """(model config, backbone state_dict) of a facerec checkpoint.

    Raises:
        ValueError: the file is missing, unreadable (truncated, not a torch file) or holds no facerec
            ``config`` / ``model`` entries; the message names the file.
    """
    path = Path(path)
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "model" not in state:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a facerec checkpoint: expected a dict with 'config' and 'model', "
                         f"got {quote(keys)}")
    try:
        cfg = config_from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: stored config is invalid: {exc}") from exc
    return cfg.model, state["model"]


def load_backbone(path: str | Path, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the backbone from a checkpoint's stored config and load its weights (eval mode).

    Args:
        path: a ``ckpt_*.pt`` written by ``facerec.train`` (``train_face.py`` / ``facerec-train``).
        map_location: where tensors go (``"cpu"``, ``"cuda:0"``, ...); the module is moved there.

    Returns:
        The backbone, (N, 3, H, W) float images normalised by ``facerec.data.transforms.normalize`` ->
        (N, D) embeddings, in eval mode; ``model.input_size`` is its (H, W).

    Raises:
        ValueError: the file is truncated, not a facerec checkpoint, or its weights do not fit
            the stored architecture.
    """
    model_cfg, weights = read_backbone_state(path, map_location)
    model = build_backbone(model_cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: weights do not fit model {quote(model_cfg.name)}: "
                         f"{shorten(str(exc))}") from exc
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
