"""``paramcrop analyze sweet-spot``: downstream accuracy against the *measured* overlap of the two
views (the InfoMin figure, Tian et al. 2020), from a study of ``crop.method: matched`` random
crops at several ``crop.iou`` levels (and any other crops beside them).

Definitions (``sweet-spot.csv`` holds exactly what is plotted):

- **Per run**: ``iou_mean`` = the mean of its logged ``view/iou`` history (a step logged twice
  counts with its last value, NaN dropped, as everywhere); ``iou_start`` / ``iou_end`` = the mean
  of its first / last ``ceil(k / 10)`` logged points (10 % of the ``k`` points, at least one);
  the objective's final value (:func:`analysis.values.objective_values`). A run without a
  ``view/iou`` history cannot be placed on the x axis and is left out (a note names it).
- **Configurations** as everywhere (:mod:`analysis.groups`), never pooled; per configuration and
  objective over its ``n`` runs: the mean of each run value, and the Student-t interval of the
  objective (:mod:`analysis.stats`, ``level``).
- **The curve**: the matched configurations (``crop.method == matched``), x = mean measured IoU,
  y = mean objective with its interval, joined in IoU order. Matched configurations that differ
  in another param than ``crop.iou`` form separate curves (*series*, labelled by
  :func:`analysis.groups.configurations` without ``crop.iou``). Every other configuration: a marker
  at its mean IoU with its interval and an arrow from its start to its end IoU at the marker's
  height. One panel per objective, x from 0 to 1; ``ceiling`` (the supervised ceiling of the test
  kNN, ``benchmarks/supervised_ceiling.py``) is a dashed line in the ``eval/knn_top1`` panel.
- **Paired comparisons** per objective and series: the *best* level against the *easiest*
  (highest mean measured IoU) and the *hardest* (lowest) level, paired by seed
  (:func:`analysis.compare.paired`): mean of best - other, its t-interval, the pairs. The best
  level is the one with the highest mean of the *first* objective (the validation kNN by
  default), and the same level is compared on every objective: chosen on validation, reported on test.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from analysis import groups, plots
from analysis.compare import paired
from analysis.errors import NoDataError, NotFoundError
from analysis.histories import last_per_step, load_histories
from analysis.load import RunQuery, Selection, column
from analysis.plots import BASELINE_METHOD, P_CROP
from analysis.report import Report
from analysis.stats import check_level, grouped_interval
from analysis.values import seeded_values
from paramcrop import sinks

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

STEM = "sweet-spot"
MATCHED = "matched"
P_IOU = "crop.iou"
DEFAULT_OBJECTIVES = (sinks.EVAL_VAL_KNN_TOP1, sinks.EVAL_KNN_TOP1)
CEILING_METRIC = sinks.EVAL_KNN_TOP1
"""The metric whose supervised ceiling ``--ceiling`` is (``benchmarks/supervised_ceiling.py``)."""
CEILING_LABEL = "supervised ceiling"
COLUMNS = ["configuration", "method", "n", "iou_mean", "iou_start", "iou_end", "objective", "mean", "ci_low",
           "ci_high"]
PAIR_COLUMNS = ["objective", "series", "best", "versus", "other", "pairs", "diff", "diff_lower", "diff_upper",
                "unpaired"]
IOU_COLUMNS = ["iou_mean", "iou_start", "iou_end"]


# --- data ----------------------------------------------------------------------------------
def edge_points(k: int) -> int:
    """How many of a run's ``k`` logged points its start (or end) IoU averages: 10 %, rounded up."""
    return -(-k // 10)


def run_iou(history: pd.DataFrame) -> pd.DataFrame:
    """``run_id, iou_mean, iou_start, iou_end`` of each run's ``view/iou`` history (module doc)."""
    h = last_per_step(history[history["metric"] == sinks.VIEW_IOU]).dropna(subset=["value"])
    rows = []
    for rid, g in h.groupby("run_id", sort=False):
        v = g.sort_values("step")["value"].to_numpy(float)
        e = edge_points(len(v))
        rows.append({"run_id": rid, "iou_mean": float(v.mean()), "iou_start": float(v[:e].mean()),
                     "iou_end": float(v[-e:].mean())})
    return pd.DataFrame(rows, columns=["run_id", *IOU_COLUMNS])


def parse_objectives(objectives: Sequence[str]) -> list[str]:
    """``--objective`` values (repeatable, each may be comma-separated), in order, without repeats."""
    return list(dict.fromkeys(o.strip() for item in objectives for o in item.split(",") if o.strip()))


def check_objectives(sel: Selection, objectives: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(objectives, warnings)``: the ``objectives`` asked for (default :data:`DEFAULT_OBJECTIVES`)
    that some run has. One asked for that no run has: :class:`NotFoundError` (exit 2); a default one:
    left out with a warning (runs logged with ``data.val_fraction: 0`` have no ``eval/val/*``)."""
    asked = parse_objectives(objectives)
    wanted = asked or list(DEFAULT_OBJECTIVES)
    has = {o for o in wanted if plots.numeric(column(sel.runs, f"metrics.{o}")).notna().any()}
    missing = [o for o in wanted if o not in has]
    if missing and (asked or not has):
        logged = sorted(c[len("metrics."):] for c in sel.runs.columns
                        if c.startswith("metrics.") and sel.runs[c].notna().any())
        raise NotFoundError(
            f"no run of {sel.kind} {sel.name!r} has the objective {', '.join(map(repr, missing))}. "
            f"Metrics logged: {', '.join(logged) or 'none'}; choose with --objective METRIC (repeatable).")
    warnings = [f"no run of {sel.name!r} has {o}: its panel is left out" for o in missing]
    return [o for o in wanted if o in has], warnings


def series_labels(runs: pd.DataFrame) -> dict[str, str]:
    """run id -> its curve (*series*) for the matched runs among ``runs``: their configuration
    label without ``crop.iou`` (:func:`analysis.groups.configurations` of the matched runs), so the
    levels of one series differ in ``crop.iou`` alone."""
    matched = runs[column(runs, f"params.{P_CROP}") == MATCHED]
    configs, _ = groups.configurations(matched.reset_index(drop=True), omit=(P_IOU,))
    return dict(zip(configs["run_id"], configs["configuration"]))


def points(sel: Selection, objective: str, iou: pd.DataFrame, series: dict[str, str],
           level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(rows, values, notes)`` for one objective: one row per configuration (:data:`COLUMNS` and
    ``config, matched, series, std``: matched levels first by IoU, then the others in configuration
    order) and the per-run values behind them (``run_id, config, configuration, seed, objective``
    and the IoU columns)."""
    values, _, notes = seeded_values(dataclasses.replace(sel, objective=objective))
    values = values.merge(iou, on="run_id", how="inner")
    values["method"] = values[P_CROP]
    values["series"] = values["run_id"].map(series)
    stats = grouped_interval(values, ["config"], "objective", level)
    info = values.groupby("config", sort=False).agg(
        configuration=("configuration", "first"), method=("method", "first"), series=("series", "first"),
        **{c: (c, "mean") for c in IOU_COLUMNS})
    rows = stats.merge(info.reset_index(), on="config").rename(columns={"lower": "ci_low", "upper": "ci_high"})
    rows["objective"] = objective
    rows["matched"] = rows["method"] == MATCHED
    rows = rows.assign(_k=np.where(rows["matched"], rows["iou_mean"], np.inf))
    rows = rows.sort_values(["matched", "_k", "config"], ascending=[False, True, True], kind="stable")
    return rows.drop(columns="_k").reset_index(drop=True), values, notes


def best_levels(rows: pd.DataFrame) -> dict[str, int]:
    """Per series of matched levels: the ``config`` of the level with the highest mean objective."""
    matched = rows[rows["matched"]]
    return {series: int(lv.loc[lv["mean"].idxmax(), "config"]) for series, lv in matched.groupby("series", sort=False)}


def pairs(rows: pd.DataFrame, values: pd.DataFrame, objective: str, best_config: dict[str, int],
          level: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """Per series with two levels or more: the best level (``best_config``, :func:`best_levels` of the
    selecting objective) against the easiest and the hardest one, paired by seed
    (:func:`analysis.compare.paired`); :data:`PAIR_COLUMNS`. The best level compared with itself (it
    is the easiest or the hardest) has no difference (NaN) and ``pairs`` 0."""
    out, notes = [], []
    for series, lv in rows[rows["matched"]].groupby("series", sort=False):
        if len(lv) < 2 or best_config.get(series) not in set(lv["config"]):
            continue
        best = lv.loc[lv["config"] == best_config[series]].iloc[0]
        for versus, other in (("easiest", lv.loc[lv["iou_mean"].idxmax()]),
                              ("hardest", lv.loc[lv["iou_mean"].idxmin()])):
            row = {"objective": objective, "series": series, "best": best["configuration"], "versus": versus,
                   "other": other["configuration"], "pairs": 0, "diff": math.nan, "diff_lower": math.nan,
                   "diff_upper": math.nan, "unpaired": 0}
            if other["config"] != best["config"]:
                both = values[values["config"].isin([best["config"], other["config"]])]
                d, pair_notes = paired(both, int(other["config"]), level)
                notes += [f"{objective}: {n}" for n in pair_notes]
                row.update(d.iloc[0][["pairs", "diff", "diff_lower", "diff_upper", "unpaired"]].to_dict())
            out.append(row)
    return pd.DataFrame(out, columns=PAIR_COLUMNS), notes


def seeds_text(ns: pd.Series) -> str:
    lo, hi = int(ns.min()), int(ns.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


# --- figure --------------------------------------------------------------------------------
def _styles(data: pd.DataFrame) -> dict:
    """Curve or configuration label -> (colour, marker, linestyle): the series' curves first, then
    the other configurations; random-crop baselines in dark grey, dashed (the suite's convention)."""
    series = list(dict.fromkeys(data.loc[data["matched"], "series"]))
    others = data[~data["matched"]].drop_duplicates("configuration")
    coloured = [c for c, m in zip(others["configuration"], others["method"]) if m != BASELINE_METHOD]
    pal = plots.palette(len(series) + len(coloured))
    styles = {s: (pal[i], "o", "-") for i, s in enumerate(series)}
    markers = ["s", "^", "D", "v", "P", "X"]
    for j, (c, m) in enumerate(zip(others["configuration"], others["method"])):
        colour = plots.BASELINE_COLOUR if m == BASELINE_METHOD else pal[len(series) + coloured.index(c)]
        styles[c] = (colour, markers[j % len(markers)], "--" if m == BASELINE_METHOD else "-")
    return styles


def curve_label(series: str) -> str:
    return f"{series} ({P_IOU} levels)"


def figure(data: pd.DataFrame, objectives: Sequence[str], title: str, level: float, ceiling: float | None):
    """One panel per objective (module doc). Build and save inside :func:`analysis.plots.paper_style`."""
    from matplotlib.lines import Line2D

    styles = _styles(data)
    curves = {curve_label(s): styles[s] for s in dict.fromkeys(data.loc[data["matched"], "series"])}
    others = {c: styles[c] for c in dict.fromkeys(data.loc[~data["matched"], "configuration"])}
    handles = [Line2D([], [], color=col, marker=mk, markersize=4, linestyle=ls) for col, mk, ls in curves.values()]
    handles += [Line2D([], [], color=col, marker=mk, markersize=4.5, linestyle="none")
                for col, mk, _ in others.values()]
    labels = [*curves, *others]
    if ceiling is not None and CEILING_METRIC in objectives:
        handles.append(Line2D([], [], color=plots.BASELINE_COLOUR, linestyle=(0, (4, 2)), linewidth=1.0))
        labels.append(CEILING_LABEL)
    width = plots.PANEL_WIDTH_IN * len(objectives) + (0.2 if len(objectives) > 1 else 0)
    ncol = max(1, min(len(labels), 2 * len(objectives), int(width // plots.legend_width_in(max(map(len, labels))))))
    rows = -(-len(labels) // ncol)
    fig = plots.new_figure(width, plots.PANEL_HEIGHT_IN + 0.7 + 0.17 * rows)
    axes = fig.subplots(1, len(objectives), sharex=True, squeeze=False)[0]
    for ax, objective in zip(axes, objectives):
        d = data[data["objective"] == objective]
        for series, g in d[d["matched"]].groupby("series", sort=False):
            colour, marker, ls = styles[series]
            yerr = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]])
            ax.errorbar(g["iou_mean"], g["mean"], yerr=np.nan_to_num(yerr), color=colour, marker=marker,
                        markersize=4, capsize=2.5, linewidth=1.4, linestyle=ls, zorder=3)
        for _, r in d[~d["matched"]].iterrows():
            colour, marker, ls = styles[r["configuration"]]
            if abs(r["iou_end"] - r["iou_start"]) > 1e-3:  # the IoU's drift over training, at the marker's height
                ax.annotate("", xy=(r["iou_end"], r["mean"]), xytext=(r["iou_start"], r["mean"]), zorder=2,
                            arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.0, "linestyle": ls,
                                        "shrinkA": 0, "shrinkB": 0})
            yerr = np.nan_to_num([[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]])
            ax.errorbar([r["iou_mean"]], [r["mean"]], yerr=yerr, color=colour, marker=marker, markersize=4.5,
                        capsize=2.5, linewidth=1.2, linestyle="none", zorder=4)
        if ceiling is not None and objective == CEILING_METRIC:
            ax.axhline(ceiling, color=plots.BASELINE_COLOUR, linestyle=(0, (4, 2)), linewidth=1.0, zorder=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("Measured view IoU (mean over training)")
        ax.set_ylabel(f"{objective} (final)")
        ax.set_title(f"{objective} ({seeds_text(d['n'])} runs per point)")
        lo, hi = ax.get_ylim()  # a t-bar of few runs must not stretch an accuracy axis beyond [0, 1]
        ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
    fig.suptitle(title)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncol, frameon=False,
               title=f"Mean over runs (seeds), {plots.percent(level)} CI bars; arrows: measured IoU, start → end of training")
    return fig


# --- text ----------------------------------------------------------------------------------
def command_line(sel: Selection, query: RunQuery, objectives: Sequence[str], ceiling: float | None,
                 level: float) -> str:
    """The command that reproduces this call (the study resolved by name, the objectives spelled out)."""
    parts = ["paramcrop", "analyze", "sweet-spot"]
    if sel.kind == "study":
        parts += ["--study", sel.name]
    parts += [a for e in query.experiments for a in ("--experiment", e)]
    if query.run_ids:
        parts += ["--runs", ",".join(query.run_ids)]
    if query.tracking_uri:
        parts += ["--tracking-uri", sinks.redact_url(query.tracking_uri)]
    parts += [a for o in objectives for a in ("--objective", o)]
    if ceiling is not None:
        parts += ["--ceiling", f"{ceiling:g}"]
    if level != 0.95:
        parts += ["--level", f"{level:g}"]
    if query.out is not None:
        parts += ["--out", str(query.out)]
    if not query.log:
        parts.append("--no-log")
    return shlex.join(parts)


def _num(v: float, sign: bool = False) -> str:
    return "–" if v != v else (f"{v:+.3f}" if sign else f"{v:.3f}")


def _interval(lo: float, hi: float, sign: bool = False) -> str:
    return "–" if lo != lo else f"[{_num(lo, sign)}, {_num(hi, sign)}]"


def markdown(data: pd.DataFrame, pair_data: pd.DataFrame, title: str, command: str, level: float,
             ceiling: float | None) -> str:
    lines = [f"# {title}", "", f"`{command}`", "",
             f"Per configuration (every param that differs, seed aside) and objective: n runs; the measured view "
             f"IoU, each run's mean of its `{sinks.VIEW_IOU}` history (start / end: its first / last 10 % of logged "
             f"points), averaged over the runs; the objective's final value: mean and {plots.percent(level)} t-interval over "
             f"the runs. Matched levels (`{P_CROP}={MATCHED}`) first, by measured IoU.", ""]
    if ceiling is not None:
        lines += [f"Supervised ceiling of `{CEILING_METRIC}`: {ceiling:.3f}.", ""]
    lines += [f"| configuration | method | n | IoU mean | IoU start → end | objective | mean | "
              f"{plots.percent(level)} interval |",
              "|---|---|---:|---:|:---:|---|---:|:---:|"]
    lines += [f"| {r.configuration} | {r.method} | {r.n} | {_num(r.iou_mean)} | {_num(r.iou_start)} → "
              f"{_num(r.iou_end)} | {r.objective} | {_num(r.mean)} | {_interval(r.ci_low, r.ci_high)} |"
              for r in data.itertuples(index=False)]
    lines += ["", "## Best matched level against the easiest and the hardest", "",
              f"Best: the matched level with the highest mean `{data['objective'].iloc[0]}` (the first objective "
              f"selects, every objective compares that level); easiest / hardest: the matched level with "
              f"the highest / lowest measured IoU. Difference best - other, paired by seed: mean over the seeds both "
              f"have, its {plots.percent(level)} t-interval, n pairs; unpaired seeds are left out.", "",
              f"| objective | best | vs | other | difference | {plots.percent(level)} interval | n pairs | unpaired |",
              "|---|---|---|---|---:|:---:|---:|---:|"]
    for r in pair_data.itertuples(index=False):
        diff = "(the same level)" if r.best == r.other else _num(r.diff, True)
        lines.append(f"| {r.objective} | {r.best} | {r.versus} | {r.other} | {diff} | "
                     f"{_interval(r.diff_lower, r.diff_upper, True)} | {r.pairs} | {r.unpaired} |")
    return "\n".join(lines) + "\n"


# --- the command ---------------------------------------------------------------------------
def sweet_spot(query: RunQuery, objectives: Sequence[str] = (), ceiling: float | None = None, level: float = 0.95,
               client: "MlflowClient | None" = None) -> Report:
    """Compute, plot, write and (for a study) log the sweet-spot figure, ``sweet-spot.csv`` and
    ``sweet-spot.md`` (module doc). ``objectives``: default :data:`DEFAULT_OBJECTIVES`."""
    check_level(level)
    if ceiling is not None and not 0 <= ceiling <= 1:
        raise NotFoundError(f"--ceiling is a top-1 accuracy of {CEILING_METRIC} between 0 and 1, got {ceiling:g}")
    client, sel = query.resolve(client)
    where = f"{sel.kind} {sel.name!r}"
    methods = column(sel.runs, f"params.{P_CROP}")
    if not (methods == MATCHED).any():
        found = ", ".join(sorted(map(str, methods.dropna().unique()))) or "none"
        raise NotFoundError(f"no {P_CROP}={MATCHED} runs in {where} (crop methods here: {found}); run the "
                            f"sweet-spot study: random crops of {P_CROP}={MATCHED} at several {P_IOU} levels")
    objectives, warnings = check_objectives(sel, objectives)
    iou = run_iou(load_histories(client, sel.run_ids, [sinks.VIEW_IOU]))
    notes = list(sel.notes)
    lacking = sel.runs[~sel.runs["run_id"].isin(iou["run_id"])]
    if len(lacking) == len(sel.runs):
        raise NoDataError(f"no run of {where} has a {sinks.VIEW_IOU} history: the sweet spot is measured on it")
    if len(lacking):
        notes.append(f"{len(lacking)} run(s) without a {sinks.VIEW_IOU} history left out: "
                     + ", ".join(f"{n or ''} ({r})" for n, r in zip(lacking["run_name"], lacking["run_id"])))
    series = series_labels(sel.runs)
    parts, pair_parts, best_config = [], [], None
    for objective in objectives:
        rows, values, obj_notes = points(sel, objective, iou, series, level)
        levels = rows[rows["matched"]].groupby("series")["config"].nunique()
        if levels.empty or levels.max() < 2:
            labels = ", ".join(rows.loc[rows["matched"], "configuration"]) or "none"
            raise NotFoundError(
                f"fewer than 2 matched levels with {objective} and {sinks.VIEW_IOU} in {where} ({labels}): the "
                f"sweet-spot curve needs {P_CROP}={MATCHED} runs at 2 or more {P_IOU} values (the sweet-spot "
                "study runs >= 6); run them, or select a study or runs that hold them")
        for s in levels[levels < 2].index:
            warnings.append(f"{objective}: the matched series {s!r} has one level only: a point, not a curve")
        if best_config is None:  # the first objective selects the best level for every objective
            best_config = best_levels(rows)
        pair_data, pair_notes = pairs(rows, values, objective, best_config, level)
        notes += [n for n in obj_notes if n not in notes] + pair_notes
        parts.append(rows)
        pair_parts.append(pair_data)
    data = pd.concat(parts, ignore_index=True)
    pair_data = pd.concat(pair_parts, ignore_index=True)
    if ceiling is not None and CEILING_METRIC not in objectives:
        warnings.append(f"--ceiling is the supervised ceiling of {CEILING_METRIC}, which is no panel here: not drawn")
    title = sel.title("objective vs measured view IoU")
    command = command_line(sel, query, objectives, ceiling, level)
    report = Report(f"{STEM} ({sel.kind} {sel.name})", notes=notes, warnings=warnings)
    with plots.paper_style():
        fig = figure(data, objectives, title, level, ceiling)
        writers = {f"{STEM}.csv": plots.csv_writer(data[COLUMNS]),
                   f"{STEM}.md": plots.text_writer(markdown(data, pair_data, title, command, level, ceiling)),
                   **plots.figure_writers(fig, STEM)}
        plots.publish(report, client, sel, query.out, writers, query.log)
    report.tables.append((f"{sel.name}: objective vs measured view IoU (mean over runs, {plots.percent(level)} t-interval)",
                          data[COLUMNS]))
    shown = pair_data if pair_data["series"].nunique() > 1 else pair_data.drop(columns="series")
    report.tables.append((f"{sel.name}: best matched level vs the easiest and the hardest (paired by seed)", shown))
    report.data.update(sweet_spot=data, pairs=pair_data, selection=sel, command=command)
    return report
