"""``paramcrop analyze importance``: Optuna parameter importances and optimisation history.

Reads the Optuna study (not MLflow) from ``--storage``: an RDB URL, or a journal file path,
default the study runner's (:data:`studies.storage.DEFAULT_STORAGE`, see
:func:`analysis.store.open_optuna_storage`).
Without ``--study`` the study whose first trial started last is used.

Importances are fANOVA (Optuna's default evaluator) with a fixed seed (``--seed``, default 0)
over the COMPLETE trials, so ``importance.csv`` holds exactly the plotted bars; parameters
that only some trials have (e.g. ``crop.strength``, absent for the random crop) are left out
by Optuna. ``optimization-history.csv`` holds each complete trial's value and the best so far.
Both figures use Optuna's matplotlib backend; files go to ``--out`` (default
``./analysis-<study>/``) and, when the MLflow store holds the study, to its parent run.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.errors import AnalysisError, NoDataError, NotFoundError
from analysis.report import Report


def _pick_study(storage, name: str | None) -> str:
    import optuna

    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    names = [s.study_name for s in summaries]
    if name is not None:
        if name not in names:
            raise NotFoundError(f"unknown study {name!r} in the Optuna storage. Known studies: "
                                f"{', '.join(names) or 'none'}")
        return name
    if not summaries:
        raise NoDataError("the Optuna storage holds no study; run one with `paramcrop study run`")
    latest = max(summaries, key=lambda s: (s.datetime_start is not None,
                                           s.datetime_start.timestamp() if s.datetime_start else 0.0))
    return latest.study_name


def importance(
    storage: str | None = None,
    study: str | None = None,
    out: Path | None = None,
    tracking_uri: str | None = None,
    seed: int = 0,
    log: bool = True,
) -> Report:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    from analysis.store import open_optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_optuna_storage(storage)
    name = _pick_study(st, study)
    ostudy = optuna.load_study(study_name=name, storage=st)
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        raise NoDataError(f"study {name!r} has {len(complete)} complete trial(s); parameter "
                          "importances need at least 2 (with some parameter varying)")
    multi = len(ostudy.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    report = Report(f"importance (study {name})")
    client, parent_run_id, objective = _mlflow_study(report if log else Report(""), name, tracking_uri)
    objective = objective or "Objective value"
    if multi:
        report.notes.append(f"study {name!r} has {len(ostudy.directions)} objectives: using the first")

    evaluator = FanovaImportanceEvaluator(seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = get_param_importances(ostudy, evaluator=evaluator, target=target)
    except (RuntimeError, ValueError) as exc:
        raise NoDataError(f"cannot compute parameter importances for study {name!r}: {exc}") from exc
    if not imp:
        raise NoDataError(f"study {name!r}: no parameter is shared by all complete trials and varies, "
                          "so there is nothing to rank")
    imp_frame = pd.DataFrame({"param": list(imp), "importance": list(imp.values())})
    values = [(t.number, t.values[0] if multi else t.value) for t in complete]
    hist = pd.DataFrame(values, columns=["trial", "value"]).sort_values("trial", kind="stable")
    best = hist["value"].cummax() if ostudy.directions[0] == optuna.study.StudyDirection.MAXIMIZE \
        else hist["value"].cummin()
    hist["best_so_far"] = best

    figs = []
    try:
        with warnings.catch_warnings(), plots.paper_style():
            warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
            ax = plot_param_importances(ostudy, evaluator=FanovaImportanceEvaluator(seed=seed),
                                        target=target, target_name=objective)
            fig_imp = ax.figure
            figs.append(fig_imp)
            fig_imp.set_size_inches(plots.PANEL_WIDTH_IN, 1.2 + 0.3 * len(imp))
            ax.set_title("", loc="left")
            ax.set_title(f"Study {name}: parameter importance")
            ax.set_xlabel(f"fANOVA importance for {objective}")
            ax.set_ylabel("Parameter")
            if ax.get_legend() is not None:
                ax.get_legend().remove()  # one target: the axis label says it
            ax = plot_optimization_history(ostudy, target=target, target_name=objective)
            fig_hist = ax.figure
            figs.append(fig_hist)
            fig_hist.set_size_inches(plots.PANEL_WIDTH_IN, plots.PANEL_HEIGHT_IN + 0.3)
            ax.set_title(f"Study {name}: optimisation history")
            ax.set_xlabel("Trial number")
            ax.set_ylabel(objective)
            ax.legend(loc="best", frameon=False)  # Optuna puts it outside, squeezing the axes
            for fig in figs:  # Optuna draws in its ggplot style: back to the paper look
                fig.set_facecolor("white")
                for a in fig.axes:
                    a.set_facecolor("white")
                    a.grid(True, color="0.85", linewidth=0.4)
                    for spine in ("left", "bottom"):
                        a.spines[spine].set_visible(True)
                        a.spines[spine].set_color("0.2")
                    for item in [a.title, a.xaxis.label, a.yaxis.label, *a.get_xticklabels(),
                                 *a.get_yticklabels(), *a.texts]:
                        item.set_fontsize(plots.FONT_PT + 1 if item is a.title else plots.FONT_PT)
                        item.set_color("0.1")
                    if a.get_legend() is not None:
                        for t in a.get_legend().get_texts():
                            t.set_fontsize(plots.FONT_PT)
                fig.set_layout_engine("constrained")
            writers = {**plots.figure_writers(fig_imp, "importance"), "importance.csv": plots.csv_writer(imp_frame),
                       **plots.figure_writers(fig_hist, "optimization-history"),
                       "optimization-history.csv": plots.csv_writer(hist)}
            out_dir = Path(out) if out is not None else plots.default_out(name)
            report.paths = plots.write_outputs(out_dir, writers)
    finally:
        import matplotlib.pyplot as plt

        for fig in figs:
            plt.close(fig)
    report.tables.append((f"{name}: parameter importance for {objective}", imp_frame))
    report.data.update(importance=imp_frame, history=hist)
    if log and parent_run_id:
        warning = plots.log_to_run(client, parent_run_id, report.paths)
        if warning:
            report.warnings.append(warning)
        else:
            report.logged_to = parent_run_id
    return report


def _mlflow_study(report: Report, name: str, tracking_uri: str | None):
    """``(client, parent run id, objective metric)`` of the MLflow study of that name, or
    ``(None, None, None)`` with a note when the tracking store does not hold it."""
    from analysis.load import DEFAULT_REPORTED_METRIC, list_studies
    from analysis.store import open_client, resolve_tracking_uri

    try:
        client = open_client(tracking_uri)
        studies = list_studies(client)
    except AnalysisError as exc:
        report.notes.append(f"figures not logged to MLflow: {exc}")
        return None, None, None
    match = studies[studies["study"] == name]
    if match.empty:
        report.notes.append(f"figures not logged to MLflow: no study {name!r} in "
                            f"{resolve_tracking_uri(tracking_uri)}")
        return None, None, None
    row = match.iloc[0]
    return client, row["parent_run_id"], row["objective"] or DEFAULT_REPORTED_METRIC
