"""facerec.train: the schedule runner of the DRConv paper's face-recognition recipe (section 4.2).

``config`` (YAML -> frozen dataclasses) drives ``loop.train``: SGD with the MobileFaceNet
weight-decay split, ``schedule.lr_at`` (a pure function of the step), DDP under torchrun
(``distributed``), AMP, atomic step-exact checkpoints (``checkpoint``), verification during training
and logging (``monitor``). ``load_backbone`` (a re-export of ``facerec.models.load_backbone``) rebuilds a
trained backbone for other tools.
"""
from .checkpoint import find_resume_checkpoint, load_backbone, load_checkpoint, save_checkpoint
from .distributed import DistInfo, ResumableBatchSampler
from .loop import NonFiniteLossError, train
from .schedule import lr_at

__all__ = [
    "DistInfo", "NonFiniteLossError", "ResumableBatchSampler", "find_resume_checkpoint", "load_backbone",
    "load_checkpoint", "lr_at", "save_checkpoint", "train",
]
