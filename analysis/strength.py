"""``paramcrop analyze strength``: the objective against the adversarial strength λ.

Runs with a numeric ``crop.strength`` param are grouped by configuration (:mod:`analysis.groups`:
every param that differs, never pooled); a *setting* (framework, projection head and
auxiliary-loss weights, as in :mod:`analysis.tables`; runs without those params count as head
``mlp``, losses off) is a colour, each other varying param (``steps=100``, another crop
param) a series of its own; each configuration's final objective values give
``n, mean, std`` and the 95 % t-interval (:mod:`analysis.stats`), drawn as points with error bars
joined by lines, one colour per setting (and one line per crop method when several have a
strength), series dodged sideways a little so that their bars stay visible. The random-crop runs (``crop.method == random``) of each setting give a horizontal
dashed reference line at their mean objective. Legends name the head and losses only when
they vary. ``strength.csv`` holds the plotted rows, the references with ``crop.method = random``
and an empty strength.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import plots
from analysis.errors import NoDataError
from analysis.load import RunQuery
from analysis.plots import BASELINE_METHOD, P_CROP, P_FRAMEWORK, P_HEAD, P_ORDER, P_REGION, P_STRENGTH
from analysis.report import Report
from analysis.stats import STAT_COLUMNS, check_level, grouped_interval
from analysis.tables import LOSSES, extra_keys, losses_labels
from analysis.values import objective_values

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

SETTING = [P_FRAMEWORK, P_HEAD, P_REGION, P_ORDER]
KEYS = SETTING + [P_CROP, P_STRENGTH]


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by framework, head (MLP first), losses (none first), crop method (random last),
    configuration, strength."""
    key = [(plots.sort_key(r[P_FRAMEWORK]), plots.head_sort_key(r[P_HEAD]),
            plots.losses_sort_key(r[P_REGION], r[P_ORDER]), r[P_CROP] == BASELINE_METHOD,
            plots.sort_key(r[P_CROP]), r["configuration"], plots.sort_key(r[P_STRENGTH])) for _, r in frame.iterrows()]
    return frame.iloc[sorted(range(len(frame)), key=key.__getitem__)]


def strength_data(values: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Rows ``framework.name, head.name, losses.region, losses.order, losses,
    crop.method, crop.strength (float), <other varying params>, configuration, n, mean, std, lower,
    upper``: per setting, its strength points, then its random-crop references (empty strength).
    ``configuration`` labels a series: the crop and the other varying params, without strength
    and setting (:mod:`analysis.groups`)."""
    v = values.copy()
    v[P_STRENGTH] = plots.numeric(v[P_STRENGTH])
    extras = extra_keys(v, KEYS)
    info = v.drop_duplicates("config")[["config", *KEYS, *extras, "configuration"]]
    points = grouped_interval(v[v[P_STRENGTH].notna()], ["config"], "objective", level).merge(info, on="config")
    refs = grouped_interval(v[v[P_CROP] == BASELINE_METHOD], ["config"], "objective", level).merge(info, on="config")
    refs[P_STRENGTH] = np.nan
    out = _order(pd.concat([points, refs], ignore_index=True)).reset_index(drop=True)
    out[LOSSES] = losses_labels(out)
    return out[SETTING + [LOSSES, P_CROP, P_STRENGTH, *extras, "configuration"] + STAT_COLUMNS]


def setting_labels(data: pd.DataFrame) -> list[str]:
    """Each row's setting in words: the framework, plus the head and the losses when they
    vary across ``data`` (``"SimCLR"``, ``"SimCLR, CATE head, region"``)."""
    vary_head = data[P_HEAD].nunique() > 1
    vary_losses = data[LOSSES].nunique() > 1
    return [", ".join([plots.param_label(P_FRAMEWORK, fw)]
                      + ([plots.param_label(P_HEAD, h)] if vary_head else [])
                      + ([plots.losses_words(j)] if vary_losses else []))
            for fw, h, j in zip(data[P_FRAMEWORK], data[P_HEAD], data[LOSSES])]


def dodge(x: np.ndarray, j: int, m: int, all_x: pd.Series, logx: bool) -> np.ndarray:
    """Series ``j`` of ``m`` shifted sideways so that error bars at the same strength do not hide
    each other: by 1.5 % of the strength range per series (2 % of a decade on a log axis)."""
    offset = j - (m - 1) / 2
    if logx:
        return x * 10 ** (0.02 * offset)
    span = float(all_x.max() - all_x.min()) or 1.0
    return x + 0.015 * span * offset


def figure(data: pd.DataFrame, title: str, objective: str, level: float, logx: bool = False):
    data = data.assign(setting=setting_labels(data))
    swept = data[data[P_CROP] != BASELINE_METHOD]
    refs = data[data[P_CROP] == BASELINE_METHOD]
    n_entries = swept.groupby(["setting", "configuration"], dropna=False).ngroups + len(refs)
    longest = max(len(f"{c}, {s}") for c, s in zip(data["configuration"], data["setting"]))
    width = max(plots.PANEL_WIDTH_IN, plots.legend_width_in(longest))
    fig = plots.new_figure(width, plots.PANEL_HEIGHT_IN + 0.45 + 0.17 * n_entries)
    ax = fig.subplots()
    settings = list(dict.fromkeys(data["setting"]))
    pal = plots.palette(len(settings))
    colour = dict(zip(settings, pal))
    markers = ["o", "s", "^", "D", "v"]
    series = swept.groupby(["setting", "configuration"], sort=False, dropna=False)
    for j, ((setting, configuration), g) in enumerate(series):
        yerr = np.vstack([g["mean"] - g["lower"], g["upper"] - g["mean"]])
        x = dodge(g[P_STRENGTH].to_numpy(float), j, series.ngroups, swept[P_STRENGTH], logx)
        ax.errorbar(x, g["mean"], yerr=np.nan_to_num(yerr), color=colour[setting],
                    marker=markers[j % len(markers)], markersize=4, capsize=2.5, linewidth=1.4,
                    label=f"{configuration}, {setting}")
    for _, r in refs.iterrows():
        ax.axhline(r["mean"], color=colour[r["setting"]], linestyle="--", linewidth=1.2,
                   label=f"{r['configuration']}, {r['setting']}")
    if logx:
        positive = swept[P_STRENGTH][swept[P_STRENGTH] > 0]
        ax.set_xscale("symlog", linthresh=max(1e-3, float(positive.min()) if len(positive) else 1e-3))
    strengths = np.unique(swept[P_STRENGTH].to_numpy(float))
    if len(strengths) <= 4:  # ticks at the measured strengths only (dodged points sit beside them)
        ax.set_xticks(strengths, [f"{v:g}" for v in strengths])
    if len(strengths) == 1 and not logx:  # one strength: keep the dodged points close to it
        pad = 0.1 * max(abs(strengths[0]), 1.0)
        ax.set_xlim(strengths[0] - pad, strengths[0] + pad)
    ax.set_xlabel("Adversarial strength λ (crop.strength)")
    ax.set_ylabel(f"{objective} (final)")
    fig.suptitle(title)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(plots.BASELINE_LABEL))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=1,
               frameon=False, title=f"Mean over runs, {plots.percent(level)} CI bars")
    return fig


def strength(query: RunQuery, level: float = 0.95, logx: bool = False,
             client: "MlflowClient | None" = None) -> Report:
    """Compute, plot, write and (for a study) log the objective-vs-strength figure."""
    check_level(level)
    client, sel = query.resolve(client)
    strengths = plots.numeric(sel.runs.get(f"params.{P_STRENGTH}", pd.Series(dtype=object)))
    if strengths.notna().sum() == 0:
        raise NoDataError(
            f"no run of {sel.name!r} has a numeric {P_STRENGTH} param: the strength analysis needs "
            "runs of a crop method with an adversarial strength (crop.method=paramcrop), ideally "
            "with several values of crop.strength."
        )
    values, notes = objective_values(sel, KEYS, omit=SETTING + [P_STRENGTH])
    data = strength_data(values, level)
    if data[data[P_CROP] != BASELINE_METHOD].empty:
        raise NoDataError(f"the runs of {sel.name!r} with a {P_STRENGTH} have no {sel.objective} value")
    report = Report(f"strength ({sel.kind} {sel.name})", notes=sel.notes + notes)
    if data[data[P_CROP] == BASELINE_METHOD].empty:
        report.warnings.append(f"no random-crop runs ({P_CROP}=random) with {sel.objective} in "
                               f"{sel.name!r}: the figure has no reference line")
    with plots.paper_style():
        fig = figure(data, sel.title(f"{sel.objective} vs λ"), sel.objective, level, logx)
        writers = {**plots.figure_writers(fig, "strength"), "strength.csv": plots.csv_writer(data)}
        plots.publish(report, client, sel, query.out, writers, query.log)
    shown = data.drop(columns=[P_REGION, P_ORDER]).assign(**{
        P_FRAMEWORK: [plots.param_label(P_FRAMEWORK, f) for f in data[P_FRAMEWORK]],
        P_HEAD: [plots.head_label(h) for h in data[P_HEAD]]})
    report.tables.append((f"{sel.name}: {sel.objective} per strength (references: random crop)", shown))
    report.data.update(strength=data, selection=sel)
    return report
