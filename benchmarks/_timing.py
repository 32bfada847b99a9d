"""Side-by-side timing: alternate the candidates so that machine noise hits them alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3
                ) -> dict[str, list[float]]:
    """Seconds of each call of each candidate, ``repeats`` rounds measured interleaved (A, B, A, B, ...):
    round ``r`` of every candidate ran side by side, so ratios can be taken round by round."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def compare(candidates: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each candidate, measured interleaved (:func:`interleaved`)."""
    return {name: statistics.median(ts) for name, ts in interleaved(candidates, repeats, warmup).items()}


def ratio_spread(times: dict[str, list[float]], over: str, under: str) -> tuple[float, float, float]:
    """``(median, min, max)`` of the round-by-round ratios ``times[over][r] / times[under][r]``."""
    ratios = [a / b for a, b in zip(times[over], times[under])]
    return statistics.median(ratios), min(ratios), max(ratios)


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
