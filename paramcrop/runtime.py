"""Process-level settings for training on CPU (issue 15: allocation churn).

glibc's ``malloc`` serves each large block (above ``M_MMAP_THRESHOLD``, 128 KiB by default, raised
only as blocks are freed) with a fresh ``mmap`` and gives it back with ``munmap`` on ``free``, and
trims the heap's top back to the kernel; every page of the next tensor of that size is then a new
minor page fault, zero-filled by the kernel. A training step allocates and frees its activations
(a few MiB each at the quickstart size) hundreds of times, so on CPU the kernel's zeroing and fault
handling took about a third of the augmentation's time (``benchmarks/README.md``): the 92 million
page faults of a 10-trial study. :func:`tune_allocator` keeps freed blocks up to 32 MiB in the heap
for reuse (``M_MMAP_THRESHOLD`` 32 MiB, glibc's maximum) and stops trimming (``M_TRIM_THRESHOLD``
1 GiB): the process holds its peak working set instead of returning and refaulting it each step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**30  # mallopt takes a C int
OPT_OUT = "PARAMCROP_DEFAULT_MALLOC"  # set (to anything) to keep glibc's defaults

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds as above, once per process (DataLoader workers forked
    afterwards inherit them). Returns whether they are set: False off glibc (macOS, musl), when
    ``PARAMCROP_DEFAULT_MALLOC`` is set, or when ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    already chose for this process."""
    global _tuned
    if _tuned is None:
        _tuned = False
        chosen = any(k in os.environ for k in (OPT_OUT, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
        path = ctypes.util.find_library("c")
        if not chosen and path:
            libc = ctypes.CDLL(path)
            mallopt = getattr(libc, "mallopt", None)
            if mallopt is not None:
                _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                         TRIM_THRESHOLD))
    return _tuned
