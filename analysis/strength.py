"""``paramcrop analyze strength``: the objective against the adversarial strength λ.

Runs with a numeric ``crop.strength`` param are grouped by framework, crop method and
strength; each group's final objective values give ``n, mean, std`` and the 95 %
t-interval (:mod:`analysis.stats`), drawn as points with error bars joined by lines, one
line per framework (and crop method when several have a strength). The random-crop runs
(``crop.method == random``) of each framework give a horizontal dashed reference line at
their mean objective. ``strength.csv`` holds the plotted rows, the references with
``crop.method = random`` and an empty strength.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from analysis import plots
from analysis.errors import NoDataError
from analysis.load import select
from analysis.plots import BASELINE_METHOD, P_CROP, P_FRAMEWORK, P_STRENGTH
from analysis.report import Report
from analysis.stats import STAT_COLUMNS, check_level, grouped_interval
from analysis.tables import objective_values

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

KEYS = [P_FRAMEWORK, P_CROP, P_STRENGTH]


def strength_data(values: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Rows ``framework.name, crop.method, crop.strength (float), n, mean, std, lower, upper``:
    first the strength groups, then the random-crop references per framework."""
    v = values.copy()
    v[P_STRENGTH] = plots.numeric(v[P_STRENGTH])
    swept = v[v[P_STRENGTH].notna()]
    points = grouped_interval(swept, KEYS, "objective", level)
    order = sorted(range(len(points)), key=lambda i: (plots._sort_key(points[P_FRAMEWORK].iloc[i]),
                                                      plots._sort_key(points[P_CROP].iloc[i]),
                                                      float(points[P_STRENGTH].iloc[i])))
    points = points.iloc[order]
    refs = grouped_interval(v[v[P_CROP] == BASELINE_METHOD], [P_FRAMEWORK, P_CROP], "objective", level)
    refs[P_STRENGTH] = np.nan
    out = pd.concat([points, refs[KEYS + STAT_COLUMNS]], ignore_index=True)
    return out[KEYS + STAT_COLUMNS]


def figure(data: pd.DataFrame, title: str, objective: str, level: float, logx: bool = False):
    swept = data[data[P_CROP] != BASELINE_METHOD]
    refs = data[data[P_CROP] == BASELINE_METHOD]
    n_entries = swept.groupby([P_FRAMEWORK, P_CROP], dropna=False).ngroups + len(refs)
    fig = plots.new_figure(plots.PANEL_WIDTH_IN, plots.PANEL_HEIGHT_IN + 0.45 + 0.17 * n_entries)
    ax = fig.subplots()
    frameworks = list(dict.fromkeys(list(swept[P_FRAMEWORK]) + list(refs[P_FRAMEWORK])))
    pal = plots.palette(len(frameworks))
    colour = {fw: pal[i] for i, fw in enumerate(frameworks)}
    markers = ["o", "s", "^", "D", "v"]
    for j, ((fw, method), g) in enumerate(swept.groupby([P_FRAMEWORK, P_CROP], sort=False, dropna=False)):
        name = plots.param_label(P_FRAMEWORK, fw)
        label = f"{plots.crop_label(method)}, {name}"
        yerr = np.vstack([g["mean"] - g["lower"], g["upper"] - g["mean"]])
        ax.errorbar(g[P_STRENGTH], g["mean"], yerr=np.nan_to_num(yerr), color=colour[fw],
                    marker=markers[j % len(markers)], markersize=4, capsize=2.5, linewidth=1.4, label=label)
    for _, r in refs.iterrows():
        ax.axhline(r["mean"], color=colour[r[P_FRAMEWORK]], linestyle="--", linewidth=1.2,
                   label=f"{plots.BASELINE_LABEL}, {plots.param_label(P_FRAMEWORK, r[P_FRAMEWORK])}")
    if logx:
        ax.set_xscale("symlog", linthresh=max(1e-3, float(swept[P_STRENGTH][swept[P_STRENGTH] > 0].min()
                                                       if (swept[P_STRENGTH] > 0).any() else 1e-3)))
    ax.set_xlabel("Adversarial strength λ (crop.strength)")
    ax.set_ylabel(f"{objective} (final)")
    fig.suptitle(title)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(plots.BASELINE_LABEL))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=1,
               frameon=False, title=f"Mean over runs, {level:.0%} CI bars")
    return fig


def strength(
    tracking_uri: str | None = None,
    study: str | None = None,
    experiments: Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
    out: Path | None = None,
    objective: str | None = None,
    level: float = 0.95,
    logx: bool = False,
    log: bool = True,
    client: "MlflowClient | None" = None,
) -> Report:
    from analysis.store import open_client

    check_level(level)
    client = client or open_client(tracking_uri)
    sel = select(client, study, experiments, run_ids, objective)
    strengths = plots.numeric(sel.runs.get(f"params.{P_STRENGTH}", pd.Series(dtype=object)))
    if strengths.notna().sum() == 0:
        raise NoDataError(
            f"no run of {sel.name!r} has a numeric {P_STRENGTH} param: the strength analysis needs "
            "runs of a crop method with an adversarial strength (crop.method=paramcrop), ideally "
            "with several values of crop.strength."
        )
    values, notes = objective_values(sel, KEYS)
    data = strength_data(values, level)
    if data[data[P_CROP] != BASELINE_METHOD].empty:
        raise NoDataError(f"the runs of {sel.name!r} with a {P_STRENGTH} have no {sel.objective} value")
    report = Report(f"strength ({sel.kind} {sel.name})", notes=sel.notes + notes)
    if data[data[P_CROP] == BASELINE_METHOD].empty:
        report.warnings.append(f"no random-crop runs ({P_CROP}=random) with {sel.objective} in "
                               f"{sel.name!r}: the figure has no reference line")
    what = {"study": "Study", "experiment": "Experiment", "runs": "Runs"}[sel.kind]
    title = f"{what} {sel.name}: {sel.objective} vs λ" if sel.kind != "runs" else f"{sel.objective} vs λ"
    with plots.paper_style():
        fig = figure(data, title, sel.objective, level, logx)
        writers = {**plots.figure_writers(fig, "strength"), "strength.csv": plots.csv_writer(data)}
        plots.publish(report, client, sel, out, writers, log)
    shown = data.assign(**{P_FRAMEWORK: [plots.param_label(P_FRAMEWORK, f) for f in data[P_FRAMEWORK]]})
    report.tables.append((f"{sel.name}: {sel.objective} per strength (references: random crop)", shown))
    report.data.update(strength=data, selection=sel)
    return report
