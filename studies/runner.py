"""``paramcrop study run``: an Optuna study whose every trial is a tracked MLflow run.

MLflow layout (SPEC 4): one experiment per study, one parent run per study (created by the
worker that creates the Optuna study, so exactly one exists however many workers join), one
child run per trial. Trial and run point at each other: the trial's user attribute
``mlflow_run_id`` and the run's tags ``paramcrop.study`` / ``paramcrop.trial``.

Resume: the same name and storage continue the study. Finished trials are never re-run; the
grid sampler continues where it stopped. A trial left RUNNING by a dead worker misses its
heartbeats, is marked FAIL by the next worker, its run ended FAILED, and it is retried (up to
``MAX_RETRY`` times) from its checkpoint when it has one.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from paramcrop import sinks
from paramcrop.train import Trainer
from studies.spec import StudySpec
from studies.storage import open_storage, redact
from studies.tracking import client_for, get_or_create_experiment, run_tags, terminate_on_sigterm, tracked_run

MAX_RETRY = 2
PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
RUN_ATTR = "mlflow_run_id"
SPEC_ATTR = "spec"
RUNS_ROOT = Path("paramcrop-runs")

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class StudyOptions:
    """Command-line choices around a spec."""

    storage: str | None = None
    tracking_uri: str | None = None
    n_trials: int | None = None  # total finished (complete + pruned) trials wanted
    timeout: float | None = None  # seconds for this invocation
    overrides: dict[str, Any] | None = None  # dotted config overrides for every trial
    progress: bool = True
    runs_root: Path = RUNS_ROOT


def _sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=spec.sampler_seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=spec.sampler_seed)


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[spec.pruner]()


def _metric_value(name: str, result) -> float:
    values = {**result.final_metrics, **result.eval_metrics, "train/seconds": result.seconds}
    if name not in values:
        raise KeyError(f"objective metric {name!r} was not measured; available: {', '.join(sorted(values))}")
    return float(values[name])


class StudyRunner:
    """Creates or joins the study, its experiment and parent run, and runs trials."""

    def __init__(self, spec: StudySpec, options: StudyOptions, console: Console | None = None) -> None:
        self.spec, self.options = spec, options
        self.console = console or Console()
        self.client = client_for(options.tracking_uri)
        self.storage = open_storage(options.storage, heartbeat=spec.heartbeat, on_stale=self._on_stale)
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        self.study, self.parent_run_id, self.experiment_id = self._create_or_join()

    # --- study, experiment and parent run -------------------------------------------------------
    def _create_or_join(self) -> tuple[optuna.Study, str, str]:
        spec = self.spec
        kwargs = dict(study_name=spec.name, storage=self.storage, sampler=_sampler(spec), pruner=_pruner(spec))
        try:
            study = optuna.create_study(directions=spec.directions, **kwargs)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kwargs)
            stored = study.user_attrs.get(SPEC_ATTR)
            if stored is not None and stored != spec.to_yaml():
                raise ValueError(f"study {spec.name!r} already exists in this storage with a different spec; "
                                 f"give a new --name, or run the same spec to resume it")
            return study, *self._wait_for_parent(study)
        experiment_id = get_or_create_experiment(self.client, spec.name)
        parent = self.client.create_run(experiment_id, run_name=spec.name, tags={
            sinks.TAG_ROLE: "study", sinks.TAG_STUDY: spec.name,
            sinks.TAG_OBJECTIVE: ",".join(o.metric for o in spec.objectives),
            **{k: v for k, v in run_tags({}).items() if k in (sinks.TAG_VERSION, sinks.TAG_GIT_COMMIT)},
        })
        parent_id = parent.info.run_id
        spec_path = self.options.runs_root / spec.name / "study.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(spec.to_yaml())
        self.client.log_artifact(parent_id, str(spec_path))
        study.set_user_attr(SPEC_ATTR, spec.to_yaml())
        study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        study.set_user_attr(PARENT_ATTR, parent_id)
        return study, parent_id, experiment_id

    def _wait_for_parent(self, study: optuna.Study, timeout: float = 60.0) -> tuple[str, str]:
        """A worker that joins a study another worker is creating waits for its parent run."""
        deadline = time.monotonic() + timeout
        while True:
            attrs = optuna.load_study(study_name=self.spec.name, storage=self.storage).user_attrs
            if PARENT_ATTR in attrs:
                self.client.update_run(attrs[PARENT_ATTR], status="RUNNING")
                return attrs[PARENT_ATTR], attrs[EXPERIMENT_ATTR]
            if time.monotonic() > deadline:
                raise RuntimeError(f"study {self.spec.name!r} has no MLflow parent run after {timeout:.0f} s")
            time.sleep(0.5)

    # --- trials ----------------------------------------------------------------------------------
    def _on_stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose worker died: end its run FAILED, then retry it (Optuna's retry callback)."""
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            self.client.set_tag(run_id, sinks.TAG_FAILURE, "worker died (heartbeat lost)")
            self.client.set_tag(run_id, sinks.TAG_TRIAL_STATE, "FAIL")
            self.client.set_terminated(run_id, status="FAILED")
        self.console.print(f"[yellow]trial {trial.number} lost its worker (no heartbeat): marked FAIL, retrying[/]")
        self.retry(study, trial)

    def trial_dir(self, trial: optuna.Trial) -> Path:
        """Checkpoint folder; a retried trial reuses its original's, so it resumes from there."""
        origin = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        return self.options.runs_root / self.spec.name / f"trial-{origin if origin is not None else trial.number:04d}"

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        spec, console = self.spec, self.console
        cfg, overrides = spec.sample(trial)
        if self.options.overrides:
            cfg = cfg.with_overrides(self.options.overrides)
        shown = ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "(no search space)"
        console.rule(f"[bold]trial {trial.number}[/]  {shown}")
        run_dir = self.trial_dir(trial)
        on_eval = self._pruning_hook(trial) if spec.pruner != "none" else None
        trainer = Trainer(cfg, run_dir, progress=self.options.progress, on_eval=on_eval)
        tags = {sinks.TAG_ROLE: "trial", sinks.TAG_STUDY: spec.name, sinks.TAG_TRIAL: str(trial.number),
                sinks.TAG_TRIAL_STATE: "RUNNING", **run_tags(cfg.flatten())}
        with tracked_run(self.client, self.experiment_id, f"trial-{trial.number}", tags,
                         parent_run_id=self.parent_run_id, benign=(optuna.TrialPruned,)) as sink:
            trial.set_user_attr(RUN_ATTR, sink.run_id)
            try:
                result = trainer.fit(sink, resume=(run_dir / "checkpoint.pt").exists())
                values = [_metric_value(o.metric, result) for o in spec.objectives]
            except optuna.TrialPruned:
                sink.set_tags({sinks.TAG_TRIAL_STATE: "PRUNED", sinks.TAG_PRUNED: "true"})
                raise
            except BaseException:
                sink.set_tags({sinks.TAG_TRIAL_STATE: "FAIL"})
                raise
            sink.set_tags({sinks.TAG_TRIAL_STATE: "COMPLETE"})
        return values[0] if len(values) == 1 else values

    def _pruning_hook(self, trial: optuna.Trial):
        metric = self.spec.objectives[0].metric

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            if metric in metrics:
                trial.report(metrics[metric], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} ({metric} = {metrics[metric]:.4f})")

        return on_eval

    # --- the loop ----------------------------------------------------------------------------------
    def finished_count(self) -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def target(self) -> int:
        return self.options.n_trials or self.spec.n_trials or self.spec.grid_size()

    def run(self) -> None:
        """Run trials until the study has :meth:`target` finished trials (or the grid is done)."""
        target = self.target()
        if self.finished_count() >= target:
            self.console.print(f"study {self.spec.name!r} already has {self.finished_count()} finished trials "
                               f"(target {target}): nothing to do")
            return
        callbacks = [optuna.study.MaxTrialsCallback(target, states=(optuna.trial.TrialState.COMPLETE,
                                                                     optuna.trial.TrialState.PRUNED)),
                     self._report]
        timeout = self.options.timeout or self.spec.timeout
        try:
            with terminate_on_sigterm():
                self.study.optimize(self.objective, timeout=timeout, callbacks=callbacks, catch=(Exception,),
                                    gc_after_trial=True)
        finally:
            self.client.set_terminated(self.parent_run_id, status="FINISHED")

    def _report(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name
        value = "" if trial.values is None else ", ".join(f"{v:.4f}" for v in trial.values)
        line = f"trial {trial.number} {state} {value}"
        if state == "FAIL":
            run_id = trial.user_attrs.get(RUN_ATTR)
            reason = self.client.get_run(run_id).data.tags.get(sinks.TAG_FAILURE, "") if run_id else ""
            line += f"[red] {reason}[/]"
        if len(self.spec.objectives) == 1:
            try:
                line += f"   best so far: trial {study.best_trial.number} = {study.best_value:.4f}"
            except ValueError:
                pass
        self.console.print(line)


def describe_storage(storage: str | None) -> str:
    from studies.storage import DEFAULT_STORAGE

    return redact(storage or DEFAULT_STORAGE)
