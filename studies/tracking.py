"""MLflow, connected to the trainer's metrics sink (SPEC 4 conventions).

:class:`MlflowSink` buffers metrics and writes them with ``MlflowClient.log_batch`` (a single
``log_metric`` call costs ~6 ms on SQLite; a batch of 1,000 costs ~70 ms in all).
:func:`tracked_run` opens a run and guarantees it ends FINISHED, FAILED (with the reason as a
tag) or KILLED (Ctrl-C / SIGTERM): nothing is left RUNNING after the process ends normally.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Iterator, Mapping

from paramcrop import __version__, sinks

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits per request
MAX_PARAM_LENGTH = 6000


def client_for(tracking_uri: str | None = None):
    """An ``MlflowClient`` on ``tracking_uri`` (default: :func:`paramcrop.sinks.default_tracking_uri`)."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables" chatter
    uri = tracking_uri or sinks.default_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    # Several local workers starting at once would race MLflow's table creation and migrations
    # ("No such constraint", alembic errors): create the store under an inter-process lock.
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


def git_commit() -> str | None:
    """The commit of the working tree's repository, if any (for the ``paramcrop.git_commit`` tag)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(config_flat: Mapping[str, object]) -> dict[str, str]:
    """The component tags of SPEC 4 from a flattened config, plus version and commit."""
    tags = {
        sinks.TAG_CROP: str(config_flat.get("crop.method", "")),
        sinks.TAG_FRAMEWORK: str(config_flat.get("framework.name", "")),
        sinks.TAG_BACKBONE: str(config_flat.get("backbone.name", "")),
        sinks.TAG_VERSION: __version__,
    }
    commit = git_commit()
    if commit:
        tags[sinks.TAG_GIT_COMMIT] = commit
    return tags


def _retry(fn, *args, attempts: int = 5, delay: float = 0.5, **kwargs):
    """Call an MLflow client method, retrying with exponential backoff on transient errors."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)


class MlflowSink:
    """A :class:`~paramcrop.sinks.MetricsSink` writing to one MLflow run, metrics batched."""

    def __init__(self, client, run_id: str, flush_every: int = MAX_METRICS) -> None:
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self._pending: list = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk = self._pending[:MAX_METRICS]
            _retry(self.client.log_batch, self.run_id, metrics=chunk)
            del self._pending[:MAX_METRICS]

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            _retry(self.client.log_batch, self.run_id, params=items[i:i + MAX_PARAMS])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_TAGS):
            _retry(self.client.log_batch, self.run_id, tags=items[i:i + MAX_TAGS])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)


def get_or_create_experiment(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that runs end KILLED and trials FAIL cleanly."""


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`RunInterrupted` (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tracked_run(client, experiment_id: str, run_name: str, tags: Mapping[str, str],
                parent_run_id: str | None = None, run_id: str | None = None,
                benign: tuple[type[BaseException], ...] = ()) -> Iterator[MlflowSink]:
    """Open (or reopen, with ``run_id``) a run; end it FINISHED, FAILED or KILLED whatever happens.

    Exceptions of the ``benign`` types (e.g. a pruned trial) end the run FINISHED and propagate.
    """
    all_tags = dict(tags)
    if parent_run_id:
        all_tags[sinks.PARENT_RUN_TAG] = parent_run_id
    if run_id is None:
        run = _retry(client.create_run, experiment_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
    else:
        _retry(client.update_run, run_id, status="RUNNING")
    sink = MlflowSink(client, run_id)
    try:
        yield sink
    except benign:
        sink.flush()
        _retry(client.set_terminated, run_id, status="FINISHED")
        raise
    except KeyboardInterrupt:
        sink.flush()
        _retry(client.set_tag, run_id, sinks.TAG_FAILURE, "interrupted (Ctrl-C or SIGTERM)")
        _retry(client.set_terminated, run_id, status="KILLED")
        raise
    except BaseException as exc:
        sink.flush()
        _retry(client.set_tag, run_id, sinks.TAG_FAILURE, f"{type(exc).__name__}: {exc}"[:5000])
        _retry(client.set_terminated, run_id, status="FAILED")
        raise
    else:
        sink.flush()
        _retry(client.set_terminated, run_id, status="FINISHED")
