"""Small statistics of paired comparisons and evaluation sampling: pure functions of arrays.

- :func:`paired_t_p`: the two-sided p-value of the paired t-test of differences ``d`` (mean 0).
- :func:`holm`: Holm's step-down adjusted p-values; :func:`holm_levels`: the confidence level each
  comparison's interval takes at its Holm step.
- :func:`probability_of_improvement`: P(A > B) over paired seeds, ties counting 1/2;
  :func:`wilson_interval` its interval.
- :func:`bootstrap_variance_of_mean`: the (ideal) bootstrap variance of a mean over queries.
- :func:`hierarchical_bootstrap`: the percentile interval of a mean over pairs when both the pairs
  (seeds) and the queries within each pair are resampled.
- :func:`n_for_half_width`, :func:`paired_t_power`, :func:`n_for_power`: how many seeds a paired
  comparison needs.

Anchors: Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks" (MLSys 2021);
Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021, rliable).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

N_MAX = 1_000_000
"""The largest number of seeds :func:`n_for_half_width` and :func:`n_for_power` search."""


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[~np.isnan(x)]


def paired_t_p(diffs) -> float:
    """Two-sided p-value of the one-sample t-test of ``diffs`` against 0 (``n - 1`` degrees of
    freedom). NaN for fewer than 2 values; with zero spread 0 when the mean is not 0, else 1."""
    from scipy import stats

    d = _finite(diffs)
    if d.size < 2:
        return math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if mean != 0 else 1.0
    t = mean / (sd / math.sqrt(d.size))
    return float(2 * stats.t.sf(abs(t), d.size - 1))


def _holm_order(p: np.ndarray) -> np.ndarray:
    """Indices of the finite ``p`` in ascending order (ties keep their order)."""
    finite = np.flatnonzero(~np.isnan(p))
    return finite[np.argsort(p[finite], kind="stable")]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's adjusted p-values: with the m finite p-values sorted ascending, the k-th (k = 1..m)
    becomes ``max_{j <= k} min(1, (m - j + 1) p_(j))``; NaN stays NaN and does not count in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    order = _holm_order(p)
    m, running = order.size, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def holm_levels(p_values: Sequence[float], level: float = 0.95) -> np.ndarray:
    """The confidence level of each comparison's interval at its Holm step: the k-th smallest of the
    m finite p-values is tested at ``alpha / (m - k + 1)`` (``alpha = 1 - level``), so its interval
    takes ``1 - alpha / (m - k + 1)``. NaN where the p-value is NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    order = _holm_order(p)
    for k, i in enumerate(order):
        out[i] = 1 - (1 - level) / (order.size - k)
    return out


def probability_of_improvement(diffs) -> float:
    """P(A > B) over the pairs: the share of differences ``A - B`` above 0, a tie counting 1/2."""
    d = _finite(diffs)
    if d.size == 0:
        return math.nan
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def wilson_interval(share: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``share`` observed in ``n`` trials (a fractional
    count of successes, ``share * n``, is allowed: ties counting 1/2). NaN for ``n = 0``."""
    from scipy import stats

    if n == 0 or share != share:
        return math.nan, math.nan
    z = float(stats.norm.ppf((1 + level) / 2))
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_variance_of_mean(values) -> float:
    """The ideal bootstrap variance of the mean of ``values`` (its limit over infinitely many
    resamples of the queries with replacement): ``var(values, ddof=0) / n``; for 0/1 outcomes
    ``p (1 - p) / n``. NaN when empty."""
    x = _finite(values)
    return float(x.var() / x.size) if x.size else math.nan


def hierarchical_bootstrap(per_pair: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 2000,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over pairs of each pair's mean per-query value, resampling on
    two levels: the pairs (seeds) with replacement, then, for each pair drawn, its queries with
    replacement (each draw of a pair resamples its queries afresh). ``per_pair``: one array per pair,
    the per-query values (for an accuracy difference: A correct - B correct, in {-1, 0, 1}).

    A pair's resampled query mean is drawn exactly as one multinomial count of its distinct values
    (the same distribution as resampling its queries one by one). Seeded: the same inputs give the
    same interval. NaN for no pairs."""
    arrays = [_finite(a) for a in per_pair]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    uniques = [np.unique(a, return_counts=True) for a in arrays]
    width = max(u.size for u, _ in uniques)
    values = np.zeros((len(arrays), width))
    probs = np.zeros((len(arrays), width))
    sizes = np.array([a.size for a in arrays])
    for i, (u, c) in enumerate(uniques):
        values[i, :u.size] = u
        probs[i, :u.size] = c / c.sum()
    n = len(arrays)
    drawn = rng.integers(0, n, size=(resamples, n))                    # the pairs of each resample
    counts = rng.multinomial(sizes[drawn], probs[drawn])               # (resamples, n, width)
    means = (counts * values[drawn]).sum(-1) / sizes[drawn]
    stat = means.mean(-1)
    alpha = 1 - level
    lower, upper = np.quantile(stat, [alpha / 2, 1 - alpha / 2])
    return float(lower), float(upper)


def n_for_half_width(sd: float, delta: float, level: float = 0.95) -> int:
    """The smallest n >= 2 with ``t_{(1+level)/2, n-1} sd / sqrt(n) <= delta``: the seeds at which a
    paired difference of SD ``sd`` has a ``level`` t-interval of half-width at most ``delta``.
    Searched from the normal approximation ``(z sd / delta)^2``; capped at :data:`N_MAX`."""
    from scipy import stats

    q = (1 + level) / 2

    def fits(n: int) -> bool:
        return float(stats.t.ppf(q, n - 1)) * sd / math.sqrt(n) <= delta

    return _smallest(fits, (float(stats.norm.ppf(q)) * sd / delta) ** 2)


def paired_t_power(n: int, sd: float, delta: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs when the true mean
    difference is ``delta`` and the differences' SD ``sd``: ``P(|T| > t_{1-alpha/2, n-1})`` for
    ``T`` noncentral t with ``n - 1`` degrees of freedom and noncentrality ``delta sqrt(n) / sd``."""
    from scipy import stats

    if sd == 0:
        return 1.0
    crit = float(stats.t.ppf(1 - alpha / 2, n - 1))
    nc = delta * math.sqrt(n) / sd
    return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))


def n_for_power(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """The smallest n >= 2 at which the two-sided paired t-test at ``alpha`` detects a true difference
    ``delta`` with at least ``power`` (:func:`paired_t_power`, the exact noncentral-t power); searched
    from the normal approximation ``((z_{1-alpha/2} + z_power) sd / delta)^2``; capped at :data:`N_MAX`."""
    from scipy import stats

    start = ((float(stats.norm.ppf(1 - alpha / 2)) + float(stats.norm.ppf(power))) * sd / delta) ** 2
    return _smallest(lambda n: paired_t_power(n, sd, delta, alpha) >= power, start)


def _smallest(ok, start: float) -> int:
    """The smallest n in [2, N_MAX] with ``ok(n)`` (``ok`` monotone in n), searched from ``start``;
    N_MAX when even that fails."""
    n = int(min(max(2, math.ceil(start)), N_MAX))
    while n > 2 and ok(n - 1):
        n -= 1
    while not ok(n) and n < N_MAX:
        n += 1
    return n
