"""Runtime switches of facerec.nn's DRConv kernels: getters, setters and a context manager.

The switches only choose between implementations of the same maths (``facerec.nn.paths.select_path`` reads them);
results agree to float32 rounding whatever they are set to.

* ``fused``: the fused CPU C++ kernels (``facerec.nn.kernels.fused_cpu``), inference and training.
* ``fused_train``: the fused kernels with gradients (off: training takes the unfused paths, inference keeps fused).
* ``onednn``: GEMMs of the unfused CPU paths through oneDNN (``facerec.nn._onednn``) rather than torch.mm. On by
  default where torch reports AVX-512 (there MKL, behind torch.mm, ran at a lower rate than oneDNN on AMD CPUs), off
  elsewhere (on an AVX2-only CPU the unfused paths ran 15-35% faster through torch.mm; docs/drconv-speed.md).
* ``triton``: the Triton kernels on CUDA (``facerec.nn.kernels.triton_region``).
* ``group_plan``: how the gather path groups its per-(sample, region) GEMMs: "auto" (by shape, see
  ``facerec.nn.paths.group_plan``) or one of "grouped", "padded", "onednn" (``facerec.nn._grouped``).

The environment variables ``FACEREC_FUSED``, ``FACEREC_FUSED_TRAIN``, ``FACEREC_ONEDNN`` and ``FACEREC_TRITON``
("0" turns a switch off, anything else on) are read once, here, as the defaults; unset, a switch is on (``onednn``:
on with AVX-512). Afterwards only this module changes them:

    from facerec.nn import settings
    settings.set_fused(False)                           # process-wide
    with settings.override(fused=False, onednn=False):  # restored on exit, also on an exception
        model(x)

Settings are process-wide (not per thread). Under ``torch.compile`` they are read while tracing, so changing one
recompiles the graphs that depend on it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["GROUP_PLANS", "NAMES", "get", "group_plan", "override", "set_fused", "set_fused_train",
           "set_group_plan", "set_onednn", "set_triton", "update", "use_fused", "use_fused_train", "use_onednn",
           "use_triton"]

GROUP_PLANS = ("auto", "grouped", "padded", "onednn")
_ENV = {"fused": "FACEREC_FUSED", "fused_train": "FACEREC_FUSED_TRAIN", "onednn": "FACEREC_ONEDNN",
        "triton": "FACEREC_TRITON"}


def _default(name: str) -> bool:
    """A switch's value when its environment variable is unset."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512" if name == "onednn" else True


_state: dict = {name: (os.environ[var] != "0") if var in os.environ else _default(name) for name, var in _ENV.items()}
_state["group_plan"] = "auto"
NAMES = tuple(_state)


def _checked(name: str, value):
    if name not in _state:
        raise ValueError(f"unknown facerec.nn setting {name!r}; valid: {', '.join(NAMES)}")
    if name == "group_plan":
        if value not in GROUP_PLANS:
            raise ValueError(f"group_plan must be one of {', '.join(GROUP_PLANS)}, got {value!r}")
    elif not isinstance(value, bool):
        raise TypeError(f"setting {name!r} takes a bool, got {value!r}")
    return value


def get(name: str):
    """The current value of setting ``name`` (one of ``NAMES``)."""
    if name not in _state:
        raise ValueError(f"unknown facerec.nn setting {name!r}; valid: {', '.join(NAMES)}")
    return _state[name]


def update(**values) -> dict:
    """Set several settings at once (all checked before any changes); returns their previous values."""
    checked = {name: _checked(name, value) for name, value in values.items()}
    previous = {name: _state[name] for name in checked}
    _state.update(checked)
    return previous


@contextmanager
def override(**values) -> Iterator[None]:
    """Context manager: the given settings inside the block, the previous values restored after it."""
    previous = update(**values)
    try:
        yield
    finally:
        _state.update(previous)


def use_fused() -> bool:
    return _state["fused"]


def use_fused_train() -> bool:
    return _state["fused_train"]


def use_onednn() -> bool:
    return _state["onednn"]


def use_triton() -> bool:
    return _state["triton"]


def group_plan() -> str:
    return _state["group_plan"]


def set_fused(value: bool) -> None:
    update(fused=value)


def set_fused_train(value: bool) -> None:
    update(fused_train=value)


def set_onednn(value: bool) -> None:
    update(onednn=value)


def set_triton(value: bool) -> None:
    update(triton=value)


def set_group_plan(value: str) -> None:
    update(group_plan=value)
