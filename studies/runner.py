"""``paramcrop study run``: an Optuna study whose every trial is a tracked MLflow run.

MLflow layout: one experiment per study, one parent run per study (created by the worker that
creates the Optuna study, so exactly one exists however many workers join, :mod:`studies.parent`),
one child run per trial. Trial and run point at each other: the trial's user attribute
``mlflow_run_id`` and the run's tags ``paramcrop.study`` / ``paramcrop.trial``.

Before anything is created, the space is checked (:meth:`StudyRunner.preflight`: a clip longer
than every video, a view smaller than the backbone accepts, a missing device are refused), the
tracking store must answer and the study storage must open: bad input creates nothing (exit 2).
A trial whose configuration still cannot be built ends its run FAILED with the reason.

Resume: the same name and storage continue the study. Finished trials are never re-run.

- A worker that dies (SIGKILL, OOM, lost host) leaves its trial RUNNING; it stops sending
  heartbeats (every ``spec.heartbeat`` s) and after three missed ones any worker marks it FAIL,
  ends its MLflow run FAILED and queues a retry (up to ``MAX_RETRY`` times per trial).
- SIGINT / SIGTERM stop the running trial at the end of its current step with a checkpoint (a
  second signal stops at once): the trial is FAIL, its run KILLED, and a retry is queued.
- A retry is a new trial (and a new MLflow run) with the same parameters that works in the
  original trial's folder, so it resumes from the last checkpoint; its run gets the earlier
  attempt's metrics for the steps before the checkpoint, so its history is complete and each
  step appears once.
- Workers never start a grid point that another worker is running: a worker with nothing left
  to start waits for the running trials (retrying any whose worker dies) and exits when the
  study is done.
"""
from __future__ import annotations

import itertools
import logging
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from paramcrop import sinks
from paramcrop.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, recover
from paramcrop.files import DiskFull, disk_full
from paramcrop.plan import resolve
from studies import DEFAULT_STORAGE
from studies.conventions import log_study_summary, trial_run_name
from studies.mlflow_sink import SPOOL_PREFIX, MlflowSink, replay_spool
from studies.parent import StudyParent
from studies.replay import check_replay_references, grid_sampler, prepare_replay_trial
from studies.runs import tracked_training
from studies.signals import GracefulStop
from studies.spec import StudySpec
from studies.storage import HEARTBEAT_ATTR, StorageUnavailable, open_storage, redact
from studies.tracking import (TrackingUnavailable, call, check_tracking_store, open_tracking_store, run_tags,
                              runs_url)

MAX_RETRY = 2  # retries of a trial whose worker died (interrupted trials are always retried)
RUN_ATTR = "mlflow_run_id"
PREVIOUS_RUN_ATTR = "mlflow_previous_run_id"  # a retry: the run of the attempt it resumes
LOST_ATTR = "paramcrop:lost"  # system attr: how many times this trial's workers died
RUNS_ROOT = Path("paramcrop-runs")
TAG_RETRY_OF = "paramcrop.retry_of"  # trial number of the attempt a retry continues
TAG_RESUMED_AT = "paramcrop.resumed_at_step"  # the checkpoint step it resumed from
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# an interrupted (or taken over, or disk-full) trial is reported by the runner: no traceback from Optuna's
# "Trial N failed" warning
logging.getLogger("optuna.study._optimize").addFilter(
    lambda record: not (record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, DiskFull, TakenOver))))


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


class DuplicateGridPoint(RuntimeError):
    """A grid point that another worker took at the same moment."""


class TakenOver(RuntimeError):
    """A trial that another worker failed as stale while it was still running here."""


def resume_command() -> str:
    """The command line to resume with (passwords redacted)."""
    args = sys.argv[1:]
    if args[:2] == ["study", "run"]:
        return "paramcrop " + " ".join(shlex.quote(redact(a)) for a in args)
    return "the same `paramcrop study run` command"


def _sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return grid_sampler(spec)  # Optuna's, with `trial:` replay points last (studies/replay.py)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=spec.sampler_seed)


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[spec.pruner]()


def _metric_value(name: str, result) -> float:
    values = {**result.final_metrics, **result.eval_metrics, "train/seconds": result.seconds}
    if name not in values:
        hint = ("; a downstream metric eval/NAME/METRIC needs its source in eval.datasets (what it could not "
                "compute is the run's paramcrop.eval_skipped.NAME tag)") if name.count("/") >= 2 else ""
        raise KeyError(f"objective metric {name!r} was not measured; available: {', '.join(sorted(values))}{hint}")
    return float(values[name])


class StudyRunner:
    """Creates or joins the study, its experiment and parent run, and runs trials."""

    def __init__(self, spec: StudySpec, options: StudyOptions, console: Console | None = None) -> None:
        self.spec, self.options = spec, options
        self.console = console or Console()
        self.stop = GracefulStop()
        self.tracking_down: TrackingUnavailable | None = None
        self.storage_lost: StorageUnavailable | None = None  # the study storage stayed down past its window
        self.disk_full: DiskFull | None = None  # a trial's write failed for want of space: the study stops
        self.taken_over: int | None = None  # a trial another worker failed as stale while it ran here
        self.preflight()  # each raises ValueError naming the problem, before anything is created
        self.tracking_uri = uri = options.tracking_uri or sinks.default_tracking_uri()
        check_tracking_store(uri)  # creates nothing
        self.storage = open_storage(options.storage, heartbeat=spec.heartbeat, on_stale=self._on_stale,
                                    on_lost=self._storage_lost)
        self.client = open_tracking_store(uri)  # a local store is created here, after the storage opened
        self.study, self.parent_run_id, self.experiment_id = self._create_or_join()
        self._replay_spools()

    def preflight(self) -> None:
        """What would make every trial of a configuration fail, checked once per distinct value over
        the space (its first 512 points): the data holds one clip (a probe of the first video long
        enough) and its validation split can be carved, the objective is measured (a validation
        objective needs ``data.val_fraction`` > 0, also after ``--set``), the backbone accepts the view
        size, the device exists."""
        from paramcrop.backbones import create_backbone
        from paramcrop.data import resolve_source
        from paramcrop.data.datasets import check_window_fits
        from paramcrop.plan import resolve_device

        spec, overrides = self.spec, self.options.overrides or {}
        check_replay_references(spec)
        searched = {key: dim.key for dim in spec.dimensions for key in
                    ({k for choice in dim.choices.values() for k in choice} if dim.type == "variants" else {dim.key})}
        for key in overrides:
            if key in searched:
                raise ValueError(f"--set {key}: the study searches {key} (search_space.{searched[key]}); an "
                                 f"override would record wrong params in Optuna. Drop it, or change the spec")
        base = spec.base_config().with_overrides(overrides)
        configs = [base] + [spec.config_for(values)[0].with_overrides(overrides)
                            for values in itertools.islice(spec._points(spec.dimensions, base.flatten(), {}), 512)]
        for c in configs:
            spec.check_measured(c, "a --set override" if overrides else "config")
        for source, frames, stride, val_fraction in sorted(
                {(c.data.source, c.data.frames, c.data.stride, c.data.val_fraction) for c in configs}, key=str):
            try:
                check_window_fits(resolve_source(source).with_validation(val_fraction).train, frames, stride)
            except (ValueError, OSError) as exc:
                raise ValueError(f"data {source!r}: {exc}") from None
        backbones = {(repr(c.component("backbone")), c.view.frames, c.view.size): c for c in configs}
        for c in backbones.values():
            name, kwargs = c.component("backbone")
            create_backbone(name, **kwargs).check_input(c.view.frames, c.view.size)
        for device in sorted({c.device for c in configs}):
            resolve_device(device)

    # --- study, experiment and parent run -------------------------------------------------------
    def _create_or_join(self) -> tuple[optuna.Study, str, str]:
        """Create or load the study (objectives named after their metrics), then its experiment and
        parent run (:mod:`studies.parent`); says where to browse it."""
        spec = self.spec
        kwargs = dict(study_name=spec.name, storage=self.storage, sampler=_sampler(spec), pruner=_pruner(spec))
        parent = StudyParent(spec, self.client, self.storage, self.options.runs_root, self.options.overrides or {},
                             self.console)
        try:
            study = optuna.create_study(directions=spec.directions, **kwargs)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kwargs)
            parent.check_same(study)
            parent_id, experiment_id = parent.wait(study)
        else:
            study.set_metric_names([o.metric for o in spec.objectives])
            parent_id, experiment_id = parent.record(study)
        self.console.print(f"browse: paramcrop ui --tracking-uri {redact(self.tracking_uri)} --experiment {spec.name}"
                           f", then {runs_url(experiment_id)}", soft_wrap=True)
        return study, parent_id, experiment_id

    def _replay_spools(self) -> None:
        """Send what earlier trials could not (the tracking store was down when they ended)."""
        for path in sorted((self.options.runs_root / self.spec.name).glob(f"*/{SPOOL_PREFIX}*.json")):
            try:
                run_id = replay_spool(self.client, path)
            except Exception as exc:  # noqa: BLE001 - keep the file for the next attempt
                self.console.print(f"[yellow]could not send {path} yet: {exc}[/]")
            else:
                self.console.print(f"sent {path.name} to MLflow run {run_id} (spooled while the tracking store "
                                   f"was down)")

    # --- retries -----------------------------------------------------------------------------------
    def _on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial whose worker died: end its run FAILED, then queue a retry (at most ``MAX_RETRY``)."""
        run_id = trial.user_attrs.get(RUN_ATTR)
        reason = f"worker died (no heartbeat for {3 * self.spec.heartbeat} s)"
        if run_id:
            try:
                call(self.client.set_tag, run_id, sinks.TAG_FAILURE, reason)
                call(self.client.set_tag, run_id, sinks.TAG_TRIAL_STATE, "FAIL")
                call(self.client.set_terminated, run_id, status="FAILED")
            except Exception as exc:  # noqa: BLE001 - the retry matters more than the old run's status
                self.console.print(f"[yellow]could not end run {run_id} of trial {trial.number}: {exc}[/]")
        retried = self._requeue(study, trial, lost=True)
        what = f"queued retry trial {retried}" if retried is not None else f"not retried again ({MAX_RETRY} retries)"
        self.console.print(f"[yellow]trial {trial.number} lost its worker (no heartbeat for "
                           f"{3 * self.spec.heartbeat} s): marked FAIL, {what}[/]")

    def _requeue(self, study: optuna.Study, trial: FrozenTrial, lost: bool) -> int | None:
        """Queue a retry of ``trial`` (a WAITING trial with its params and grid point); returns its
        number, or None when a trial whose workers keep dying has had ``MAX_RETRY`` retries."""
        attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
        attrs.setdefault("failed_trial", trial.number)  # the original: its folder holds the checkpoint
        attrs["retry_history"] = [*attrs.get("retry_history", []), trial.number]
        if lost:
            attrs[LOST_ATTR] = attrs.get(LOST_ATTR, 0) + 1
            if attrs[LOST_ATTR] > MAX_RETRY:
                return None
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (RUN_ATTR, PREVIOUS_RUN_ATTR)}
        if trial.user_attrs.get(RUN_ATTR):
            user_attrs[PREVIOUS_RUN_ATTR] = trial.user_attrs[RUN_ATTR]
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                            distributions=trial.distributions, user_attrs=user_attrs,
                                            system_attrs=attrs))
        return max(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def trial_dir(self, trial: optuna.Trial) -> Path:
        """Checkpoint folder; a retried trial reuses its original's, so it resumes from there."""
        origin = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        return self.options.runs_root / self.spec.name / f"trial-{origin if origin is not None else trial.number:04d}"

    # --- one trial ---------------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float | list[float]:
        """Train one trial in its MLflow run. An interrupted trial (SIGINT/SIGTERM at any point) is
        queued again before the interrupt propagates, so resuming the study finishes it; so is a
        trial stopped by a full disk, which stops the study (every further trial would write there)."""
        try:
            return self._objective(trial)
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            retry = self._requeue(trial.study, trial.study._storage.get_trial(trial._trial_id), lost=False)
            self.console.print(f"[yellow]trial {trial.number} stopped by a full disk: FAIL; queued again as trial "
                               f"{retry} (it resumes from its last good checkpoint in {self.trial_dir(trial)})[/]")
            self.disk_full = full
            trial.study.stop()
            raise full from None
        except KeyboardInterrupt:
            try:
                frozen = trial.study._storage.get_trial(trial._trial_id)
                retry = self._requeue(trial.study, frozen, lost=False)
            except StorageUnavailable:  # the rerun fails it as stale (no heartbeat) and retries it
                self.console.print(f"[yellow]trial {trial.number} stopped with a checkpoint, its run KILLED; the study "
                                   f"storage is unreachable, so it stays RUNNING there: a rerun retries it from its "
                                   f"checkpoint after {3 * self.spec.heartbeat} s[/]")
                raise
            self.console.print(f"[yellow]trial {trial.number} interrupted: FAIL, its run KILLED; queued again as "
                               f"trial {retry} (it resumes from {self.trial_dir(trial)})[/]")
            raise

    def _objective(self, trial: optuna.Trial) -> float | list[float]:
        spec, console = self.spec, self.console
        frozen = trial.study._storage.get_trial(trial._trial_id)
        self._check_not_taken(trial.study, frozen)
        cfg, overrides = spec.sample(trial)
        if self.options.overrides:
            cfg = cfg.with_overrides(self.options.overrides)
        shown = ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "(no search space)"
        history = frozen.system_attrs.get("retry_history", [])
        console.rule(f"[bold]trial {trial.number}[/]  {shown}" + (f"  (retry of trial {history[-1]})" if history
                                                                   else ""))
        run_dir = self.trial_dir(trial)
        # only a retry resumes: a fresh trial never trusts a checkpoint it did not write; a newest
        # checkpoint that does not load falls back to the one before, and with none the trial starts over
        had_checkpoint = any((run_dir / name).exists() for name in (CHECKPOINT_NAME, PREVIOUS_NAME))
        resume_step = recover(run_dir, say=self._warn) if history else None
        if history and had_checkpoint and resume_step is None:
            self._warn(f"trial {trial.number} starts over from step 0 (no checkpoint in {run_dir} loads)")
        on_eval = self._pruning_hook(trial) if spec.pruner != "none" else None
        tags = {sinks.TAG_ROLE: "trial", sinks.TAG_STUDY: spec.name, sinks.TAG_TRIAL: str(trial.number),
                sinks.TAG_TRIAL_STATE: "RUNNING", **run_tags(cfg.flatten())}
        if history:
            tags[TAG_RETRY_OF] = str(history[-1])
        if resume_step is not None:
            tags[TAG_RESUMED_AT] = str(resume_step)
        values: list[float] | None = None
        sink: MlflowSink | None = None
        try:
            name = trial_run_name(trial.number, trial.params, history[-1] if history else None)
            with tracked_training(self.client, self.experiment_id, name, tags, stop=self.stop, run_dir=run_dir,
                                  progress=self.options.progress, parent_run_id=self.parent_run_id,
                                  benign=(optuna.TrialPruned,), spool_dir=run_dir) as run:
                sink = run.sink
                trial.set_user_attr(RUN_ATTR, sink.run_id)
                if resume_step is not None:
                    self._continue_history(sink, run_dir, frozen.user_attrs.get(PREVIOUS_RUN_ATTR), resume_step)
                try:
                    # resolved inside the run: a configuration that cannot be built ends it FAILED with the
                    # reason; the trainer flushes the metrics with each checkpoint (a retry copies them)
                    cfg, trial_sink = prepare_replay_trial(cfg, spec, trial, self.client, self.options.runs_root,
                                                           sink, say=console.print)  # a replay's source
                    result = run.fit(resolve(cfg), resume=resume_step is not None, sink=trial_sink, on_eval=on_eval)
                    values = [_metric_value(o.metric, result) for o in spec.objectives]
                    logged = {**result.final_metrics, **result.eval_metrics}
                    sink.log_metrics({o.metric: v for o, v in zip(spec.objectives, values) if o.metric not in logged},
                                     result.steps - 1)  # an objective such as train/seconds is a run metric too
                    if trial.study._storage.get_trial(trial._trial_id).state.is_finished():
                        self.taken_over = trial.number
                        raise TakenOver(f"another worker failed trial {trial.number} meanwhile (no heartbeat from it "
                                        f"for {3 * spec.heartbeat} s: a busy or cut-off host) and retries it")
                except optuna.TrialPruned:
                    sink.set_tags({sinks.TAG_TRIAL_STATE: "PRUNED", sinks.TAG_PRUNED: "true"})
                    raise
                except BaseException:
                    sink.set_tags({sinks.TAG_TRIAL_STATE: "FAIL"})
                    raise
                sink.set_tags({sinks.TAG_TRIAL_STATE: "COMPLETE"})
        except TrackingUnavailable as exc:
            if sink is None:  # not even the run could be created: the trial never started
                self._requeue(trial.study, frozen, lost=False)
            self._tracking_stopped(trial.study, exc)
            if values is None:
                raise
        except BaseException:
            if sink is not None and sink.unavailable is not None:
                self._tracking_stopped(trial.study, sink.unavailable)
            raise
        return values[0] if len(values) == 1 else values

    def _check_not_taken(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """Two workers that ask for the last free grid point at the same moment would both get it
        (Optuna's grid sampler then re-runs a point); the later one stops before running anything."""
        grid_id = frozen.system_attrs.get("grid_id")
        if grid_id is None or "failed_trial" in frozen.system_attrs:
            return
        for other in study.get_trials(deepcopy=False):
            if other.number < frozen.number and other.system_attrs.get("grid_id") == grid_id and \
                    other.state != TrialState.FAIL:
                raise DuplicateGridPoint(f"grid point {grid_id} is taken by trial {other.number} (two workers asked "
                                         f"at once); nothing was run")

    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning: {message}[/]", highlight=False)

    def _storage_lost(self, exc: StorageUnavailable) -> None:
        """The study storage stayed down past its window (maybe seen by the heartbeat thread): the running
        trial stops at its next step boundary with a checkpoint, as on SIGTERM."""
        self.storage_lost = exc
        self.stop.request(str(exc))

    def _tracking_stopped(self, study: optuna.Study, exc: TrackingUnavailable) -> None:
        self.tracking_down = exc
        study.stop()

    def _continue_history(self, sink: MlflowSink, run_dir: Path, previous_run: str | None, step: int) -> None:
        """A retry resuming at ``step``: the earlier crop images and the earlier attempt's metrics for
        the steps before ``step`` (``Trainer.fit`` logs the params, config and datasets)."""
        for path in sorted((run_dir / "crops").glob("*.png")):
            sink.log_artifact(path, "crops")
        if previous_run:
            try:
                metrics = call(self.client.get_run, previous_run).data.metrics
                for key in metrics:
                    sink.queue_metrics(m for m in call(self.client.get_metric_history, previous_run, key)
                                       if m.step < step)
            except Exception as exc:  # noqa: BLE001 - the retry itself must go on
                self.console.print(f"[yellow]could not copy the metrics of run {previous_run}: {exc}[/]")
        sink.flush(block=False)

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
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def target(self) -> int:
        return self.options.n_trials or self.spec.n_trials or self.spec.grid_size()

    def _work(self) -> tuple[bool, int]:
        """(is there a trial this worker may start, how many trials run elsewhere). A grid point that
        another worker runs is never started twice; a queued retry always may be."""
        trials = self.study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if any(t.state == TrialState.WAITING for t in trials):
            return True, running
        if self.spec.sampler == "grid":
            taken = {t.system_attrs.get("grid_id") for t in trials}
            return len(taken - {None}) < self.spec.grid_size(), running
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        return finished + running < self.target(), running

    def run(self) -> None:
        """Run trials until the study has :meth:`target` finished trials (or the grid is done).

        Raises ``KeyboardInterrupt`` (SIGINT) or :class:`~studies.tracking.RunInterrupted` (SIGTERM)
        after the running trial was stopped, :class:`TrackingUnavailable` when the tracking store
        stayed down (the study stops: every further trial would wait for it),
        :class:`StorageUnavailable` when the study storage did (its trial stopped as on SIGTERM), and
        :class:`~paramcrop.files.DiskFull` when a trial's write found no space (it is queued again)."""
        try:
            self._loop()
        except BaseException:
            if self.storage_lost is not None:  # whatever Optuna raised once the storage was gone
                raise self.storage_lost from None
            raise
        finally:
            if self.tracking_down is None and self.storage_lost is None:
                try:
                    call(self.client.set_terminated, self.parent_run_id, status="FINISHED", window=10.0)
                except Exception as exc:  # noqa: BLE001
                    self.console.print(f"[yellow]could not end the study's parent run: {exc}[/]")

    def _loop(self) -> None:
        """:meth:`run`'s loop: start a trial, wait for other workers' or stop."""
        target = self.target()
        timeout = self.options.timeout or self.spec.timeout
        deadline = time.monotonic() + timeout if timeout else None
        waiting_shown = looked_again = False
        if self.finished_count() >= target:
            self.console.print(f"study {self.spec.name!r} already has {self.finished_count()} finished trials "
                               f"(target {target}): nothing to do")
            return
        with self.stop.installed():
            while self.finished_count() < target and (deadline is None or time.monotonic() < deadline):
                has_work, running = self._work()
                if not has_work:
                    if not running and not looked_again:  # a worker that just failed a stale trial queues its retry
                        looked_again = True
                        time.sleep(min(3 * self.spec.heartbeat, 5))
                        continue
                    if not running:  # the grid is done, but some points failed
                        failed = len(self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
                        self.console.print(f"no grid point left to start: {failed} trial(s) failed and are not "
                                           f"run again (`paramcrop study show {self.spec.name}` says why)")
                        break
                    looked_again = False
                    if not waiting_shown:
                        self.console.print(f"waiting for {running} trial(s) running in other workers (a dead "
                                           f"worker's trial is retried here after {3 * self.spec.heartbeat} s)")
                        waiting_shown = True
                    time.sleep(min(self.spec.heartbeat, 5))
                    optuna.storages.fail_stale_trials(self.study)
                    continue
                waiting_shown = looked_again = False
                try:
                    self.study.optimize(self.objective, n_trials=1, callbacks=[self._report], catch=(Exception,),
                                        gc_after_trial=True)
                except ValueError:  # Optuna cannot tell a trial that is finished already: a TakenOver one
                    if self.taken_over is None:
                        raise
                    self.console.print(f"[yellow]trial {self.taken_over} was failed meanwhile by another worker, which "
                                       f"retries it from its checkpoint; going on[/]")
                    self.taken_over = None
                if self.tracking_down is not None:
                    raise self.tracking_down
                if self.disk_full is not None:
                    raise self.disk_full
                self.stop.check()  # a signal that came during the final evaluation

    def _report(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.tracking_down is None:
            try:
                log_study_summary(self.client, self.parent_run_id, study)
            except Exception as exc:  # noqa: BLE001 - a summary must not stop the study
                self.console.print(f"[yellow]could not update the study's summary on its parent run: {exc}[/]")
        state = trial.state.name
        value = "" if trial.values is None else ", ".join(f"{v:.4f}" for v in trial.values)
        line = f"trial {trial.number} {state} {value}"
        if state == "FAIL" and self.tracking_down is None:
            run_id = trial.user_attrs.get(RUN_ATTR)
            try:
                reason = call(self.client.get_run, run_id, window=10.0).data.tags.get(sinks.TAG_FAILURE, "") \
                    if run_id else ""
            except Exception:  # noqa: BLE001
                reason = ""
            line += f"[red] {reason}[/]"
        if len(self.spec.objectives) == 1:
            try:
                line += f"   best so far: trial {study.best_trial.number} = {study.best_value:.4f}"
            except ValueError:
                pass
        self.console.print(line)


def describe_storage(storage: str | None) -> str:
    return redact(storage or DEFAULT_STORAGE)
