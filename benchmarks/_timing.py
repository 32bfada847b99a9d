"""Side-by-side timing: alternate the candidates so that machine noise hits them alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def compare(candidates: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each candidate, measured interleaved (A, B, A, B, ...)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


RESULT_FIELDS = ("benchmark", "name", "value", "kind")
"""Columns of a results CSV: ``kind`` is ``ms``, ``ratio``, ``clips_per_s`` or ``mib``."""


class Results:
    """What a benchmark prints, also appended to a CSV (``--csv PATH``; none: print only)."""

    def __init__(self, benchmark: str, path: str | None) -> None:
        self.benchmark, self.path = benchmark, path

    def add(self, name: str, value: float, kind: str) -> float:
        if self.path:
            import csv
            import os

            new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
            with open(self.path, "a", newline="") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(RESULT_FIELDS)
                writer.writerow((self.benchmark, name, f"{value:.6g}", kind))
        return value
