"""``paramcrop analyze table``: the objective per configuration: framework x backbone x head x
auxiliary losses x crop.

Each run counts once with its final value of the objective metric (the study's
``paramcrop.objective`` tag, default ``eval/knn_top1``, or ``--objective``). A configuration is
defined by every param that differs between the selected runs (:mod:`analysis.groups`: all but
the seed and run bookkeeping), never pooled; rows are ``framework.name`` · ``backbone.name``,
``head.name`` and the auxiliary-loss weights ``losses.region``, ``losses.order`` (0 = off),
columns the crop (:func:`analysis.plots.crop_label`) plus ``key=value`` for each other param that
varies (``Random crop (baseline), crop.area=(0.5, 1.0)``); a run without a head or loss
param counts as head ``mlp``, losses off.
Per cell: ``n``, ``mean``, ``std`` (sample, ``ddof=1``; NaN for ``n = 1``) and the 95 %
t-interval (:mod:`analysis.stats`). Written as ``table.csv`` (tidy, one row per configuration;
the ``losses`` column names the auxiliary losses that are on: ``none``, ``region``, ``order``,
``region+order``, with the weight when it is not 1, ``region=0.5``; one column per other varying
param), ``table.md`` (rows framework · backbone, head, losses; columns crop configuration; cells
``mean ± std (n=k)``) and a heatmap of the means (``table.png``, ``table.pdf``; head and losses
are part of the row labels when they vary, else named in the title when not the default).
Both files also give each configuration's ``late_share``: the share of the total change of its mean
``view/iou`` trajectory made in the last quarter of training (:func:`analysis.iou_curves.late_share`;
from the runs the table counts, on the progress grid of 101 points; empty without a ``view/iou``
history or a change of at least 0.01), a column of table.csv and a section of table.md.
"""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from analysis import plots
from analysis.compare import DIFF_COLUMNS, diff_lines, explanation, paired
from analysis.family import choose_baseline
from analysis.errors import NoDataError
from analysis.iou_curves import LATE_SHARE, late_shares
from analysis.histories import load_histories
from analysis.load import RunQuery
from analysis.plots import P_BACKBONE, P_FRAMEWORK, P_HEAD, P_LOSSES, P_ORDER, P_REGION
from analysis.report import Report
from analysis.stats import STAT_COLUMNS, check_level, grouped_interval
from analysis.values import KEYS, ROW_PARAMS, seeded_values
from paramcrop import sinks

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

CROP_WRAP = 28
"""Heatmap column labels are wrapped at this many characters."""
LOSSES = "losses"
"""Column of the readable auxiliary-losses label (:func:`analysis.plots.losses_label`)."""


def crop_order(frame: pd.DataFrame) -> list[str]:
    """Crop labels in configuration order (:func:`analysis.groups.configurations`): baseline
    first, then by method, numeric strength and the other label params."""
    return list(dict.fromkeys(frame.sort_values("config", kind="stable")["crop"]))


def extra_keys(values: pd.DataFrame, keys: Sequence[str] = KEYS) -> list[str]:
    """The label params of :func:`analysis.values.objective_values` beyond ``keys`` (other params that vary)."""
    fixed = set(keys) | {"run_id", "config", "configuration", "objective"}
    return [c for c in values.columns if c not in fixed]


def losses_labels(table: pd.DataFrame) -> list[str]:
    """:func:`analysis.plots.losses_label` of each row's auxiliary-loss weights."""
    return [plots.losses_label(dict(zip(P_LOSSES, w))) for w in zip(*(table[p] for p in P_LOSSES))]


def objective_table(values: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per configuration: :data:`KEYS`, the other varying params, the ``losses`` and
    ``crop`` labels, ``config`` and stats, sorted by framework, backbone, head (MLP first),
    losses (none first), crop (baseline first)."""
    extras = extra_keys(values)
    stats = grouped_interval(values, ["config"], "objective", level)
    info = values.drop_duplicates("config")[["config", *KEYS, *extras, "configuration"]]
    table = stats.merge(info, on="config").rename(columns={"configuration": "crop"})
    table[LOSSES] = losses_labels(table)
    table["_o"] = table["config"]
    table["_f"] = table[P_FRAMEWORK].map(plots.sort_key)
    table["_b"] = table[P_BACKBONE].map(plots.sort_key)
    table["_h"] = table[P_HEAD].map(plots.head_sort_key)
    table["_j"] = [plots.losses_sort_key(r, o) for r, o in zip(table[P_REGION], table[P_ORDER])]
    table = table.sort_values(["_f", "_b", "_h", "_j", "_o"], kind="stable")
    return table.reset_index(drop=True)[KEYS + extras + [LOSSES, "crop", "config"] + STAT_COLUMNS]


def cell_text(mean: float, std: float, n: int) -> str:
    if n == 0 or mean != mean:
        return "–"
    if n == 1 or std != std:
        return f"{mean:.3f} (n={n})"
    return f"{mean:.3f} ± {std:.3f} (n={n})"


def row_label(framework, backbone) -> str:
    return f"{plots.param_label(P_FRAMEWORK, framework)} · {plots.param_label(P_BACKBONE, backbone)}"


ROW_NAMES = ["framework · backbone", "head", LOSSES]


def _rows(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(framework · backbone, head label, losses label) of each row of ``table``."""
    return list(zip([row_label(f, b) for f, b in zip(table[P_FRAMEWORK], table[P_BACKBONE])],
                    [plots.head_label(h) for h in table[P_HEAD]], table[LOSSES]))


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """Rows (framework · backbone, head, losses), columns crop labels, cells :func:`cell_text`."""
    rows = _rows(table)
    t = table.assign(_r=[r[0] for r in rows], _h=[r[1] for r in rows], _j=[r[2] for r in rows],
                     cell=[cell_text(m, s, n) for m, s, n in zip(table["mean"], table["std"], table["n"])])
    out = t.pivot(index=["_r", "_h", "_j"], columns="crop", values="cell")
    index = pd.MultiIndex.from_tuples(list(dict.fromkeys(rows)), names=["_r", "_h", "_j"])
    out = out.reindex(index=index, columns=crop_order(table)).fillna("–")
    out.index.names = ROW_NAMES
    out.columns.name = None
    return out


def markdown(table: pd.DataFrame, title: str, objective: str, level: float) -> str:
    w = wide(table)
    header = list(w.index.names) + list(w.columns)
    lines = [f"# {title}", "",
             f"Objective `{objective}`: mean ± sample std over runs (seeds/trials), n runs per cell. "
             f"Head: the projection head; losses: the auxiliary loss terms that are on (weight shown when "
             f"not 1). table.csv also holds the {plots.percent(level)} t-interval.", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * w.index.nlevels + [":---:"] * len(w.columns)) + "|"]
    lines += ["| " + " | ".join(list(idx) + list(r)) + " |" for idx, r in zip(w.index, w.to_numpy())]
    if LATE_SHARE in table.columns and table[LATE_SHARE].notna().any():
        lines += ["", "## When the views change", "",
                  f"`{LATE_SHARE}`: the share of the total change of the mean `view/iou` trajectory made in the last "
                  "quarter of training, (iou(0.75 T) - iou(T)) / (iou(0) - iou(T)); 0.25 for a linear change, "
                  "– for a change below 0.01.", "",
                  "| " + " | ".join([*ROW_NAMES, "crop", LATE_SHARE]) + " |", "|" + "---|" * 4 + ":---:|"]
        lines += ["| " + " | ".join([*row, crop, "–" if share != share else f"{share:.2f}"]) + " |"
                  for row, crop, share in zip(_rows(table), table["crop"], table[LATE_SHARE])]
    return "\n".join(lines) + "\n"


def heatmap_rows(table: pd.DataFrame) -> tuple[list[str], str, str]:
    """Row labels of the heatmap, its y-axis label and a title suffix. Each of framework · backbone,
    head and losses is part of the rows when it varies; a constant one is named in the title
    instead (head and losses only when not the default), framework · backbone stays in the
    rows when it is all that could label them."""
    rows = _rows(table)
    parts = [{r[i] for r in rows} for i in range(3)]
    vary_h, vary_j = len(parts[1]) > 1, len(parts[2]) > 1
    vary_fb = len(parts[0]) > 1 or not (vary_h or vary_j)
    labels = [" · ".join(([r[0]] if vary_fb else []) + ([f"{r[1]} head"] if vary_h else [])
                         + ([plots.losses_words(r[2])] if vary_j else [])) for r in rows]
    ylabel = " · ".join((["framework · backbone"] if vary_fb else []) + (["head"] if vary_h else [])
                        + ([LOSSES] if vary_j else []))
    constant = (([rows[0][0]] if not vary_fb else [])
                + [f"{h} head" for h in parts[1] if not vary_h and h != plots.head_label(plots.DEFAULT_HEAD)]
                + [o for o in parts[2] if not vary_j and o != plots.NO_LOSSES])
    return labels, ylabel[0].upper() + ylabel[1:], f" ({', '.join(constant)})" if constant else ""


def heatmap(table: pd.DataFrame, title: str, objective: str):
    import seaborn as sns

    labels, ylabel, suffix = heatmap_rows(table)
    t = table.assign(row=labels)
    means = t.pivot(index="row", columns="crop", values="mean").reindex(
        index=list(dict.fromkeys(t["row"])), columns=crop_order(table))
    stds = t.pivot(index="row", columns="crop", values="std").reindex_like(means)
    annot = np.array([["" if np.isnan(m) else f"{m:.3f}" if np.isnan(s) else f"{m:.3f}\n±{s:.3f}"
                       for m, s in zip(mrow, srow)] for mrow, srow in zip(means.to_numpy(float), stds.to_numpy(float))],
                     dtype=object)
    ncols, nrows = means.shape[1], means.shape[0]
    width = plots.PANEL_WIDTH_IN if ncols <= 3 else min(2 * plots.PANEL_WIDTH_IN, 1.5 + 0.9 * ncols)
    label_in = 0.06 * max(len(r) for r in labels)  # long row labels (head, losses) must not squeeze the cells
    width = max(width, min(2 * plots.PANEL_WIDTH_IN, label_in + 0.9 + 0.6 * ncols))
    columns = [textwrap.fill(c, CROP_WRAP) for c in means.columns]  # long labels (varying params): wrapped
    crop_in = 0.06 * max(len(line) for c in columns for line in c.splitlines()) / 2  # at 30°: half is height
    crop_in += 0.12 * (max(c.count("\n") for c in columns))
    fig = plots.new_figure(width, 1.3 + 0.45 * nrows + max(0.0, crop_in - 0.4))
    ax = fig.subplots()
    sns.heatmap(means, annot=annot, fmt="", cmap="viridis", ax=ax, linewidths=0.5, linecolor="white",
                cbar_kws={"label": objective}, annot_kws={"fontsize": plots.FONT_PT})
    ax.grid(False)
    ax.tick_params(length=0)
    ax.set_xlabel("Crop")
    ax.set_ylabel(ylabel)
    ax.set_xticks(ax.get_xticks(), columns)
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title + suffix)
    return fig


def table(query: RunQuery, level: float = 0.95, baseline: str | None = None,
          client: "MlflowClient | None" = None) -> Report:
    """Compute, write and (for a study) log the objective table and its heatmap; with a baseline
    (``baseline``, else the one random-crop configuration when there is exactly one) also each
    configuration's paired difference from it (:mod:`analysis.compare`: columns ``pairs, diff,
    diff_std, diff_lower, diff_upper, unpaired`` in table.csv, a second table in table.md)."""
    check_level(level)
    client, sel = query.resolve(client)
    values, configs, notes = seeded_values(sel, omit=ROW_PARAMS)
    chosen = choose_baseline(sel.runs, configs, baseline, required=baseline is not None)
    tab = objective_table(values.drop(columns="seed"), level)
    history = load_histories(client, list(values["run_id"]), [sinks.VIEW_IOU])
    tab[LATE_SHARE] = tab["config"].map(late_shares(sel.runs, history, values[["run_id", "config"]]))
    title = sel.title(sel.objective)
    md = markdown(tab, title, sel.objective, level)
    if chosen is None:
        notes.append("no paired differences: there is not exactly one random-crop configuration; choose a "
                     "baseline with --baseline LABEL or --baseline KEY=VALUE,...")
    elif chosen not in set(values["config"]):
        if baseline is not None:
            raise NoDataError(f"--baseline {baseline!r}: that configuration has no {sel.objective} value")
        notes.append(f"no paired differences: the random-crop configuration has no {sel.objective} value")
    else:
        full = dict(zip(configs["config"], configs["configuration"]))
        diffs, pair_notes = paired(values.assign(configuration=values["config"].map(full)), chosen, level)
        notes += pair_notes
        tab = tab.merge(diffs[["config", *DIFF_COLUMNS]], on="config", how="left")
        md += "\n".join(["", f"## Difference from {full[chosen]}", "",
                         explanation(full[chosen], sel.objective, level), "", *diff_lines(diffs, level), ""])
    report = Report(f"table ({sel.kind} {sel.name})", notes=sel.notes + notes)
    with plots.paper_style():
        fig = heatmap(tab, title, sel.objective)
        writers = {"table.csv": plots.csv_writer(tab), "table.md": plots.text_writer(md),
                   **plots.figure_writers(fig, "table")}
        plots.publish(report, client, sel, query.out, writers, query.log)
    shown = wide(tab).reset_index()
    report.tables.append((f"{sel.name}: {sel.objective}, mean ± std (n)", shown))
    report.data.update(table=tab, selection=sel)
    return report
