"""``paramcrop analyze power``: how many seeds a paired comparison needs, from a pilot.

The pilot is the selected runs; the comparisons are those of ``analyze compare`` (the spec's
declared family, else every configuration against ``--baseline``, :func:`analysis.family.comparisons`). Per
comparison, from its ``n`` paired-by-seed differences with SD ``s`` (:func:`analysis.compare.paired`):

- ``n_interval``: the smallest n at which the 95 % t-interval of the mean difference would have
  half-width <= ``delta``: ``t_{0.975, n-1} s / sqrt(n) <= delta``, the t quantile at each n
  (:func:`analysis.resampling.n_for_half_width`);
- ``n_power``: the smallest n at which the two-sided paired t-test at alpha = 0.05 detects a true
  difference ``delta`` with probability >= ``power``, by the exact noncentral-t power (noncentrality
  ``delta sqrt(n) / s``), searched from the normal approximation ``((z_0.975 + z_power) s / delta)^2``
  (:func:`analysis.resampling.n_for_power`); ``n_power_normal`` is that approximation, rounded up.

Both take the pilot's ``s`` as the true SD (no allowance for its own uncertainty). A pilot with
fewer than :data:`MIN_PAIRS` pairs gives no SD worth planning on: such comparisons are left out
(a warning names them) and when none has enough, the call is refused (exit 2).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from analysis import plots
from analysis.errors import NotFoundError
from analysis.load import RunQuery, Selection
from analysis.report import Report

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

STEM = "power"
MIN_PAIRS = 3
LEVEL = 0.95
DEFAULT_DELTA = 0.03
DEFAULT_POWER = 0.8
COLUMNS = ["configuration", "baseline", "pairs", "diff", "diff_std", "half_width", "delta", "n_interval", "power",
           "n_power", "n_power_normal"]


def check_targets(delta: float, power: float) -> None:
    """``delta > 0`` and ``0 < power < 1`` (else :class:`NotFoundError`, exit 2)."""
    if not delta > 0:
        raise NotFoundError(f"--delta must be a positive difference (e.g. 0.03), got {delta}")
    if not 0 < power < 1:
        raise NotFoundError(f"--power must be between 0 and 1 (e.g. 0.8), got {power}")


def power_table(sel: Selection, client: "MlflowClient", baseline: str | None = None, delta: float = DEFAULT_DELTA,
                power: float = DEFAULT_POWER) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(table, notes, warnings)``: one row per comparison with at least :data:`MIN_PAIRS` pairs
    (:data:`COLUMNS`, module doc). :class:`NotFoundError` (exit 2) when no comparison has that many."""
    from scipy import stats

    from analysis import groups
    from analysis.compare import paired
    from analysis.family import comparisons
    from analysis.resampling import n_for_half_width, n_for_power
    from analysis.values import seeded_values

    check_targets(delta, power)
    values, configs, notes = seeded_values(sel)
    values = values.assign(seed=values["seed"].map(groups.canonical))
    pairs, more = comparisons(sel, client, values, configs, baseline)
    notes += more
    labels = dict(zip(configs["config"], configs["configuration"]))
    rows, short = [], []
    z = float(stats.norm.ppf(1 - (1 - LEVEL) / 2) + stats.norm.ppf(power))
    for pair in pairs:
        summary, _ = paired(values[values["config"].isin([pair.baseline, pair.against])], pair.baseline, LEVEL)
        r = summary.iloc[0]
        name = pair.declared or labels[pair.against]
        if r["pairs"] < MIN_PAIRS:
            short.append(f"{pair.declared or name + ' vs ' + labels[pair.baseline]} ({r['pairs']})")
            continue
        s = float(r["diff_std"])
        rows.append({"configuration": name, "baseline": labels[pair.baseline], "pairs": int(r["pairs"]),
                     "diff": r["diff"], "diff_std": s, "half_width": r["diff_upper"] - r["diff"], "delta": delta,
                     "n_interval": n_for_half_width(s, delta, LEVEL), "power": power,
                     "n_power": n_for_power(s, delta, power, 1 - LEVEL),
                     "n_power_normal": max(2, math.ceil((z * s / delta) ** 2))})
    why = (f"a pilot needs at least {MIN_PAIRS} pairs (seeds run in both configurations) for an SD of the "
           f"paired differences to plan on")
    if not rows:
        raise NotFoundError(f"no comparison has a pilot of {MIN_PAIRS} or more pairs: {why}. Pairs here: "
                            + "; ".join(short) + ". Run more seeds of both (the spec's `seeds`).")
    warnings = [f"left out, fewer than {MIN_PAIRS} pairs ({why}): " + "; ".join(short)] if short else []
    return pd.DataFrame(rows, columns=COLUMNS), notes, warnings


def markdown(data: pd.DataFrame, title: str, objective: str, delta: float, power: float) -> str:
    lines = [f"# {title}", "",
             f"Objective `{objective}`, paired by seed; SD of the pilot's differences taken as the truth. "
             f"Seeds for a {plots.percent(LEVEL)} t-interval of half-width <= {delta:g}, and for the paired t-test "
             f"(two-sided, alpha {1 - LEVEL:.2g}) to detect a true difference of {delta:g} with power {power:g} "
             "(noncentral t; the normal approximation beside it).", "",
             "| comparison | baseline | pilot pairs | difference | SD of differences | half-width now | "
             "n for half-width | n for power | (normal approx.) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data.itertuples(index=False):
        lines.append(f"| {r.configuration} | {r.baseline} | {r.pairs} | {r.diff:+.3f} | {r.diff_std:.3f} | "
                     f"{r.half_width:.3f} | {r.n_interval} | {r.n_power} | {r.n_power_normal} |")
    return "\n".join(lines) + "\n"


def power_analysis(query: RunQuery, baseline: str | None = None, delta: float = DEFAULT_DELTA,
                   power: float = DEFAULT_POWER, client: "MlflowClient | None" = None) -> Report:
    """Compute (:func:`power_table`), write and (for a study) log ``power.csv`` and ``power.md``."""
    check_targets(delta, power)
    client, sel = query.resolve(client)
    data, notes, warnings = power_table(sel, client, baseline, delta, power)
    title = sel.title(f"{sel.objective}: seeds needed for a difference of {delta:g}")
    report = Report(f"power ({sel.kind} {sel.name})", notes=sel.notes + notes, warnings=warnings)
    writers = {f"{STEM}.csv": plots.csv_writer(data),
               f"{STEM}.md": plots.text_writer(markdown(data, title, sel.objective, delta, power))}
    plots.publish(report, client, sel, query.out, writers, query.log)
    report.tables.append((f"{sel.name}: {sel.objective}, seeds needed (delta {delta:g}, power {power:g})",
                          data.drop(columns=["delta", "power"])))
    report.data.update(power=data, selection=sel)
    return report
