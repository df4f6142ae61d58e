"""Learning rate as a pure function of the step (nanoGPT ``get_lr`` style; no scheduler state).

The DRConv paper (section 4.2) trains MobileFaceNet on MS1M-V2 with lr 0.1 divided by 10 at 252k,
364k and 406k iterations, stopping at 420k. ``lr_at`` adds an optional linear warm-up in front.
Steps are 0-based: ``lr_at(s, cfg)`` is the rate used by the update that turns step ``s`` into
``s + 1``; from ``milestones[i]`` on, the factor ``gamma ** (i + 1)`` applies.
"""
from __future__ import annotations

import bisect

from facerec._quote import quote
from facerec.config import OptimConfig, ScheduleConfig

__all__ = ["base_lr", "lr_at"]


def base_lr(optim: OptimConfig, batch_size: int | None = None) -> float:
    """The peak learning rate: ``optim.lr``, or ``optim.lr * batch_size / optim.lr_batch`` (linear scaling rule)
    when ``optim.lr_batch > 0`` and the global ``batch_size`` is given."""
    if optim.lr_batch and batch_size:
        return optim.lr * batch_size / optim.lr_batch
    return optim.lr


def lr_at(step: int, schedule: ScheduleConfig, optim: OptimConfig, batch_size: int | None = None) -> float:
    """Learning rate for 0-based ``step``.

    Args:
        step: number of updates already made (>= 0).
        schedule: milestones, gamma, warm-up length.
        optim: base learning rate ``optim.lr`` (and ``optim.lr_batch``, see ``base_lr``).
        batch_size: the global batch, for ``optim.lr_batch``'s scaling.

    Returns:
        ``base_lr * gamma ** (#milestones <= step)``, scaled by ``(step + 1) / warmup_steps`` during
        the first ``warmup_steps`` steps.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {quote(step)}")
    lr = base_lr(optim, batch_size) * schedule.gamma ** bisect.bisect_right(schedule.milestones, step)
    if step < schedule.warmup_steps:
        lr *= (step + 1) / schedule.warmup_steps
    return lr
