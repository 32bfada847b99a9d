"""``paramcrop analyze generator``: a learned crop's generator diagnostics over training, beside ``view/iou``.

What each run logs at every log step (:mod:`paramcrop.crops.adversary`, :mod:`paramcrop.crops.paramcrop`):
``train/generator_grad_norm`` (the generator's gradient norm before its optimiser step),
``train/generator_update_norm`` (the norm of the change that step made), ``train/generator_saturation``
(the share of its squashed outputs within 1 % of a bound) and ``train/cube_std/view<v>/<param>`` (the
batch standard deviation of each view's cube parameters). The runs are those that logged them (learned
crops, lambda 0 included); the others (random, hardest, ...) are left out with a note.

Definitions as ``iou-curves`` (:mod:`analysis.iou_curves`): configurations (every differing param,
seed aside, never pooled), the progress axis, interpolation on the grid, mean over the
configuration's runs (seeds) and its t-interval band. Figure ``generator.png``/``.pdf``: two rows of
five panels, ``view/iou``, the gradient norm and the update norm (log axes when every mean is > 0),
the saturation, then one panel per cube parameter with the std of view 1 (solid) and view 2 (dashed).
``generator.csv``: the plotted data (iou-curves' columns, one ``metric`` per logged name). The
printed summary: start → middle → end of ``view/iou``, the norms and the saturation, and
``late_share`` of ``view/iou``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd

from analysis import plots
from analysis.iou_curves import CurveOptions, draw_metric, line_styles, metric_curves, x_label
from analysis.load import RunQuery
from analysis.report import Report
from paramcrop import sinks

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

STEM = "generator"
SCALARS = (sinks.VIEW_IOU, sinks.GENERATOR_GRAD_NORM, sinks.GENERATOR_UPDATE_NORM, sinks.GENERATOR_SATURATION)
METRICS = (*SCALARS, *sinks.CUBE_STD_METRICS)
LABELS = {sinks.GENERATOR_GRAD_NORM: "Generator gradient norm\n(before its step)",
          sinks.GENERATOR_UPDATE_NORM: "Generator update norm\n(parameter change of a step)",
          sinks.GENERATOR_SATURATION: "Saturated outputs (share,\nwithin 1 % of a bound)"}
LOG_AXES = (sinks.GENERATOR_GRAD_NORM, sinks.GENERATOR_UPDATE_NORM)
COLUMNS = 5


def figures(data: pd.DataFrame, metrics: Sequence[str], x: str, title: str, separate: bool = False,
            level: float = 0.95, stem: str = STEM) -> list[tuple[str, "Figure"]]:
    """``[(stem, figure)]``: the panels of the module doc (``metrics``, ``separate``: as
    :func:`analysis.iou_curves.figures` takes them; the layout is fixed)."""
    from matplotlib.lines import Line2D

    styles = line_styles(data)
    dashed = {label: (colour, "--") for label, (colour, _) in styles.items()}
    labels = list(dict.fromkeys(data["configuration"]))
    width = plots.PANEL_WIDTH_IN * 0.8 * COLUMNS
    fits = max(1, int(width // plots.legend_width_in(max(map(len, labels)))))
    rows = -(-len(labels) // fits)
    fig = plots.new_figure(width, 2 * plots.PANEL_HEIGHT_IN * 0.9 + 0.6 + 0.17 * rows)
    axes = fig.subplots(2, COLUMNS).flatten()
    for ax, metric in zip(axes, SCALARS):
        draw_metric(ax, data, metric, x, styles)
        ax.set_ylabel(LABELS.get(metric, ax.get_ylabel()))
        means = data.loc[data["metric"] == metric, "mean"]
        if metric in LOG_AXES and len(means) and (means > 0).all():
            ax.set_yscale("log")
    for ax, param in zip(axes[len(SCALARS):], sinks.CUBE_PARAMS):
        draw_metric(ax, data, sinks.cube_std_metric(1, param), x, styles)
        draw_metric(ax, data, sinks.cube_std_metric(2, param), x, dashed)
        ax.set_ylabel(f"Batch std of {param}\n(view 1 solid, view 2 dashed)")
        ax.set_xlabel(x_label(x))
        ax.set_ylim(bottom=0)
    handles = [Line2D([], [], color=styles[label][0], linestyle="-") for label in labels]
    fig.suptitle(title)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), fits), frameon=False,
               title=f"Mean over runs, {plots.percent(level)} CI shaded")
    return [(stem, fig)]


def generator(query: RunQuery, options: CurveOptions = CurveOptions(),
              client: "MlflowClient | None" = None) -> Report:
    """Compute, plot, write and (for a study) log the generator diagnostics (module doc)."""
    why = ("learned crops (crop.method paramcrop) log the generator diagnostics at every log step (runs "
           "logged before the diagnostics existed have none); other crops have no generator")
    return metric_curves(query, options, list(METRICS), STEM, "the generator during training", why, client,
                         late=sinks.VIEW_IOU, draw=figures, only_with=[sinks.GENERATOR_GRAD_NORM],
                         summarised=SCALARS, baseline=False)
