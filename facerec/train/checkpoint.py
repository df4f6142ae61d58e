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

from facerec._quote import quote
from facerec.models.loading import load_backbone, read_torch_file  # load_backbone re-exported

__all__ = [
    "FORMAT_VERSION", "CheckpointWriteError", "capture_rng_state", "checkpoint_path", "find_resume_checkpoint",
    "list_checkpoints", "load_backbone", "load_checkpoint", "restore_rng_state", "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_TMP_NAME = re.compile(r"^\.ckpt_\d+\.pt\.tmp-\d+$")
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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, I/O error); the previous checkpoints are untouched.

    ``last_good`` is the newest complete checkpoint left in the folder (None when there is none).
    """

    def __init__(self, message: str, last_good: Path | None):
        super().__init__(message)
        self.last_good = last_good


def _unfinished_writes(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if _TMP_NAME.match(p.name)) if out_dir.is_dir() else []


def save_checkpoint(state: dict, out_dir: str | Path, step: int, keep: int) -> Path:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` and delete all but the newest ``keep``.

    The file is first written to a hidden temporary name in the same folder, flushed to disk, then
    renamed over the final name, so a crash never leaves a half-written ``ckpt_*.pt``. When the write
    fails (a full disk, an I/O error) the temporary file is removed, no older checkpoint is pruned and
    :class:`CheckpointWriteError` says which checkpoint a resumed run will start from. Temporary files
    left by a run killed while writing are removed after the next successful write.
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
    except (OSError, RuntimeError) as exc:  # OSError from the file; torch's zip writer turns it into RuntimeError
        done = [p for p in list_checkpoints(out_dir) if p != final]
        last = done[-1] if done else None
        raise CheckpointWriteError(
            f"could not write checkpoint {final} ({type(exc).__name__}: {exc}); the partial file was removed "
            f"and no older checkpoint was deleted. "
            + (f"The last good checkpoint is {last}; free space and rerun with resume to continue from it."
               if last else "There is no earlier checkpoint in this folder."), last) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    for stale in _unfinished_writes(out_dir):
        log.warning("removing %s: an unfinished checkpoint write of a run that stopped while writing", stale)
        stale.unlink(missing_ok=True)
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
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a facerec checkpoint: expected a dict with keys "
                         f"{list(_REQUIRED)}, got {quote(keys)}")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version {quote(state['format_version'])}; this "
                         f"facerec reads version {FORMAT_VERSION}")
    return state


def find_resume_checkpoint(out_dir: str | Path, map_location: Any = "cpu") -> tuple[Path, dict] | None:
    """Newest readable checkpoint in ``out_dir`` (unreadable ones are skipped with a warning; unfinished
    writes of a run killed while saving are reported and ignored)."""
    unfinished = _unfinished_writes(Path(out_dir))
    if unfinished:
        log.warning("%s holds %d unfinished checkpoint write(s) (%s): a run stopped while saving; they are "
                    "ignored", out_dir, len(unfinished), ", ".join(p.name for p in unfinished))
    for path in reversed(list_checkpoints(out_dir)):
        try:
            found = path, load_checkpoint(path, map_location)
        except ValueError as exc:
            log.warning("skipping checkpoint: %s", exc)
            continue
        log.info("resuming from %s (the newest complete checkpoint in %s)", path, out_dir)
        return found
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
