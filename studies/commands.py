"""What the ``paramcrop study`` commands print: the run summary, the study list, one study's trials."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from studies import DEFAULT_STORAGE
from studies.spec import StudySpec
from studies.storage import redact

console = Console()
err = Console(stderr=True)


def _storage(storage: str | None):
    from studies.storage import open_storage

    return open_storage(storage)


def _no_journal(storage: str | None) -> bool:
    """A journal file that does not exist yet: list/show must not create it."""
    from pathlib import Path

    from studies.storage import is_journal

    storage = storage or DEFAULT_STORAGE
    return is_journal(storage) and not Path(storage.removeprefix("journal:")).exists()


def run_study(spec: StudySpec, *, storage: str | None, tracking_uri: str, n_trials: int | None,
              timeout: float | None, overrides: dict[str, Any], progress: bool, register: str | None = None) -> int:
    """Run the study and print its summary; returns the exit code (see ``paramcrop study run --help``):
    0 done, 1 no trial completed, the tracking store or the study storage stayed down or
    ``register`` (a registered model name: the best trial's backbone goes there) failed, 2 bad
    input (nothing created), 3 a full disk, 130 SIGINT, 143 SIGTERM."""
    from paramcrop.files import DISK_FULL_EXIT, disk_full
    from studies.runner import resume_command
    from studies.storage import StorageUnavailable
    from studies.tracking import TrackingUnavailable

    runner = _open_runner(spec, storage=storage, tracking_uri=tracking_uri, n_trials=n_trials, timeout=timeout,
                          overrides=overrides, progress=progress)
    if isinstance(runner, int):
        return runner
    try:
        runner.run()
    except KeyboardInterrupt as exc:
        return _interrupted("SIGTERM" in str(exc))
    except TrackingUnavailable as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}.\nThe study stopped (every further trial would wait for "
                  f"the tracking store); the trials' results are kept in the study storage. When the store is "
                  f"back, resume with: {escape(resume_command())}", highlight=False)
        return 1
    except StorageUnavailable as exc:
        return _storage_lost(exc)
    except Exception as exc:  # a trial's DiskFull, or the study storage's own file on a full disk
        full = disk_full(exc)
        if full is None:
            raise
        err.print(f"[red]error:[/] {escape(str(full))}. Free space there, then resume with: "
                  f"{escape(resume_command())} (a stopped trial resumes from its last good checkpoint)",
                  highlight=False, soft_wrap=True)
        return DISK_FULL_EXIT
    return _finish(runner, tracking_uri, register)


def _storage_lost(exc: Exception) -> int:
    """Say that the study storage stayed down and how to resume; the exit code (1)."""
    from studies.runner import resume_command

    err.print(f"[red]error:[/] {escape(redact(str(exc)))}: this worker stopped (a running trial with a "
              f"checkpoint, its run KILLED). When the storage is back, resume with: {escape(resume_command())}",
              highlight=False)
    return 1


def _open_runner(spec: StudySpec, *, storage: str | None, tracking_uri: str, n_trials: int | None,
                 timeout: float | None, overrides: dict[str, Any], progress: bool):
    """The :class:`~studies.runner.StudyRunner` (the study and its parent run created or joined),
    with the header printed; or the exit code when it cannot be (2 bad input, nothing created; 1
    the tracking store went away)."""
    from studies.runner import StudyOptions, StudyRunner
    from studies.storage import StorageUnavailable
    from studies.tracking import TrackingUnavailable

    options = StudyOptions(storage=storage, tracking_uri=tracking_uri, n_trials=n_trials, timeout=timeout,
                           overrides=overrides or None, progress=progress)
    try:
        runner = StudyRunner(spec, options, console)
    except (ValueError, TrackingUnavailable, StorageUnavailable) as exc:  # bad input (nothing created), a store gone
        err.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False)
        return 2 if isinstance(exc, ValueError) else 1
    console.print(f"[bold]study {spec.name}[/]: {spec.description.strip()}")
    console.print(f"  {spec.grid_size() if spec.sampler == 'grid' else runner.target()} trials wanted "
                  f"({spec.sampler} sampler), {runner.finished_count()} finished already; storage "
                  f"{redact(storage or DEFAULT_STORAGE)}, MLflow {redact(tracking_uri)}", highlight=False)
    return runner


def _interrupted(sigterm: bool) -> int:
    """Say what a stop left and how to resume; the exit code (143 SIGTERM, 130 SIGINT)."""
    from studies.runner import resume_command

    err.print(f"[yellow]{'terminated (SIGTERM)' if sigterm else 'interrupted (SIGINT)'}[/]: a trial that was "
              f"running is marked FAIL, its MLflow run KILLED, and it is queued again to resume from its last "
              f"checkpoint. Finished trials are kept. Resume with: {escape(resume_command())}", highlight=False)
    return 143 if sigterm else 130


def _finish(runner, tracking_uri: str, register: str | None) -> int:
    """The summary, then ``register``; the exit code (0 some trial completed and registered when asked)."""
    import optuna

    print_summary(runner, tracking_uri)
    complete = runner.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete and register:
        return 0 if _register(runner.client, runner.study, register, [o.metric for o in runner.spec.objectives]) else 1
    return 0 if complete else 1


WORKER_LOG = "worker-{index}.log"
"""Each worker's output, in the study's runs folder (``paramcrop-runs/STUDY/worker-0.log``)."""


def worker_env(index: int, environ: dict[str, str], n_gpus: int) -> dict[str, str]:
    """Worker ``index``'s environment: with several GPUs visible, pinned to one of them
    (``CUDA_VISIBLE_DEVICES`` = visible id ``index % n_gpus``: the ids of the parent's own
    ``CUDA_VISIBLE_DEVICES`` when it has one, else ``0..n_gpus-1``); otherwise ``environ``'s own.
    Several workers share the cores, so their OpenMP threads sleep as soon as idle
    (``OMP_WAIT_POLICY=PASSIVE``, no ``GOMP_SPINCOUNT``: cli.py's short spin is for a process alone)
    unless ``environ`` sets ``OMP_WAIT_POLICY``."""
    env = {**environ, "COLUMNS": environ.get("COLUMNS", "200")}  # wide log lines
    if "OMP_WAIT_POLICY" not in environ:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        env.pop("GOMP_SPINCOUNT", None)
    if n_gpus > 1:
        listed = environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in listed.split(",")][:n_gpus] if listed else [str(g) for g in range(n_gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ids[index % len(ids)]
    return env


def run_workers(spec: StudySpec, child_args: list[str], workers: int, *, storage: str | None, tracking_uri: str,
                n_trials: int | None, timeout: float | None, overrides: dict[str, Any], progress: bool,
                register: str | None = None) -> int:
    """``paramcrop study run --workers N``: N ``paramcrop study run CHILD_ARGS --no-progress``
    subprocesses on the same study, and one view of it here.

    This process checks the input and creates (or joins) the study and its parent run first, so bad
    input starts no worker (exit 2). Each worker is pinned to one GPU when several are visible and
    ``--device`` names none (:func:`worker_env`), runs in its own session (a terminal's Ctrl-C
    reaches only this process) and writes to :data:`WORKER_LOG`. The view: a line per trial that
    starts or ends, read from the study storage, and a progress bar of finished / wanted trials.
    SIGINT / SIGTERM here are forwarded to every worker, which stops as a single worker does (the
    first signal at the end of the step with a checkpoint, a second at once; trials FAIL and queued
    again, runs KILLED); the exit code is then 130 / 143 (the first signal's). Otherwise the
    summary and ``register`` follow as in :func:`run_study`; a worker that failed makes it 1."""
    import os
    import signal
    import subprocess
    import sys

    runner = _open_runner(spec, storage=storage, tracking_uri=tracking_uri, n_trials=n_trials, timeout=timeout,
                          overrides=overrides, progress=progress)
    if isinstance(runner, int):
        return runner
    import torch

    explicit = str((overrides or {}).get("device", "")).startswith(("cuda:", "cpu"))
    n_gpus = 0 if explicit else torch.cuda.device_count()
    log_dir = runner.options.runs_root / spec.name
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "cli", "study", "run", *child_args, "--no-progress"]
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, frame):  # the workers are in their own sessions: this is the only signal they get
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            if received:
                break
            with (log_dir / WORKER_LOG.format(index=index)).open("w") as out:
                procs.append(subprocess.Popen(command, env=worker_env(index, dict(os.environ), n_gpus), stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        pinned = f", pinned to {min(n_gpus, workers)} GPUs" if n_gpus > 1 else ""
        console.print(f"{len(procs)} workers{pinned}; their output: {log_dir / WORKER_LOG.format(index='N')}",
                      highlight=False)
        lost = _watch(runner, procs, progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return _interrupted(received[0] == signal.SIGTERM)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for index, code in failed:
        log = log_dir / WORKER_LOG.format(index=index)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        err.print(f"[red]worker {index} exited with {code}[/]; the end of {log}:\n{escape(tail)}", highlight=False)
    if lost is not None:
        return _storage_lost(lost)
    code = _finish(runner, tracking_uri, register)
    return 1 if failed else code


def _watch(runner, procs: list, progress: bool, poll_s: float = 0.5):
    """Until every process in ``procs`` has exited: a line per trial whose state changes, and a
    progress bar of finished (complete + pruned) / :meth:`~studies.runner.StudyRunner.target` trials.
    Returns the :class:`~studies.storage.StorageUnavailable` that ended the view when the study
    storage stayed down (the workers then stop by themselves), else None."""
    import time

    from optuna.trial import TrialState
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from studies.storage import StorageUnavailable

    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    seen = {t.number: t.state for t in runner.study.get_trials(deepcopy=False)}  # earlier trials: not shown again
    columns = [TextColumn("[bold]study"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
               TextColumn("{task.fields[running]} running"), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("study", total=runner.target(), completed=runner.finished_count(), running=0)
        while True:
            exited = all(p.poll() is not None for p in procs)  # before the read: the last states are shown
            try:
                trials = runner.study.get_trials(deepcopy=False)
            except StorageUnavailable as exc:
                for proc in procs:
                    proc.wait()
                return exc
            for t in trials:
                if seen.get(t.number) != t.state:
                    seen[t.number] = t.state
                    value = "" if t.values is None else " " + ", ".join(f"{v:.4f}" for v in t.values)
                    console.print(f"trial {t.number} {t.state.name}{value}  ({_params(t.params)})", highlight=False)
            bar.update(task, completed=sum(t.state in finished_states for t in trials),
                       running=sum(t.state == TrialState.RUNNING for t in trials))
            if exited:
                return None
            time.sleep(poll_s)


def _register(client, study, name: str, metrics: list[str], trial: int | None = None) -> bool:
    """:func:`studies.registration.register_trial`, reported; False (printed) when it cannot."""
    from studies.registration import register_trial
    from studies.tracking import TrackingUnavailable

    try:
        done = register_trial(client, study, name, metrics, trial)
    except (ValueError, TrackingUnavailable) as exc:
        err.print(f"[red]error:[/] cannot register a backbone as {escape(name)!r}: {escape(redact(str(exc)))}",
                  highlight=False)
        return False
    shown = ", ".join(f"{k} = {v:.4f}" for k, v in done.objectives.items())
    console.print(f"registered [bold]models:/{escape(done.name)}/{done.version}[/]: the backbone of trial {done.trial} "
                  f"({shown}), run {done.run_id}", highlight=False)
    return True


def register_study(study_name: str, model_name: str, *, trial: int | None, storage: str | None,
                   tracking_uri: str) -> int:
    """``paramcrop study register``: exit 0 registered, 1 the registration failed (no backbone model,
    no complete trial, the tracking store down), 2 no such study."""

    from studies.parent import SPEC_ATTR
    from studies.tracking import open_tracking_store

    study = load_named_study(study_name, storage)
    if study is None:
        return 2
    try:
        client = open_tracking_store(tracking_uri)
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False)
        return 2
    stored = study.user_attrs.get(SPEC_ATTR)
    metrics = [o.metric for o in StudySpec.from_yaml(stored).objectives] if stored else \
        [f"objective_{i}" for i in range(len(study.directions))]
    return 0 if _register(client, study, model_name, metrics, trial) else 1


def print_summary(runner, tracking_uri: str) -> None:
    from collections import Counter

    study, spec = runner.study, runner.spec
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    table = Table(title=f"study {spec.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column("params")
    for o in spec.objectives:
        table.add_column(o.metric, justify="right")
    for t in trials:
        values = t.values or [None] * len(spec.objectives)
        table.add_row(str(t.number), t.state.name, _params(t.params),
                      *("" if v is None else f"{v:.4f}" for v in values))
    console.print(table)
    if len(spec.objectives) == 1 and states.get("COMPLETE"):
        best = study.best_trial
        console.print(f"[bold green]best[/]: trial {best.number}, {spec.objectives[0].metric} = {best.value:.4f} "
                      f"({_params(best.params)})")
    uri_flag = "" if tracking_uri == "sqlite:///mlflow.db" else f" --tracking-uri {redact(tracking_uri)}"
    console.print(f"analyse:  paramcrop analyze iou-curves --study {spec.name}{uri_flag}")
    console.print(f"browse:   paramcrop ui{uri_flag}   (MLflow experiment {spec.name!r})")


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('variant:')}={v}" for k, v in params.items())


def list_studies(storage: str | None) -> int:
    import optuna

    if _no_journal(storage):
        console.print(f"no studies yet in {storage or DEFAULT_STORAGE}: run `paramcrop study run`")
        return 0
    try:
        opened = _storage(storage)
        summaries = optuna.get_all_study_summaries(opened, include_best_trial=False)
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False)
        return 2
    if not summaries:
        console.print("no studies yet: run `paramcrop study run`")
        return 0
    table = Table(title="studies")
    for col in ("name", "trials", "complete", "pruned", "failed", "running", "started"):
        table.add_column(col)
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=opened)
        trials = study.get_trials(deepcopy=False)
        count = lambda state: str(sum(t.state.name == state for t in trials))  # noqa: E731
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else ""
        table.add_row(s.study_name, str(len(trials)), count("COMPLETE"), count("PRUNED"), count("FAIL"),
                      count("RUNNING"), started)
    console.print(table)
    return 0


def trial_rows(study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, params, values, duration (s), MLflow run id."""
    from studies.runner import RUN_ATTR

    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "values": t.values, "duration_s": duration, "mlflow_run_id": t.user_attrs.get(RUN_ATTR)})
    return rows


def load_named_study(name: str, storage: str | None):
    """The Optuna study ``name`` in ``storage``, or None after printing why not (no journal file, no
    such study: the known ones are listed, a storage that cannot be opened or stayed down)."""
    import optuna

    from studies.storage import StorageUnavailable

    if _no_journal(storage):
        err.print(f"[red]error:[/] no study {name!r}: {escape(storage or DEFAULT_STORAGE)} does not exist",
                  highlight=False)
        return None
    try:
        opened = _storage(storage)
        return optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
        err.print(f"[red]error:[/] no study {name!r} in this storage; known studies: {', '.join(known) or '(none)'}")
    except (ValueError, StorageUnavailable) as exc:
        err.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False)
    return None


def show_study(name: str, storage: str | None, fmt: str) -> int:
    study = load_named_study(name, storage)
    if study is None:
        return 2
    rows = trial_rows(study)
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif fmt == "csv":
        buffer = io.StringIO()
        param_names = sorted({k for r in rows for k in r["params"]})
        writer = csv.writer(buffer)
        writer.writerow(["number", "state", *param_names, "values", "duration_s", "mlflow_run_id"])
        for r in rows:
            values = "" if r["values"] is None else ";".join(f"{v:.6g}" for v in r["values"])
            writer.writerow([r["number"], r["state"], *(r["params"].get(k, "") for k in param_names), values,
                             "" if r["duration_s"] is None else f"{r['duration_s']:.1f}", r["mlflow_run_id"] or ""])
        print(buffer.getvalue(), end="")
    else:
        table = Table(title=f"study {name}")
        for col in ("trial", "state", "params", "objective", "duration", "MLflow run"):
            table.add_column(col, overflow="fold")
        for r in rows:
            values = "" if r["values"] is None else ", ".join(f"{v:.4f}" for v in r["values"])
            duration = "" if r["duration_s"] is None else f"{r['duration_s']:.0f} s"
            table.add_row(str(r["number"]), r["state"], _params(r["params"]), values, duration,
                          r["mlflow_run_id"] or "")
        console.print(table)
    return 0


DASHBOARD_MISSING = ("optuna-dashboard is not installed: pip install 'paramcrop[dashboard]' "
                     "(or pip install optuna-dashboard)")


def run_dashboard(storage: str | None, host: str, port: int) -> int:
    """Serve Optuna's dashboard (``optuna_dashboard.run_server``, in this process) on the study
    storage in use, the same rule as ``study run --storage`` (default: the journal file here,
    opened as a ``JournalStorage``, which the dashboard needs for journal files; else an RDB URL).
    Returns the exit code: 2 when the package is missing or the storage cannot be opened (or a
    journal file does not exist: nothing is created), 130 on Ctrl-C."""
    import importlib.util


    if importlib.util.find_spec("optuna_dashboard") is None:
        err.print(f"[red]error:[/] {escape(DASHBOARD_MISSING)}", highlight=False)
        return 2
    shown = redact(storage or DEFAULT_STORAGE)
    if _no_journal(storage):
        err.print(f"[red]error:[/] no study storage {escape(shown)} here: run `paramcrop study run` first, or give "
                  f"--storage", highlight=False)
        return 2
    try:
        opened = _storage(storage)
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False)
        return 2
    import optuna_dashboard

    console.print(f"Optuna dashboard for {escape(shown)} at http://{host}:{port}  (Ctrl-C to stop)", highlight=False)
    try:
        optuna_dashboard.run_server(opened, host=host, port=port)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the port is taken, the host is not an interface here
        err.print(f"[red]error:[/] cannot serve on {host}:{port}: {escape(str(exc))}", highlight=False)
        return 2
    return 0
