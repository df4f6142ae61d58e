"""Run monitoring: logging set-up, metrics as JSON lines, optional TensorBoard, a throughput meter.

DESIGN convention 6: rank 0 alone writes the console, ``train.log``, ``metrics.jsonl`` and
TensorBoard scalars; other ranks log warnings only. The progress line follows arcface_torch
(step, loss, lr, samples/s, ETA). Handlers are attached to the ``facerec`` logger (not the root
logger) and removed again by :meth:`RunMonitor.close`, so ``train`` can run inside another program.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["RunMonitor", "ThroughputMeter", "format_duration"]

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1:02:05'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ThroughputMeter:
    """Samples per second over a window (the loop restarts it at each log line and after pauses)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start = time.perf_counter()
        self.samples = 0
        self.steps = 0

    def add(self, samples: int) -> None:
        self.samples += samples
        self.steps += 1

    @property
    def samples_per_s(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else 0.0

    @property
    def steps_per_s(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.steps / elapsed if elapsed > 0 else 0.0


class _TqdmHandler(logging.Handler):
    """Console handler (stderr) that prints through ``tqdm.write`` so the bar is not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the loop
            self.handleError(record)


class RunMonitor:
    """Console + file logging, ``metrics.jsonl``, TensorBoard and the tqdm bar for one run.

    Args:
        out_dir: the run folder (rank 0 writes ``train.log`` and ``metrics.jsonl`` there).
        is_main: rank 0; other ranks only forward warnings to the console.
        total_steps: for the bar and the ETA.
        tensorboard: create a SummaryWriter in ``out_dir/tb`` when tensorboard is importable.
    """

    def __init__(self, out_dir: Path, *, is_main: bool, total_steps: int, tensorboard: bool = True) -> None:
        self.is_main = is_main
        self.out_dir = Path(out_dir)
        self.logger = logging.getLogger("facerec")
        self._handlers: list[logging.Handler] = []
        self._old_level = self.logger.level
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        console = _TqdmHandler(logging.INFO if is_main else logging.WARNING)
        console.setFormatter(fmt)
        self._handlers.append(console)
        self.metrics_file = None
        self.writer = None
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(self.out_dir / "train.log")
            file_handler.setFormatter(fmt)
            self._handlers.append(file_handler)
            self.metrics_file = open(self.out_dir / "metrics.jsonl", "a")
        for handler in self._handlers:
            self.logger.addHandler(handler)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        if is_main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; scalars go to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(self.out_dir / "tb"))
        self.bar = None
        self.total_steps = total_steps

    def start_bar(self, start_step: int) -> None:
        """Show the tqdm bar (rank 0, on a terminal) from ``start_step``."""
        self.bar = tqdm(total=self.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=None if self.is_main else True, leave=False)

    def step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Advance the bar by one step and refresh its postfix every 10 steps."""
        if self.bar is None:
            return
        self.bar.update(1)
        if step % 10 == 0:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", sps=f"{samples_per_s:.0f}",
                                 refresh=False)

    def eta(self, step: int, steps_per_s: float) -> str:
        return format_duration((self.total_steps - step) / steps_per_s) if steps_per_s > 0 else "?"

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """One JSON line ``{"step": step, **values}`` and the same TensorBoard scalars (rank 0)."""
        if not self.is_main:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.setLevel(self._old_level)
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.writer is not None:
            self.writer.close()
