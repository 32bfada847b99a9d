"""A study's best backbone in the MLflow model registry (``paramcrop study register``, ``study run --register``).

Each finished trial's run logs its backbone as an MLflow model named :data:`BACKBONE_MODEL`
(model URI ``runs:/<run id>/backbone``). Registering makes a new version of the registered model
``NAME`` (created when missing) from the chosen trial's backbone, tagged with the study, the
trial and its objective value(s), so ``mlflow.pytorch.load_model("models:/NAME/<version>")`` or
``paramcrop.load_backbone`` finds it later. Decisions: the trial is the study's best (single
objective) unless ``trial`` names one, which must be COMPLETE (a multi-objective study has no
single best: name a trial of its Pareto front); registering twice makes two versions.
"""
from __future__ import annotations

from dataclasses import dataclass

from paramcrop import sinks
from studies.tracking import call

BACKBONE_MODEL = sinks.MODEL_BACKBONE
"""The name (artifact path) under which a run logs its backbone model."""
TAG_OBJECTIVE_VALUE = "paramcrop.objective_value"  # model version tag: the trial's objective value(s)


@dataclass
class Registered:
    """What :func:`register_trial` made: the registry's version, and where it came from."""

    name: str
    version: str
    trial: int
    run_id: str
    source: str  # the logged model's URI
    objectives: dict[str, float]


def backbone_source(client, run) -> tuple[str, str | None]:
    """(model URI, logged-model id) of ``run``'s backbone model: its newest ready MLflow 3 logged
    model named :data:`BACKBONE_MODEL`, else a model in the run's artifacts at ``backbone/``;
    ``ValueError`` naming the run when it has neither."""
    run_id = run.info.run_id
    logged = call(client.search_logged_models, [run.info.experiment_id],
                  filter_string=f"source_run_id = '{run_id}' AND name = '{BACKBONE_MODEL}'")
    ready = [m for m in logged if str(getattr(m.status, "name", m.status)) == "READY"]
    if ready:
        newest = max(ready, key=lambda m: m.creation_timestamp)
        return newest.model_uri, newest.model_id
    if any(a.path == f"{BACKBONE_MODEL}/MLmodel" for a in call(client.list_artifacts, run_id, BACKBONE_MODEL)):
        return f"runs:/{run_id}/{BACKBONE_MODEL}", None
    raise ValueError(f"run {run_id} has no {BACKBONE_MODEL!r} model (runs log one when they finish; a run that "
                     f"failed or predates this has none)")


def choose_trial(study, trial: int | None = None):
    """The trial to register: ``trial`` when given (it must be COMPLETE), else the study's best
    (single objective). ``ValueError`` naming the fix otherwise."""
    from optuna.trial import TrialState

    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if trial is not None:
        if trial not in complete:
            raise ValueError(f"trial {trial} of study {study.study_name!r} is not COMPLETE; complete trials: "
                             f"{', '.join(map(str, sorted(complete))) or '(none)'}")
        return complete[trial]
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no complete trial to register")
    if len(study.directions) > 1:
        front = ", ".join(str(t.number) for t in study.best_trials)
        raise ValueError(f"study {study.study_name!r} has several objectives and no single best trial: give --trial "
                         f"(its Pareto front: trials {front})")
    return study.best_trial


def register_trial(client, study, name: str, objective_metrics: list[str], trial: int | None = None) -> Registered:
    """Register the backbone of :func:`choose_trial`'s trial as a new version of model ``name``;
    version tags ``paramcrop.study``, ``paramcrop.trial``, ``paramcrop.objective`` (metric names,
    comma-separated) and ``paramcrop.objective_value`` (values, same order)."""
    from mlflow.exceptions import MlflowException

    from studies.runner import RUN_ATTR

    if not name.strip():
        raise ValueError("the registered model name must not be empty")
    chosen = choose_trial(study, trial)
    run_id = chosen.user_attrs.get(RUN_ATTR)
    if not run_id:
        raise ValueError(f"trial {chosen.number} has no MLflow run (user attribute {RUN_ATTR!r})")
    source, model_id = backbone_source(client, call(client.get_run, run_id))
    objectives = dict(zip(objective_metrics, map(float, chosen.values)))
    shown = ", ".join(f"{k} = {v:.4f}" for k, v in objectives.items())
    try:
        call(client.create_registered_model, name,
             description="Video backbones pretrained by paramcrop studies (self-supervised).")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {sinks.TAG_STUDY: study.study_name, sinks.TAG_TRIAL: str(chosen.number),
            sinks.TAG_OBJECTIVE: ",".join(objectives), TAG_OBJECTIVE_VALUE: ",".join(map(repr, objectives.values()))}
    version = call(client.create_model_version, name, source, run_id=run_id, tags=tags, model_id=model_id,
                   description=f"trial {chosen.number} of study {study.study_name}: {shown}")
    return Registered(name, str(version.version), chosen.number, run_id, source, objectives)
