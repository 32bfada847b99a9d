"""Process-level settings for training on CPU: the allocator, compiled kernels, and a quiet torch.compile.

glibc's ``malloc`` serves each large block (above ``M_MMAP_THRESHOLD``: 128 KiB at first, raised
as blocks are freed, at most 32 MiB) with a fresh ``mmap``, gives it back with ``munmap`` on
``free``, and trims the heap's top back to the kernel; every page of the next tensor of that size
is then a new minor page fault, zero-filled by the kernel. A training step allocates and frees its
activations (the quickstart's first backbone activation is 150 MB) every step: measured on the
quickstart's random-crop run, about 50,000 faults per step with glibc's defaults (11 million a
200-step run, the 92 million of a 10-trial study) and still 12,000 with only the thresholds raised
(the activations above 32 MiB). :func:`tune_allocator` turns ``mmap`` off for ``malloc``
(``M_MMAP_MAX`` 0: every block comes from the heap, where a freed block is reused) and heap
trimming below 2 GiB of free top (``M_TRIM_THRESHOLD``): a step then faults no page once the heap
has grown to the step's peak (0.4 faults per step measured). The process keeps its peak working set
instead of returning and refaulting it each step.

On a machine without CUDA, inductor's first compile imports ``torch.utils.cpp_extension``, which logs
``No CUDA runtime is found, using CUDA_HOME=...`` when a CUDA toolkit folder exists; importing this
module drops that one message (:class:`NoCudaRuntimeNotice`), every other record of that logger stays.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import warnings
from typing import Callable

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
OPT_OUT = "PARAMCROP_DEFAULT_MALLOC"  # set (to anything) to keep glibc's defaults
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_tuned: bool | None = None
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"


class NoCudaRuntimeNotice(logging.Filter):
    """Drops ``torch.utils.cpp_extension``'s "No CUDA runtime is found" warning (CPU-only runs expect no CUDA)."""

    MESSAGE = "No CUDA runtime is found"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGE)


def quiet_cpp_extension() -> None:
    """Install :class:`NoCudaRuntimeNotice` on the ``torch.utils.cpp_extension`` logger, once."""
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    if not any(isinstance(f, NoCudaRuntimeNotice) for f in logger.filters):
        logger.addFilter(NoCudaRuntimeNotice())


quiet_cpp_extension()


def tune_allocator() -> bool:
    """Set glibc's ``M_MMAP_MAX`` and ``M_TRIM_THRESHOLD`` as above, once per process (DataLoader
    workers forked afterwards inherit them). Returns whether they are set: False off glibc (macOS,
    musl), when ``PARAMCROP_DEFAULT_MALLOC`` is set, or when the environment already chose glibc's
    malloc settings for this process (``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``)."""
    global _tuned
    if _tuned is None:
        _tuned = False
        path = ctypes.util.find_library("c")
        if path and not any(k in os.environ for k in (OPT_OUT, *_GLIBC_ENV)):
            mallopt = getattr(ctypes.CDLL(path), "mallopt", None)
            if mallopt is not None:
                _tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned


class Compiled:
    """``fn`` through ``torch.compile`` (inductor, ``dynamic=False``: compiled on first use for each
    input shape and dtype, seconds on a 2-core CPU), called like ``fn``. Where compiling or running
    the compiled code fails (no C++ compiler, an unsupported platform) it warns once, naming
    ``what``, and calls ``eager`` (default ``fn``) from then on; :attr:`active` says which."""

    def __init__(self, fn: Callable, what: str, eager: Callable | None = None) -> None:
        import torch

        self.what, self.eager = what, eager or fn
        self._compiled: Callable | None = torch.compile(fn, dynamic=False)

    @property
    def active(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args):
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as exc:  # noqa: BLE001 - inductor's failures have no common base class
                first = str(exc).splitlines()[0] if str(exc) else ""
                warnings.warn(f"torch.compile of {self.what} failed ({type(exc).__name__}: {first}); running it "
                              f"eagerly", RuntimeWarning)
                self._compiled = None
        return self.eager(*args)
