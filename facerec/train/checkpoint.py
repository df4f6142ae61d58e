"""Checkpoints: atomic writes, the last K kept, newest-valid lookup, RNG capture.

DESIGN convention 8: one dict per checkpoint with ``format_version``, ``model`` (the unwrapped
backbone's state_dict), ``head``, ``optimizer``, ``scaler``, ``step``, ``sampler`` (position),
``rng`` (per-rank RNG states) and ``config`` (plain nested dict). Everything in it is a tensor or a
plain Python value, so ``torch.load(weights_only=True)`` reads it. Files are ``ckpt_<step>.pt`` in
the run folder, written by rank 0 to a temporary file and moved into place with ``os.replace``.
``load_backbone`` (rebuild a trained backbone for inference) is ``facerec.models.load_backbone``, re-exported.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.models.loading import load_backbone  # re-exported: the one loader lives with the models

__all__ = [
    "FORMAT_VERSION", "capture_rng_state", "checkpoint_path", "find_resume_checkpoint",
    "list_checkpoints", "load_backbone", "load_checkpoint", "restore_rng_state", "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_REQUIRED = ("format_version", "model", "config", "step")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """``out_dir/ckpt_<step, 8 digits>.pt``."""
    return Path(out_dir) / f"ckpt_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoint files in ``out_dir``, oldest step first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, out_dir: str | Path, step: int, keep: int) -> Path:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` and delete all but the newest ``keep``.

    The file is first written to a hidden temporary name in the same folder, flushed to disk, then
    renamed over the final name, so a crash never leaves a half-written ``ckpt_*.pt``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(out_dir, step)
    tmp = out_dir / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a facerec checkpoint.

    Raises:
        ValueError: the file is missing, truncated/corrupt, or not a facerec checkpoint (the
            message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read; it is "
                         f"truncated or not a torch file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a facerec checkpoint: expected a dict with keys "
                         f"{list(_REQUIRED)}, got {keys}")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version {state['format_version']!r}; this "
                         f"facerec reads version {FORMAT_VERSION}")
    return state


def find_resume_checkpoint(out_dir: str | Path, map_location: Any = "cpu") -> tuple[Path, dict] | None:
    """Newest readable checkpoint in ``out_dir`` (unreadable ones are skipped with a warning)."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except ValueError as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
