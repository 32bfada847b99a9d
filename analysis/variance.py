"""``paramcrop analyze variance``: how much of a result's spread over seeds is the training's and
how much the evaluation's own sampling (Bouthillier et al., MLSys 2021).

Per configuration (:mod:`analysis.groups`), over its ``n`` runs (one per seed) with objective
values ``y_r`` and per-query outcomes (:mod:`analysis.queries`; ``Q_r`` queries, accuracy ``p_r``):

- ``between_sd``: the between-seed SD of the objective, ``sd(y, ddof=1)``; its square ``V``.
- ``eval_se``: the evaluation's sampling SE, ``sqrt(E)`` with ``E = mean_r var_r`` and ``var_r`` the
  bootstrap variance of run r's accuracy over its queries (resampled with replacement), taken at
  its exact limit ``p_r (1 - p_r) / Q_r`` (:func:`analysis.resampling.bootstrap_variance_of_mean`).
- The decomposition: a run's value is its trained model's true accuracy plus the sampling error of
  its queries, so ``V`` estimates training variance + mean evaluation variance; ``training_sd =
  sqrt(max(V - E, 0))``; ``eval_share = min(E / V, 1)`` (1 when ``V = 0 < E``), ``training_share =
  1 - eval_share``. Configurations with one run: SD and shares empty.
- A last row, ``all configurations (pooled)``: ``V`` pooled over the configurations with two or more
  runs (``sum (n_c - 1) V_c / sum (n_c - 1)``), ``E`` the mean of ``var_r`` over their runs.

Every selected run with an objective value needs its predictions: runs without them are an error
(exit 2) naming each run and the command that writes them.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import plots
from analysis.errors import NotFoundError
from analysis.load import RunQuery, Selection
from analysis.queries import QueryOutcomes, missing_message, source
from analysis.report import Report
from analysis.resampling import bootstrap_variance_of_mean
from analysis.values import seeded_values

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

STEM = "variance"
POOLED = "all configurations (pooled)"
COLUMNS = ["configuration", "runs", "queries", "mean", "between_sd", "eval_se", "training_sd", "eval_share",
           "training_share"]
AGREEMENT = 1e-6
"""How far a run's logged objective may be from its predictions' accuracy before a warning."""


def shares(between_var: float, eval_var: float) -> tuple[float, float]:
    """``(eval_share, training_share)`` of a between-seed variance (module doc)."""
    if between_var != between_var or eval_var != eval_var:
        return math.nan, math.nan
    if between_var == 0:
        return (1.0, 0.0) if eval_var > 0 else (math.nan, math.nan)
    evaluation = min(eval_var / between_var, 1.0)
    return evaluation, 1.0 - evaluation


def _row(label: str, runs: int, queries: float, mean: float, between_var: float, eval_var: float) -> dict:
    evaluation, training = shares(between_var, eval_var)
    return {"configuration": label, "runs": runs, "queries": queries, "mean": mean,
            "between_sd": math.sqrt(between_var) if between_var == between_var else math.nan,
            "eval_se": math.sqrt(eval_var), "training_sd": math.sqrt(max(between_var - eval_var, 0.0))
            if between_var == between_var else math.nan, "eval_share": evaluation, "training_share": training}


def variance_table(sel: Selection, client: "MlflowClient",
                   outcomes: QueryOutcomes | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(table, notes, warnings)``: one row per configuration (:data:`COLUMNS`, module doc) and the
    pooled row. :class:`NotFoundError` (exit 2) for an objective without per-query predictions or
    runs without them."""
    source(sel.objective)
    values, _, notes = seeded_values(sel)
    outcomes = outcomes or QueryOutcomes(client)
    found, missing = outcomes.outcomes(values["run_id"], sel.objective)
    if missing:
        raise NotFoundError(missing_message(sel.runs, missing, sel.objective,
                                            "the evaluation's sampling variance is resampled from them"))
    per_run = values.assign(
        queries=[found[r].size for r in values["run_id"]],
        accuracy=[float(found[r].mean()) for r in values["run_id"]],
        eval_var=[bootstrap_variance_of_mean(found[r]) for r in values["run_id"]])
    warnings = []
    off = per_run[(per_run["accuracy"] - per_run["objective"]).abs() > AGREEMENT]
    if not off.empty:
        warnings.append(f"{len(off)} run(s) whose {sel.objective} differs from the accuracy of their predictions "
                        f"(an evaluation logged after them?): " + ", ".join(
                            f"{r.run_id} ({r.objective:.4f} vs {r.accuracy:.4f})" for r in off.itertuples()))
    rows, pooled_ss, pooled_df, pooled_eval = [], 0.0, 0, []
    for _, g in per_run.groupby("config", sort=True):
        n = len(g)
        between = float(g["objective"].var(ddof=1)) if n > 1 else math.nan
        rows.append(_row(g["configuration"].iloc[0], n, float(g["queries"].mean()), float(g["objective"].mean()),
                         between, float(g["eval_var"].mean())))
        if n > 1:
            pooled_ss += (n - 1) * between
            pooled_df += n - 1
            pooled_eval.extend(g["eval_var"])
    if pooled_df:
        used = per_run[per_run.groupby("config")["run_id"].transform("count") > 1]
        rows.append(_row(POOLED, len(used), float(used["queries"].mean()), math.nan, pooled_ss / pooled_df,
                         float(np.mean(pooled_eval))))
    return pd.DataFrame(rows, columns=COLUMNS), notes, warnings


def figure(data: pd.DataFrame, title: str, objective: str):
    """Left: between-seed SD, training SD and evaluation SE per configuration; right: the shares."""
    labels = [f"{c} (n={n})" for c, n in zip(data["configuration"], data["runs"])]
    width = max(2 * plots.PANEL_WIDTH_IN, min(3 * plots.PANEL_WIDTH_IN, 4.5 + 0.055 * max(map(len, labels))))
    fig = plots.new_figure(width, 1.7 + 0.32 * len(data))
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(data))[::-1]
    colours = plots.palette(3)
    for k, (col, name) in enumerate([("between_sd", "between seeds"), ("training_sd", "training"),
                                     ("eval_se", "evaluation (query bootstrap)")]):
        left.barh(y + (1 - k) * 0.27, np.nan_to_num(data[col].to_numpy(float)), height=0.26, color=colours[k],
                  label=name)
    left.set_yticks(y, labels)
    left.set_xlabel(f"SD of {objective}")
    left.grid(axis="y", visible=False)
    evaluation = np.nan_to_num(data["eval_share"].to_numpy(float))
    training = np.nan_to_num(data["training_share"].to_numpy(float))
    right.barh(y, training, color=colours[1])
    right.barh(y, evaluation, left=training, color=colours[2])
    right.set_xlim(0, 1)
    right.set_xlabel("Share of the between-seed variance\n(training | evaluation)")
    right.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(title)
    return fig


def markdown(data: pd.DataFrame, title: str, objective: str) -> str:
    def cell(v, fmt="{:.3f}"):
        return "–" if v != v else fmt.format(v)

    lines = [f"# {title}", "",
             f"Objective `{objective}`. Between-seed SD over the runs of a configuration; evaluation SE: the "
             "root mean over its runs of the bootstrap variance of each run's accuracy over its queries; "
             "training SD = sqrt(max(between² - evaluation², 0)); evaluation share = evaluation² / between² "
             "(clipped at 1), training share the rest.", "",
             "| configuration | runs | queries | mean | between-seed SD | evaluation SE | training SD | "
             "evaluation share | training share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data.itertuples(index=False):
        lines.append(f"| {r.configuration} | {r.runs} | {r.queries:.0f} | {cell(r.mean)} | {cell(r.between_sd)} | "
                     f"{cell(r.eval_se)} | {cell(r.training_sd)} | {cell(r.eval_share, '{:.0%}')} | "
                     f"{cell(r.training_share, '{:.0%}')} |")
    return "\n".join(lines) + "\n"


def variance(query: RunQuery, client: "MlflowClient | None" = None) -> Report:
    """Compute, write and (for a study) log ``variance.csv``, ``variance.md``, ``variance.png``/``.pdf``."""
    client, sel = query.resolve(client)
    data, notes, warnings = variance_table(sel, client)
    title = sel.title(f"{sel.objective}: training and evaluation variance")
    report = Report(f"variance ({sel.kind} {sel.name})", notes=sel.notes + notes, warnings=warnings)
    with plots.paper_style():
        fig = figure(data, title, sel.objective)
        writers = {f"{STEM}.csv": plots.csv_writer(data),
                   f"{STEM}.md": plots.text_writer(markdown(data, title, sel.objective)),
                   **plots.figure_writers(fig, STEM)}
        plots.publish(report, client, sel, query.out, writers, query.log)
    report.tables.append((f"{sel.name}: {sel.objective}, between-seed SD and the evaluation's sampling SE", data))
    report.data.update(variance=data, selection=sel)
    return report
