"""torchrun environment, process group set-up, small collectives, and the resumable batch sampler.

Follows nanoGPT's pattern (style-anchors section 3): the torchrun variables are read once into a
:class:`DistInfo`; a plain ``python`` run (no ``WORLD_SIZE``) starts no process group. NCCL is used
on GPU, gloo on CPU. :class:`ResumableBatchSampler` makes the stream of *global* batches a function
of (seed, epoch, position) only, so each rank's slice, and the point a resumed run continues from,
do not depend on the number of ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "ResumableBatchSampler", "all_gather_objects", "all_reduce_mean", "barrier",
    "broadcast_object", "cleanup_distributed", "init_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """Read RANK / LOCAL_RANK / WORLD_SIZE as set by torchrun (defaults: one process)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise ValueError(f"torchrun environment is malformed: {exc}") from exc
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
        return cls(rank=rank, local_rank=local, world_size=world)


def init_distributed(device_kind: str) -> DistInfo:
    """Start the process group when launched by torchrun with more than one process.

    Args:
        device_kind: "cuda" (NCCL backend) or "cpu" (gloo backend).
    """
    info = DistInfo.from_env()
    if info.is_distributed and not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def cleanup_distributed() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself when single-process)."""
    if not _active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list:
    """List of every rank's object, in rank order (``[obj]`` when single-process)."""
    if not _active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ResumableBatchSampler:
    """Per-rank batches of a shuffled, epoch-wise stream of global batches.

    Epoch ``e`` is a permutation of ``range(num_samples)`` drawn from ``seed + e``; it is cut into
    ``num_samples // global_batch`` global batches (the tail is dropped), and rank ``r`` of ``G``
    takes items ``[r * b, (r + 1) * b)`` of each, with ``b = global_batch / G``. Iteration starts at
    ``(epoch, batch)`` as set by :meth:`set_position` and stops at the end of that epoch.

    Args:
        num_samples: dataset length.
        global_batch: batch over all ranks; must be divisible by ``world_size``.
        rank, world_size: this process's slice.
        seed: shuffling seed, shared by all ranks.
    """

    def __init__(self, num_samples: int, global_batch: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> None:
        if global_batch % world_size:
            raise ValueError(f"data.batch_size={global_batch} (global) is not divisible by the number "
                             f"of processes {world_size}")
        if num_samples < global_batch:
            raise ValueError(f"dataset has {num_samples} samples, fewer than one global batch "
                             f"({global_batch})")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.local_batch = global_batch // world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def position_at(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) after ``step`` global batches."""
        return divmod(step, self.batches_per_epoch)

    def set_position(self, epoch: int, batch: int) -> None:
        if not 0 <= batch < self.batches_per_epoch or epoch < 0:
            raise ValueError(f"sampler position (epoch={epoch}, batch={batch}) is outside "
                             f"[0, {self.batches_per_epoch}) batches per epoch")
        self.epoch, self.start_batch = epoch, batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.start_batch, "seed": self.seed,
                "global_batch": self.global_batch, "num_samples": self.num_samples}

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=gen)
        lo = self.rank * self.local_batch
        for b in range(self.start_batch, self.batches_per_epoch):
            base = b * self.global_batch + lo
            yield perm[base: base + self.local_batch].tolist()
