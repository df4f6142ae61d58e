"""Shared pieces of the reader fuzz suite: byte-level mutations as a hypothesis strategy, the reader contract
check (result or the documented error naming the file and a location, within time and memory bounds) and the
per-reader tally of inputs survived."""
from __future__ import annotations

import re
import resource
import struct
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

from hypothesis import strategies as st

TIME_LIMIT_S = 5.0  # per input, generous for a loaded 2-core CI machine; the inputs are a few KB
MEMORY_LIMIT = 64 << 20  # peak Python/numpy allocation per input (traced), for inputs of a few KB
RSS_GROWTH_LIMIT = 512 << 20  # growth of the process's peak RSS per input: catches C allocations (OpenCV, ...)

# reader name -> [inputs that kept the contract, of which returned a value, seconds spent]
TALLY: dict[str, list] = defaultdict(lambda: [0, 0, 0.0])

_INTS = [0, 1, 2, 3, 4, 7, 8, 16, 24, 255, 256, 0x7FFF, 0xFFFF, 2 ** 29 - 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
         2 ** 40, 2 ** 62, 2 ** 63 - 1, 2 ** 64 - 1, -1, -2, -(2 ** 31)]


_OPS = st.sampled_from(["truncate", "flip", "int", "int", "insert", "delete", "random", "duplicate"])
_RAW = st.integers(0, 1 << 20)  # positions and choices are taken modulo what is available
_SIZE = st.sampled_from([1, 2, 4, 8])
_ORDER = st.sampled_from("<>")
_VALUE = st.one_of(st.sampled_from(_INTS), st.integers(-(2 ** 63), 2 ** 64 - 1))
_BYTES = st.binary(min_size=1, max_size=32)


@st.composite
def mutated(draw, base: bytes, hot=()):
    """``base`` after 1-4 mutations: truncation, bit flips, 1/2/4/8-byte integers written over it (huge
    lengths, negatives, zero, boundaries, the file length, both byte orders), inserted, deleted, duplicated or
    random bytes. ``hot`` lists offsets of length/type fields that half of the positions come from."""
    data = bytearray(base)
    hot = list(hot)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(_OPS)
        n = len(data)
        raw = draw(_RAW)
        pos = hot[raw % len(hot)] if hot and raw & 1 else raw % (n + 1)
        pos = min(pos, n)
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and n:
            data[min(pos, n - 1)] ^= 1 << (raw >> 1) % 8
        elif op == "int":
            size, order = draw(_SIZE), draw(_ORDER)
            value = draw(st.one_of(_VALUE, st.sampled_from([n, n + 1, n - 1])))
            value &= (1 << (8 * size)) - 1
            data[pos:pos + size] = struct.pack(order + {1: "B", 2: "H", 4: "I", 8: "Q"}[size], value)
        elif op == "insert":
            data[pos:pos] = draw(_BYTES)[:16]
        elif op == "delete":
            del data[pos:pos + 1 + (raw >> 1) % 16]
        elif op == "random":
            chunk = draw(_BYTES)
            data[pos:pos + len(chunk)] = chunk
        elif op == "duplicate" and n:
            data[pos:pos] = data[pos:min(n, pos + 1 + (raw >> 1) % 64)]
    return bytes(data)


def check_reader(reader: str, call, files, *, where: str | None = None, errors=(ValueError,)):
    """Run ``call()``; it must return, or raise one of ``errors`` whose message names one of ``files`` (and
    matches ``where``, the location: offset, key, line, entry), within the time and memory bounds.

    Any other exception propagates (hypothesis reports it with the shrunk input). Returns the result or None.
    """
    names = [str(f) for f in files] + [Path(f).name for f in files]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # KiB on Linux
    tracemalloc.start()
    start = time.perf_counter()
    result, returned = None, False
    try:
        result = call()
        returned = True
    except errors as err:
        msg = str(err)
        assert any(n in msg for n in names), f"{reader}: error does not name the file: {type(err).__name__}: {msg}"
        if where is not None:
            assert re.search(where, msg), f"{reader}: error does not locate the fault ({where}): {msg}"
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - rss_before
    assert elapsed < TIME_LIMIT_S, f"{reader}: {elapsed:.1f} s for one input (limit {TIME_LIMIT_S} s)"
    assert peak < MEMORY_LIMIT, f"{reader}: peak allocation {peak >> 20} MiB (limit {MEMORY_LIMIT >> 20} MiB)"
    assert rss_growth < RSS_GROWTH_LIMIT, f"{reader}: peak RSS grew by {rss_growth >> 20} MiB for one input"
    tally = TALLY[reader]
    tally[0] += 1
    tally[1] += returned
    tally[2] += elapsed
    return result
