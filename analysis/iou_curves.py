"""``paramcrop analyze iou-curves``: view IoU and center distance along training, per crop
configuration, against the random-crop baseline; ``paramcrop analyze learning-curves``: the same
for any logged metrics (default the online kNN, ``eval/knn_top1``, logged every ``eval.every``
steps).

Definitions (the CSV holds exactly what is plotted):

- **Configuration**: every param that differs between the selected runs (:mod:`analysis.groups`:
  all but the seed and run bookkeeping), never pooled; runs that differ only by seed are its
  repetitions. Labels: the crop, then ``key=value`` for each other param that varies (and every
  ``--hue`` param, varying or not). The random-crop baseline is the configurations with
  ``crop.method == "random"`` (several when the random crop's own params vary).
- **Values per step**: when a step was logged twice, the last value (by time) counts; NaN
  values are dropped.
- **x = progress** (default): ``step / D``. The trainer numbers steps ``0 .. S-1`` where ``S``
  is the run's ``steps`` param, so ``D = max(S - 1, largest logged step)``: a complete run goes
  from 0 to exactly 1, a run stopped early ends before 1, and a producer that numbers steps
  ``1 .. S`` also ends at 1. Without a ``steps`` param, ``D`` is the run's largest logged step
  (of the plotted metrics); ``D = 0`` counts as 1. The grid is ``--points`` (default 101)
  evenly spaced values 0, 0.01, ..., 1.
- **x = step**: the grid is ``--points`` integer steps evenly spaced between the smallest
  and largest logged step of all plotted runs (rounded, duplicates removed).
- **Alignment**: each run's curve is linearly interpolated at the grid points inside its own
  logged range (no extrapolation; exact where a grid point is a logged point). A run adds
  nothing to grid points outside its range.
- **Mean and band**: at each grid point, over the ``n`` runs of the configuration that have
  a value there: mean and the 95 % Student-t interval (:mod:`analysis.stats`); ``n = 1``
  gives no band. Rows with ``n = 0`` are not plotted and not in the CSV.
- **Summary table**: per configuration, the mean at the first, middle (grid point nearest
  the midpoint of the first and last) and last plotted grid point of each metric, and the
  objective (each run's final value of the metric the study's ``paramcrop.objective`` tag
  names, default ``eval/knn_top1``) as mean ± std (n); for ``iou-curves`` also ``late_share``.
- **late_share** (:func:`late_share`, "is the change gradual?"): the share of the total change of
  the mean IoU trajectory (the plotted mean of ``view/iou``, or ``view/iou_xy`` / ``_t`` with
  ``--axes``) that happens in the last quarter of training, ``(m(x_q) - m(x_T)) / (m(x_0) - m(x_T))``
  with ``x_0`` and ``x_T`` the first and last plotted grid points (0 and 1 for complete runs on the
  progress axis), ``x_q = x_0 + 0.75 (x_T - x_0)`` and ``m`` the mean linearly interpolated between
  grid points: 0.25 for a linear change, 1 when all of it comes in the last quarter, outside [0, 1]
  when the trajectory turns back. Undefined (empty) when the total change ``|m(x_0) - m(x_T)|`` is
  below :data:`LATE_MIN_CHANGE` (0.01 IoU: no change to apportion, e.g. the random crop) or the
  trajectory has fewer than 2 points. ``analyze table`` reports it too (:func:`late_shares`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from analysis import groups, plots
from analysis.errors import NoDataError, NotFoundError
from analysis.histories import last_per_step, load_histories
from analysis.load import RunQuery, column, require_metrics
from analysis.plots import P_CROP, P_STEPS
from analysis.report import Report
from analysis.stats import STAT_COLUMNS, check_level, grouped_interval
from paramcrop import sinks

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

AXES_METRICS = {
    "xyt": (sinks.VIEW_IOU, sinks.VIEW_CENTER_DISTANCE),
    "xy": (sinks.VIEW_IOU_XY, sinks.VIEW_CENTER_DISTANCE_XY),
    "t": (sinks.VIEW_IOU_T, sinks.VIEW_CENTER_DISTANCE_T),
}
AXES_WORDS = {"xyt": "spatio-temporal", "xy": "spatial", "t": "temporal"}
X_MODES = ("progress", "step")
STEM = "iou-curves"


def metric_label(metric: str) -> str:
    """Y-axis label with its unit."""
    for axes, (iou, distance) in AXES_METRICS.items():
        if metric == iou:
            return f"View IoU, {AXES_WORDS[axes]} (0–1)"
        if metric == distance:
            return f"Center distance, {AXES_WORDS[axes]}\n(normalised coords, clip = [−1, 1])"
    if metric == sinks.EVAL_KNN_TOP1:
        return "kNN top-1 (online, 0–1)"
    return metric


def _bounded(metric: str) -> bool:
    """Whether the metric lives in [0, 1] (IoU, accuracies, recalls): its axis is kept inside."""
    name = metric.split("/")[-1]
    return metric.startswith("eval/") or "iou" in name


def x_label(x: str) -> str:
    return "Training progress (fraction of steps)" if x == "progress" else "Training step"


# --- data ----------------------------------------------------------------------------------
def configurations(runs: pd.DataFrame, hue: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """:func:`analysis.groups.configurations` with the ``hue`` params always in the labels: one
    row per run (``run_id, config, configuration, baseline, order`` and the label params).
    Returns the frame and the label params."""
    known = sorted(c[len("params."):] for c in runs.columns if c.startswith("params."))
    unknown = [h for h in hue if f"params.{h}" not in runs.columns]
    if unknown:
        raise NotFoundError(f"--hue {', '.join(unknown)}: no such param in these runs. "
                            f"Params: {', '.join(known) or 'none'}")
    frame, keys = groups.configurations(runs, show=list(dict.fromkeys(hue)))
    return frame.drop(columns="config"), keys


def align(history: pd.DataFrame, runs: pd.DataFrame, x: str = "progress") -> tuple[pd.DataFrame, list[str]]:
    """Histories with an ``x`` column (see module doc); returns ``(frame, notes)``."""
    if x not in X_MODES:
        raise NotFoundError(f"--x must be one of {', '.join(X_MODES)}, got {x!r}")
    h = last_per_step(history).dropna(subset=["value"]).copy()
    notes: list[str] = []
    if x == "step":
        h["x"] = h["step"].astype(float)
        return h, notes
    max_step = h.groupby("run_id")["step"].max()
    steps = pd.Series(plots.numeric(column(runs, f"params.{P_STEPS}")).to_numpy(), index=runs["run_id"])
    denom = {}
    for rid, top in max_step.items():
        planned = steps.get(rid, np.nan)
        if planned == planned and planned >= 1:
            if top > planned:
                notes.append(f"run {rid} logged step {top}, beyond its steps param ({planned:g}); "
                             "its progress is step / largest logged step")
            d = max(planned - 1, float(top))
        else:
            d = float(top)
        denom[rid] = d if d > 0 else 1.0
    h["x"] = h["step"] / h["run_id"].map(denom)
    return h, notes


def grid_for(aligned: pd.DataFrame, x: str, points: int) -> np.ndarray:
    if points < 2:
        raise NotFoundError(f"--points must be at least 2, got {points}")
    if x == "progress":
        return np.linspace(0.0, 1.0, points)
    return np.unique(np.round(np.linspace(aligned["x"].min(), aligned["x"].max(), points)))


def interpolate(aligned: pd.DataFrame, grid: np.ndarray) -> pd.DataFrame:
    """Each (run, metric) curve at the grid points inside its logged range:
    ``run_id, metric, x, value``."""
    parts = []
    tol = 1e-9 * max(1.0, float(np.abs(grid).max()))
    for (rid, metric), g in aligned.groupby(["run_id", "metric"], sort=False):
        g = g.sort_values("x")
        xs, ys = g["x"].to_numpy(float), g["value"].to_numpy(float)
        inside = grid[(grid >= xs[0] - tol) & (grid <= xs[-1] + tol)]
        if inside.size == 0:
            continue
        parts.append(pd.DataFrame({"run_id": rid, "metric": metric, "x": inside,
                                   "value": np.interp(inside, xs, ys)}))
    if not parts:
        return pd.DataFrame(columns=["run_id", "metric", "x", "value"])
    return pd.concat(parts, ignore_index=True)


def curves(selection_runs: pd.DataFrame, history: pd.DataFrame, metrics: Sequence[str],
           x: str = "progress", hue: Sequence[str] = (), points: int = 101,
           level: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """The plotted data: one row per (metric, configuration, x) with ``n, mean, std, lower,
    upper``; columns ``metric, configuration, baseline, <key params>, <x>, n, mean, std,
    lower, upper``. Returns ``(frame, notes)``."""
    configs, keys = configurations(selection_runs, hue)
    aligned, notes = align(history[history["metric"].isin(metrics)], selection_runs, x)
    grid = grid_for(aligned, x, points)
    values = interpolate(aligned, grid).merge(configs, on="run_id")
    stats = grouped_interval(values, ["metric", "configuration", "x"], "value", level)
    info = configs.drop(columns="run_id").drop_duplicates("configuration")
    out = stats.merge(info, on="configuration")
    out["metric_order"] = out["metric"].map({m: i for i, m in enumerate(metrics)})
    out = out.sort_values(["metric_order", "order", "x"], kind="stable").reset_index(drop=True)
    out = out.rename(columns={"x": x})
    return out[["metric", "configuration", "baseline", *keys, x, *STAT_COLUMNS]], notes


LATE_FROM = 0.75
"""Where the last quarter of training starts, as a fraction of the plotted span (:func:`late_share`)."""
LATE_MIN_CHANGE = 0.01
"""The smallest total change (in IoU) that :func:`late_share` apportions."""
LATE_SHARE = "late_share"


def late_share(x: np.ndarray, mean: np.ndarray) -> float:
    """The share of a mean trajectory's total change made in its last quarter (module doc):
    ``(m(x_q) - m(x_T)) / (m(x_0) - m(x_T))``, ``x_q = x_0 + 0.75 (x_T - x_0)``; ``x`` increasing, ``mean``
    the trajectory's values there. NaN when the total change is below :data:`LATE_MIN_CHANGE` or there
    are fewer than 2 points."""
    x, mean = np.asarray(x, float), np.asarray(mean, float)
    if x.size < 2 or not abs(mean[0] - mean[-1]) >= LATE_MIN_CHANGE:
        return float("nan")
    quarter = float(np.interp(x[0] + LATE_FROM * (x[-1] - x[0]), x, mean))
    return (quarter - mean[-1]) / (mean[0] - mean[-1])


def late_shares(runs: pd.DataFrame, history: pd.DataFrame, keys: pd.DataFrame, metric: str = sinks.VIEW_IOU,
                points: int = 101) -> pd.Series:
    """:func:`late_share` of each group's mean trajectory of ``metric`` on the progress grid of ``points``
    (the runs aligned and interpolated as the module doc says); ``keys``: ``run_id`` and one column
    naming each run's group. A Series by group; groups without the metric are absent."""
    key = next(c for c in keys.columns if c != "run_id")
    h = history[history["metric"] == metric]
    if h.empty:
        return pd.Series(dtype=float, name=LATE_SHARE)
    aligned, _ = align(h, runs)
    values = interpolate(aligned, grid_for(aligned, "progress", points)).merge(keys, on="run_id")
    means = values.groupby([key, "x"])["value"].mean()
    return pd.Series({k: late_share(g.index.get_level_values("x"), g.to_numpy()) for k, g in means.groupby(level=0)},
                     dtype=float, name=LATE_SHARE)


def summary(data: pd.DataFrame, selection_runs: pd.DataFrame, metrics: Sequence[str], x: str,
            objective: str, hue: Sequence[str] = (), late: str | None = None) -> pd.DataFrame:
    """Per configuration: runs, each metric's mean at start / middle / end, the :func:`late_share` of
    ``late`` (a metric; none without), the objective."""
    configs, _ = configurations(selection_runs, hue)
    rows = []
    for label, group in configs.sort_values("order", kind="stable").groupby("configuration", sort=False):
        row = {"configuration": label, "runs": len(group)}
        for metric in metrics:
            d = data[(data["configuration"] == label) & (data["metric"] == metric)]
            xs = d[x].to_numpy(float)
            if xs.size == 0:
                start = mid = end = np.nan
            else:
                mid_i = int(np.argmin(np.abs(xs - (xs[0] + xs[-1]) / 2)))
                start, mid, end = (float(d["mean"].iloc[i]) for i in (0, mid_i, -1))
            row.update({f"{metric} start": start, f"{metric} mid": mid, f"{metric} end": end})
            if metric == late:
                row[LATE_SHARE] = late_share(xs, d["mean"].to_numpy(float))
        vals = plots.numeric(column(selection_runs[selection_runs["run_id"].isin(group["run_id"])],
                                    f"metrics.{objective}")).dropna()
        if vals.empty:
            row[objective] = "–"
        elif len(vals) == 1:
            row[objective] = f"{vals.iloc[0]:.3f} (n=1)"
        else:
            row[objective] = f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f} (n={len(vals)})"
        rows.append(row)
    return pd.DataFrame(rows)


def display_summary(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The summary as short strings: ``0.81 → 0.76 → 0.71`` per metric."""
    out = table[["configuration", "runs"]].copy()
    for metric in metrics:
        out[metric] = [" → ".join("–" if v != v else f"{v:.2f}" for v in vals) for vals in
                       table[[f"{metric} start", f"{metric} mid", f"{metric} end"]].to_numpy(float)]
    if LATE_SHARE in table.columns:
        out[LATE_SHARE] = table[LATE_SHARE]
    out["objective"] = table.iloc[:, -1]
    return out


# --- figure --------------------------------------------------------------------------------
def draw_metric(ax, data: pd.DataFrame, metric: str, x: str, styles: dict) -> None:
    d = data[data["metric"] == metric]
    for label, g in d.groupby("configuration", sort=False):
        baseline = bool(g["baseline"].iloc[0])
        colour, linestyle = styles[label]
        ax.plot(g[x], g["mean"], color=colour, linestyle=linestyle,
                linewidth=1.6 if baseline else 1.4, label=label, zorder=3 if baseline else 2)
        band = g.dropna(subset=["lower", "upper"])
        if not band.empty:
            ax.fill_between(band[x], band["lower"], band["upper"], color=colour,
                            alpha=0.15 if baseline else 0.2, linewidth=0, zorder=1)
    ax.set_xlabel(x_label(x))
    ax.set_ylabel(metric_label(metric))
    if x == "progress":
        ax.set_xlim(0, 1)
    lo, hi = ax.get_ylim()
    if _bounded(metric):  # a t-band of few runs (t = 12.7 at n = 2) must not stretch a [0, 1] axis
        ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
    elif "distance" in metric:  # distances are >= 0; the top keeps the means in view, not the widest band
        ax.set_ylim(max(lo, 0.0), min(hi, 1.25 * float(d["mean"].max()) + 0.05))


BASELINE_STYLES = [(plots.BASELINE_COLOUR, "--"), ("0.5", ":"), ("0.35", "-."), ("0.6", (0, (5, 1, 1, 1)))]
"""Grey and dash of each random-crop configuration (several when the random crop's params vary)."""


def line_styles(data: pd.DataFrame) -> dict:
    """Configuration label -> (colour, linestyle): palette colours, solid; baselines grey, dashed."""
    labels = list(dict.fromkeys(data["configuration"]))
    baseline = list(dict.fromkeys(data.loc[data["baseline"], "configuration"]))
    others = [lab for lab in labels if lab not in baseline]
    pal = plots.palette(len(others))
    styles = {lab: (pal[i], "-") for i, lab in enumerate(others)}
    styles.update({lab: BASELINE_STYLES[i % len(BASELINE_STYLES)] for i, lab in enumerate(baseline)})
    return styles


def figures(data: pd.DataFrame, metrics: Sequence[str], x: str, title: str, separate: bool = False,
            level: float = 0.95, stem: str = STEM) -> list[tuple[str, "Figure"]]:
    """``[(file stem, figure)]``: one figure with a panel per metric, or one per metric.
    Build and save inside :func:`analysis.plots.paper_style`."""
    from matplotlib.lines import Line2D

    styles = line_styles(data)
    labels = list(dict.fromkeys(data["configuration"]))
    baseline = set(data.loc[data["baseline"], "configuration"])
    handles = [Line2D([], [], color=styles[lab][0], linestyle=styles[lab][1],
                      linewidth=1.6 if lab in baseline else 1.4) for lab in labels]
    legend_title = f"Mean over runs, {plots.percent(level)} CI shaded"
    ncol = len(labels) if len(labels) <= 4 else 3
    out = []
    groups = [[m] for m in metrics] if separate else [list(metrics)]
    for group in groups:
        width = plots.PANEL_WIDTH_IN * len(group) + (0.2 if len(group) > 1 else 0)
        ncol_g = ncol if len(group) > 1 else min(len(labels), 2)
        fits = int(width // plots.legend_width_in(max(map(len, labels))))  # long labels (varying params): fewer columns
        ncol_g = max(1, min(ncol_g, fits))
        rows_g = -(-len(labels) // ncol_g)
        fig = plots.new_figure(width, plots.PANEL_HEIGHT_IN + 0.45 + 0.17 * rows_g)
        axes = fig.subplots(1, len(group), squeeze=False)[0]
        for ax, metric in zip(axes, group):
            draw_metric(ax, data, metric, x, styles)
        fig.suptitle(title)
        fig.legend(handles, labels, loc="outside lower center", ncols=ncol_g, frameon=False,
                   title=legend_title)
        name = stem if not separate else f"{stem}-{group[0].split('/')[-1].replace('_', '-')}"
        out.append((name, fig))
    return out


# --- the commands --------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveOptions:
    """How curves are drawn (the options ``iou-curves`` and ``learning-curves`` share; see the
    module doc): the x axis, extra ``hue`` params, one figure per metric (``separate``), grid
    ``points``, confidence ``level``, skipping runs without the metrics (``skip_incomplete``)."""

    x: str = "progress"
    hue: Sequence[str] = ()
    separate: bool = False
    points: int = 101
    level: float = 0.95
    skip_incomplete: bool = False


def iou_curves(query: RunQuery, options: CurveOptions = CurveOptions(), axes: str = "xyt",
               client: "MlflowClient | None" = None) -> Report:
    """Compute, plot, write and (for a study) log the IoU / center-distance curves."""
    if axes not in AXES_METRICS:
        raise NotFoundError(f"--axes must be one of {', '.join(AXES_METRICS)}, got {axes!r}")
    subject = "view disparity during training" + (f" ({AXES_WORDS[axes]})" if axes != "xyt" else "")
    why = ("the curves need the per-step view metrics that training logs for every crop method (runs from "
           "another tool, or runs that failed before their first logged step, lack them)")
    return metric_curves(query, options, list(AXES_METRICS[axes]), STEM if axes == "xyt" else f"{STEM}-{axes}",
                         subject, why, client, late=AXES_METRICS[axes][0])


LEARNING_STEM = "learning-curves"


def learning_curves(query: RunQuery, options: CurveOptions = CurveOptions(),
                    metrics: Sequence[str] = (sinks.EVAL_KNN_TOP1,), client: "MlflowClient | None" = None) -> Report:
    """Compute, plot, write and (for a study) log the curves of ``metrics`` (default the online kNN)."""
    if not metrics:
        raise NotFoundError("give at least one --metric")
    why = ("Evaluation metrics such as eval/knn_top1 have a curve only in runs that evaluate during training: "
           "set config.eval.every (the built-in specs use 50).")
    return metric_curves(query, options, list(dict.fromkeys(metrics)), LEARNING_STEM, "learning curves", why, client)


def metric_curves(query: RunQuery, options: CurveOptions, metrics: list[str], stem: str, subject: str, why: str,
                  client: "MlflowClient | None" = None, late: str | None = None, draw=figures,
                  only_with: Sequence[str] = (), summarised: Sequence[str] | None = None,
                  baseline: bool = True) -> Report:
    """The curves of ``metrics`` per configuration (module doc): figures ``<stem>.png/.pdf`` (``draw``, with
    :func:`figures`' arguments), the plotted data ``<stem>.csv``, a summary table of the ``summarised``
    metrics (default all) with the :func:`late_share` of ``late``; ``why`` explains runs that lack the
    metrics. Runs without the ``only_with`` metrics are left out (a note names them) whatever
    ``options.skip_incomplete`` says; ``baseline``: a random-crop baseline belongs in the plot (a
    warning when there is none)."""
    o = options
    if o.x not in X_MODES:
        raise NotFoundError(f"--x must be one of {', '.join(X_MODES)}, got {o.x!r}")
    check_level(o.level)
    client, sel = query.resolve(client)
    if only_with:
        require_metrics(sel, only_with, why, skip=True)
    require_metrics(sel, metrics, why, skip=o.skip_incomplete)
    history = load_histories(client, sel.run_ids, metrics)
    data, notes = curves(sel.runs, history, metrics, o.x, o.hue, o.points, o.level)
    if data.empty:
        raise NoDataError(f"no logged points of {', '.join(metrics)} fall on the plotting grid")
    report = Report(f"{stem} ({sel.kind} {sel.name})", notes=sel.notes + notes)
    steps = history.groupby(["metric", "run_id"])["step"].nunique()
    for metric, single in (steps[steps < 2].groupby(level="metric")):
        report.warnings.append(f"{len(single)} run(s) logged {metric} at one step only: a point, not a curve. "
                               + why)
    if baseline and not data["baseline"].any():
        where = f"experiment {sel.name!r}" if sel.kind != "runs" else "the given runs"
        report.warnings.append(
            f"no random-crop baseline in {sel.kind} {sel.name!r} (no run with {P_CROP}=random); "
            "plotting without it. To add one: include `random` in the study's crop.method "
            f"choices and resume the study, or log a `paramcrop train` run with {P_CROP}=random "
            f"into {where}, or pass a baseline run's id together with these via --runs."
        )
    shown = list(metrics if summarised is None else summarised)
    table = summary(data, sel.runs, shown, o.x, sel.objective, o.hue, late)
    with plots.paper_style():
        writers = {}
        for name, fig in draw(data, metrics, o.x, sel.title(subject), o.separate, o.level, stem):
            writers.update(plots.figure_writers(fig, name))
        writers[f"{stem}.csv"] = plots.csv_writer(data)
        plots.publish(report, client, sel, query.out, writers, query.log)
    late_words = f", {LATE_SHARE} of {late}" if late else ""
    report.tables.append((f"{sel.name}: {', '.join(shown)} at start → middle → end of training (x = {o.x})"
                          f"{late_words}, objective {sel.objective} (mean ± std, n runs)", display_summary(table, shown)))
    report.data.update(curves=data, summary=table, selection=sel)
    return report
