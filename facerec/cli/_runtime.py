"""Process set-up for the heavy console scripts (train, megaface, verify, masks, demo), done in ``main``.

* ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, before torch is imported (no effect once it is): OpenMP
  threads that spin while waiting stall badly when another process shares the cores (seen on a busy 2-core
  machine: 2-3 samples/s instead of 10-30).
* glibc's allocator keeps large blocks instead of returning them to the system after every tensor: without it,
  every large temporary (activations, per-region rows, filter chunks) is a fresh ``mmap`` whose pages fault in
  again on first touch. Measured on the 2-core VM, MegaFace extraction of the demo (2,200 faces,
  DRConv-MobileFaceNet, 2 threads): 58 s and 80 s without, 32 s and 44 s with (two A/B pairs, same process
  otherwise). The same as starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``; done with
  ``mallopt`` so that the plain commands get it, and skipped when the user set either variable (theirs wins) or
  the C library is not glibc. The cost: memory freed by the process stays mapped to it (its peak, not more).

The library itself leaves the process alone (tested: importing it changes no environment variable).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["prepare_process"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1        # mallopt takes an int


def _tune_glibc_malloc() -> bool:
    """mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2 GiB - 1); True when both were applied."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def prepare_process() -> None:
    """Set ``OMP_WAIT_POLICY`` (unless set) and tune glibc's malloc for large tensors (unless the user did)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _tune_glibc_malloc()
