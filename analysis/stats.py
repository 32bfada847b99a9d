"""Summary statistics over runs.

Confidence interval (used by every analysis): for the ``n`` values of a group (one per run,
e.g. runs of one configuration that differ by seed or trial), ``mean`` is their average,
``std`` the sample standard deviation (``ddof=1``), and the ``level`` (default 95 %) interval
is the Student-t interval ``mean -+ t_{(1+level)/2, n-1} * std / sqrt(n)``. With ``n = 1``
``std``, ``lower`` and ``upper`` are NaN (no band is drawn). NaN values are ignored.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

STAT_COLUMNS = ["n", "mean", "std", "lower", "upper"]


def check_level(level: float) -> float:
    """A confidence level strictly between 0 and 1 (else :class:`NotFoundError`, exit 2)."""
    from analysis.errors import NotFoundError

    if not 0 < level < 1:
        raise NotFoundError(f"--level must be between 0 and 1 (e.g. 0.95), got {level}")
    return level


def t_interval(values: Iterable[float], level: float = 0.95) -> dict[str, float]:
    """``{"n", "mean", "std", "lower", "upper"}`` of ``values`` (see module doc)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "lower": math.nan, "upper": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "lower": math.nan, "upper": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lower": mean - half, "upper": mean + half}


def grouped_interval(frame: pd.DataFrame, by: list[str], value: str, level: float = 0.95) -> pd.DataFrame:
    """:func:`t_interval` of ``frame[value]`` per group of ``by`` columns; groups keep their
    first-appearance order; the result has ``by + STAT_COLUMNS`` columns."""
    from scipy import stats

    g = frame.dropna(subset=[value]).groupby(by, sort=False, dropna=False)[value]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    out["n"] = out["n"].astype(int)
    out.loc[out["n"] < 2, "std"] = np.nan
    dof = (out["n"] - 1).where(out["n"] >= 2)
    q = pd.Series(stats.t.ppf((1 + level) / 2, dof.to_numpy(dtype=float)), index=out.index)
    half = q * out["std"] / np.sqrt(out["n"])
    out["lower"] = out["mean"] - half
    out["upper"] = out["mean"] + half
    return out[list(by) + STAT_COLUMNS]
