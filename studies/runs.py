"""Tracked training: the trainer inside an MLflow run, shared by ``paramcrop train`` and study trials.

:func:`tracked_training` opens the run (:func:`~studies.mlflow_sink.tracked_run`) and yields a
:class:`TrackedTraining` whose :meth:`~TrackedTraining.fit` trains a resolved plan into it, taking
SIGINT / SIGTERM at a step boundary. :func:`run_training` is ``paramcrop train``: one such run, a summary.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from paramcrop import sinks
from paramcrop.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, recover
from paramcrop.files import DISK_FULL_EXIT, disk_full
from paramcrop.config import LOSS_NAMES, TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.plan import RunPlan, resolve
from paramcrop.sinks import redact_url
from paramcrop.train import Trainer, TrainResult
from studies.mlflow_sink import SPOOL_PREFIX, MlflowSink, replay_spool, tracked_run
from studies.signals import GracefulStop
from studies.tracking import (TrackingUnavailable, call, check_tracking_store, get_or_create_experiment,
                              open_tracking_store, run_tags, runs_url)

RUN_ID_FILE = "mlflow_run_id.txt"


def run_name(cfg: TrainConfig) -> str:
    """A readable run name (and run folder): crop (and strength), framework, backbone, then the
    head when it is not ``mlp`` and each auxiliary loss that is on (its weight when not 1), seed:
    ``paramcrop-l1-simclr-tiny3d-cate-region-order0.5-s0``."""
    crop = cfg.crop["method"]
    if "strength" in cfg.crop:
        crop += f"-l{cfg.crop['strength']:g}"
    parts = [crop, cfg.framework["name"], cfg.backbone["name"]]
    if cfg.head["name"] != "mlp":
        parts.append(cfg.head["name"])
    for loss in LOSS_NAMES:
        weight = getattr(cfg.losses, loss)
        if weight > 0:
            parts.append(loss if weight == 1 else f"{loss}{weight:g}")
    return "-".join([*parts, f"s{cfg.seed}"])


@dataclass
class TrackedTraining:
    """An open MLflow run (``sink``) to train into, in ``run_dir``; ``stop`` takes a signal at a step boundary."""

    sink: MlflowSink
    stop: GracefulStop
    run_dir: Path
    progress: bool = True

    def fit(self, plan: RunPlan, *, resume: bool = False, sink: sinks.MetricsSink | None = None,
            on_eval: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
        """Train ``plan`` into the run (or into ``sink``, a sink that forwards to it), resuming from
        ``run_dir``'s checkpoint with ``resume``; ``on_eval`` as :class:`~paramcrop.train.Trainer` takes it."""
        trainer = Trainer(plan, self.run_dir, sink=self.sink if sink is None else sink, stop=self.stop,
                          on_eval=on_eval, progress=self.progress)
        return trainer.fit(resume=resume)


@contextlib.contextmanager
def tracked_training(client, experiment_id: str, name: str, tags: dict[str, str], *, stop: GracefulStop,
                     run_dir: Path, progress: bool = True, **run) -> Iterator[TrackedTraining]:
    """Open MLflow run ``name`` of ``experiment_id`` with ``tags`` (``run``: :func:`tracked_run`'s
    ``parent_run_id``, ``run_id``, ``benign``, ``spool_dir``) and yield it ready to train into; the run
    ends FINISHED, FAILED or KILLED with the block."""
    with tracked_run(client, experiment_id, name, tags, **run) as sink:
        yield TrackedTraining(sink, stop, Path(run_dir), progress)


def run_training(cfg: TrainConfig, *, tracking_uri: str, experiment: str, run_dir: Path | None = None,
                 resume: bool = False, progress: bool = True) -> int:
    """Train ``cfg`` in an MLflow run of ``experiment``; returns the process exit code
    (0 done, 1 failed, 2 bad input with nothing created or no checkpoint that loads to resume from,
    3 a full disk (:data:`~paramcrop.files.DISK_FULL_EXIT`), 130/143 interrupted).

    SIGINT / SIGTERM stop at the end of the current step with a checkpoint (a second signal stops
    at once); ``resume`` continues from that checkpoint in the same MLflow run, and is refused
    (exit 2, nothing logged) when ``run_dir`` holds none."""
    from rich.console import Console

    console = Console(stderr=True)
    name = run_name(cfg)
    run_dir = Path(run_dir or Path("paramcrop-runs") / experiment / name)
    run_id_path = run_dir / RUN_ID_FILE
    if resume and not run_id_path.exists():
        console.print(f"[red]error:[/] nothing to resume in {run_dir} (no {RUN_ID_FILE}); drop --resume to start anew")
        return 2
    if resume and not (run_dir / CHECKPOINT_NAME).exists() and not (run_dir / PREVIOUS_NAME).exists():
        console.print(f"[red]error:[/] nothing to resume in {run_dir}: the run stopped before writing a checkpoint "
                      f"(no {CHECKPOINT_NAME}); drop --resume to start anew (in a new run)")
        return 2
    if resume and recover(run_dir) is None:  # a newest file that does not load falls back to the one before
        console.print(f"[red]error:[/] cannot resume: {run_dir / CHECKPOINT_NAME} does not load, nor does an earlier "
                      f"checkpoint (moved aside as *.corrupt in {run_dir}); drop --resume to start anew (in a new "
                      f"run), or put a good copy back as {run_dir / CHECKPOINT_NAME}", soft_wrap=True)
        return 2
    try:
        check_tracking_store(tracking_uri)  # creates nothing; before the (possibly long) build
        plan = resolve(cfg)
        if plan.dist.is_main:  # under torchrun only rank 0 talks to MLflow
            client = open_tracking_store(tracking_uri)
            experiment_id = get_or_create_experiment(client, experiment)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except TrackingUnavailable as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    except OSError as exc:  # e.g. the synthetic data cache on a full disk
        if disk_full(exc) is None:
            raise
        return _disk_full(console, disk_full(exc), "the same command", None)
    if not plan.dist.is_main:
        Trainer(plan, run_dir, progress=False).fit(resume=resume)
        return 0
    tags = {sinks.TAG_ROLE: "train", **run_tags(cfg.flatten())}
    previous = run_id_path.read_text().strip() if resume else None
    for spool in sorted(run_dir.glob(f"{SPOOL_PREFIX}*.json")) if previous else []:
        try:  # what the last attempt could not send (the store was down or its disk full)
            replay_spool(client, spool)
        except Exception as exc:  # noqa: BLE001 - the file stays for the next attempt
            console.print(f"[yellow]could not send {spool} yet: {exc}[/]")
    stop = GracefulStop()
    sink = None
    try:
        with stop.installed(), tracked_training(client, experiment_id, name, tags, stop=stop, run_dir=run_dir,
                                                progress=progress, run_id=previous, spool_dir=run_dir) as run:
            sink = run.sink
            run_dir.mkdir(parents=True, exist_ok=True)
            run_id_path.write_text(sink.run_id)
            if previous:
                sink.logged = logged_points(client, previous)
            result = run.fit(plan, resume=resume)
    except KeyboardInterrupt as exc:
        if (run_dir / CHECKPOINT_NAME).exists():
            console.print(f"[yellow]interrupted[/]: run KILLED; its checkpoint stays in {run_dir}. Resume with the "
                          f"same command plus --resume --run-dir {run_dir}")
        else:
            console.print(f"[yellow]interrupted[/]: run KILLED before its first checkpoint; nothing to resume: run "
                          f"the command again")
        return 143 if "SIGTERM" in str(exc) else 130
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            console.print(f"[red]run failed[/]: {type(exc).__name__}: {exc}")
            return 1
        return _disk_full(console, full, f"the same command plus --resume --run-dir {run_dir} (from its last good "
                                         f"checkpoint)", sink)
    out = Console()
    out.print(f"[bold green]done[/] in {result.seconds:.0f} s, {result.steps} steps: "
              + ", ".join(f"{k} {v:.3f}" for k, v in result.eval_metrics.items()))
    out.print(f"MLflow run {sink.run_id} in experiment {experiment!r} at {redact_url(tracking_uri)}; browse: "
              f"paramcrop ui --experiment {experiment}, then {runs_url(experiment_id)}")
    if result.skipped_videos:
        out.print(f"[yellow]{len(result.skipped_videos)} unreadable videos were skipped[/]")
    sys.stdout.flush()
    return 0


def _disk_full(console, full, again: str, sink: MlflowSink | None) -> int:
    """The one line a run stopped by a full disk ends with (what happened to its MLflow run too); the exit code."""
    mlflow = f" MLflow: {sink.unavailable}." if sink is not None and sink.unavailable is not None else ""
    console.print(f"[red]error:[/] {full}. Free space there, then run {again}.{mlflow}", highlight=False,
                  soft_wrap=True)
    return DISK_FULL_EXIT


def logged_points(client, run_id: str) -> set[tuple[str, int]]:
    """``(metric, step)`` of every point run ``run_id`` holds (a resumed run does not log them twice)."""
    metrics = call(client.get_run, run_id).data.metrics
    return {(key, m.step) for key in metrics for m in call(client.get_metric_history, run_id, key)}
