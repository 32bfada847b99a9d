"""MLflow conventions that make a study readable in the MLflow UI (docs/DESIGN.md "Tracking conventions").

- :func:`trial_run_name`: a trial's run name says what it is, ``t2 crop=random seed=1``.
- :func:`describe_study`: the spec's description as the experiment's and the parent run's note
  (``mlflow.note.content``), the study's fixed config as the parent run's params.
- :func:`log_study_summary`: the parent run's ``study/*`` metrics (best value and trial, trials
  per state), logged after every trial that ends.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Mapping

from paramcrop import sinks
from studies.spec import VARIANT_PREFIX, format_value
from studies.tracking import MAX_PARAM_LENGTH, MAX_PARAMS, call

SUMMARY_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
"""Trial states counted in ``study/trials_<state lower case>``."""


def trial_run_name(number: int, params: Mapping[str, Any], retry_of: int | None = None) -> str:
    """``t<number>`` plus each varied value in search-space order, ``key=value``: a variants
    dimension by its variant label (``crop=paramcrop-l1``), a dotted key in full
    (``optim.lr=0.001``), a float compactly (:func:`format_value`); a retry says which trial it
    continues: ``t5 crop=random seed=1 (retry of t2)``."""
    parts = [f"t{number}"] + [f"{key.removeprefix(VARIANT_PREFIX)}={format_value(value)}"
                              for key, value in params.items()]
    if retry_of is not None:
        parts.append(f"(retry of t{retry_of})")
    return " ".join(parts)


def describe_study(client, experiment_id: str, parent_run_id: str, description: str,
                   config_flat: Mapping[str, object]) -> None:
    """The spec's ``description`` as the note (``mlflow.note.content``) of the experiment and of the
    parent run; the study's fixed config (the spec's base config, flattened) as the parent's params."""
    from mlflow.entities import Param

    note = description.strip()
    if note:
        call(client.set_experiment_tag, experiment_id, sinks.NOTE_TAG, note)
        call(client.set_tag, parent_run_id, sinks.NOTE_TAG, note)
    params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in config_flat.items()]
    for start in range(0, len(params), MAX_PARAMS):
        call(client.log_batch, parent_run_id, params=params[start:start + MAX_PARAMS])


def study_summary(trials, directions: list[str]) -> dict[str, float]:
    """The parent run's ``study/*`` metrics for a list of Optuna ``FrozenTrial``: trials per state
    (:data:`SUMMARY_STATES`), and for a single objective the best value and its trial number
    (absent until a trial completes)."""
    counts = Counter(t.state.name for t in trials)
    summary = {sinks.STUDY_TRIALS.format(state=state.lower()): float(counts.get(state, 0)) for state in SUMMARY_STATES}
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.values is not None]
    if len(directions) == 1 and complete:
        pick = max if directions[0] == "maximize" else min
        best = pick(complete, key=lambda t: t.values[0])
        summary[sinks.STUDY_BEST_VALUE] = float(best.values[0])
        summary[sinks.STUDY_BEST_TRIAL] = float(best.number)
    return summary


def log_study_summary(client, parent_run_id: str, study, window: float = 10.0) -> dict[str, float]:
    """Log :func:`study_summary` of ``study`` on the parent run, at step = the number of trials that
    have ended (complete, pruned or failed), so the metric history shows the study's progress.
    Retried for ``window`` seconds only: the next trial's summary makes up for a missed one."""
    from mlflow.entities import Metric

    trials = study.get_trials(deepcopy=False)
    summary = study_summary(trials, [d.name.lower() for d in study.directions])
    step = sum(t.state.is_finished() for t in trials)
    now = int(time.time() * 1000)
    call(client.log_batch, parent_run_id, metrics=[Metric(k, v, now, step) for k, v in summary.items()], window=window)
    return summary
