"""paramcrop.runtime.tune_allocator: large freed blocks are reused instead of refaulted (issue 15)."""
from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Like a training step: allocate three 6 MiB tensors (activations), free them all, 50 times; print the
# minor page faults per iteration. By default glibc serves the first from mmap, then (its threshold
# raised) from the heap, whose 18 MiB free top exceeds the trim threshold and goes back to the kernel.
PROBE = """
import resource, sys, torch
from paramcrop.runtime import tune_allocator
torch.set_num_threads(1)  # one thread: no thread-pool allocations in the count
print(int(tune_allocator()))
x = torch.ones(6 * 2**18)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    a = x * 2; b = a * 2; c = b * 2; del a, b, c
before = faults()
for _ in range(50):
    a = x * 2
    b = a * 2
    c = b * 2
    del a, b, c
print((faults() - before) / 50)
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                           reason="mallopt is glibc's")


def probe(**env: str) -> tuple[bool, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "PARAMCROP_DEFAULT_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "1", float(out[1])


@glibc
def test_tuned_allocator_reuses_large_blocks_and_the_default_refaults_them():
    # glibc's default depends on where the kernel places the heap (ASLR): most processes refault
    # the three blocks every iteration, some few do not; one that does shows the probe can see it
    default_faults = 0.0
    for _ in range(6):
        default, faults = probe(PARAMCROP_DEFAULT_MALLOC="1")
        assert not default
        default_faults = max(default_faults, faults)
        if default_faults > 3000:  # three 6 MiB blocks of 1536 4 KiB pages each, refaulted
            break
    assert default_faults > 3000, default_faults
    for _ in range(2):
        tuned, tuned_faults = probe()
        assert tuned and tuned_faults < default_faults / 10, (tuned_faults, default_faults)  # ~0 alone


@glibc
def test_an_environment_that_chose_malloc_thresholds_is_left_alone():
    tuned, _ = probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert not tuned
