"""MLflow, connected to the trainer's metrics sink (SPEC 4 conventions).

:class:`MlflowSink` buffers metrics and writes them with ``MlflowClient.log_batch`` (a single
``log_metric`` call costs ~6 ms on SQLite; a batch of 1,000 costs ~70 ms in all).
:func:`tracked_run` opens a run and guarantees it ends FINISHED, FAILED (with the reason as a
tag) or KILLED (Ctrl-C / SIGTERM): nothing is left RUNNING after the process ends normally.

A tracking store that goes away (a server restarting, a network cut, SQLite "database is
locked") loses nothing:

- every call is retried with exponential backoff (0.5 s doubling to 15 s) for up to
  ``$PARAMCROP_TRACKING_RETRY_S`` seconds (default 120); errors that a retry cannot fix (a bad
  parameter value, an unknown run) are raised at once;
- during training a failing write does not stop the run: what could not be sent stays queued in
  the sink and goes out with the next write;
- when the run ends, everything queued is sent, retrying for the whole window; if the store is
  still down, the queue (metrics, params, tags, artifact paths, the final status) is written to a
  *spool file* next to the run's checkpoint and :class:`TrackingUnavailable` says so.
  :func:`replay_spool` sends a spool file later (``paramcrop study run`` does it when it resumes).

For HTTP tracking servers MLflow's own request retries are turned down
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=30`` unless set), so the
window above is the one that counts (MLflow's default would retry each call for ~4 minutes).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping

from paramcrop import __version__, sinks
from paramcrop.crops.dof import parameterisation_tag
from paramcrop.sinks import redact_url as redact

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits per request
MAX_PARAM_LENGTH = 6000
RETRY_ENV = "PARAMCROP_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 120.0
SPOOL_PREFIX = "mlflow-pending-"
# MLflow error codes that no retry can fix; everything else (connection errors, timeouts, 5xx,
# 429, "database is locked") is transient
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED",
                    "NOT_IMPLEMENTED", "CUSTOMER_UNAUTHORIZED", "MALFORMED_REQUEST", "INVALID_REQUEST"}


class TrackingUnavailable(RuntimeError):
    """The tracking store could not be reached for the whole retry window."""


def retry_window() -> float:
    """Seconds a tracking call keeps retrying: ``$PARAMCROP_TRACKING_RETRY_S``, default 120."""
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


def tracking_uri_of(client) -> str:
    return redact(str(getattr(client, "tracking_uri", None) or sinks.default_tracking_uri()))


def client_for(tracking_uri: str | None = None):
    """An ``MlflowClient`` on ``tracking_uri`` (default: :func:`paramcrop.sinks.default_tracking_uri`)."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables" chatter
    uri = tracking_uri or sinks.default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        # our retry loop (with its window) replaces MLflow's ~4 minutes of retries per call
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    # Several local workers starting at once would race MLflow's table creation and migrations
    # ("No such constraint", alembic errors): create the store under an inter-process lock.
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    if not db.parent.is_dir():
        raise ValueError(f"cannot create the MLflow store {uri}: folder {str(db.parent)!r} does not exist")
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


LOCAL_TRACKING = ("sqlite:", "file:")
"""Tracking URI prefixes of stores that live in local files (created on first use)."""


def check_tracking_store(uri: str) -> None:
    """Raise ``ValueError`` naming the (redacted) URI, creating nothing, when the tracking store
    cannot work: a local SQLite file whose folder does not exist, a server or database that does
    not answer. Checked before a study or a training run builds anything."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).parent.is_dir():
        raise ValueError(f"cannot create the MLflow store {redact(uri)}: its folder does not exist")
    if not uri.startswith(LOCAL_TRACKING):
        check_reachable(open_tracking_store(uri))


def open_tracking_store(uri: str):
    """:func:`client_for` ``uri``; any failure to open it (e.g. a database URI that cannot be
    reached) as a ``ValueError`` naming the redacted URI."""
    try:
        return client_for(uri)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the store's driver raises
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot open the MLflow tracking store {redact(uri)}: {redact(first)[:300]}") from None


def check_reachable(client, window: float = 10.0) -> None:
    """Raise ``ValueError`` naming the (redacted) URI when the tracking store does not answer
    within ``window`` seconds: checked before a study creates anything."""
    try:
        call(client.search_experiments, max_results=1, window=min(window, retry_window()), quiet=True)
    except Exception as exc:  # TrackingUnavailable, or a permanent error (e.g. 404: not an MLflow server)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot reach the MLflow tracking store {tracking_uri_of(client)}: {redact(first)[:300]}"
                         ) from None


def git_commit() -> str | None:
    """The commit of the working tree's repository, if any (for the ``paramcrop.git_commit`` tag)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


CLI_COMMANDS = ("study run", "train", "eval")
"""``paramcrop`` commands that create runs (their words name the run's source)."""


def source_name(argv: list[str] | None = None) -> str:
    """``mlflow.source.name``: the command that made the run, ``paramcrop study run`` /
    ``paramcrop train``, when the process is the ``paramcrop`` CLI; else the script's file name
    (``pytest``, ``my_script.py``): what MLflow's UI shows in its Source column."""
    argv = list(sys.argv if argv is None else argv)
    words = " ".join(a for a in argv[1:3] if not a.startswith("-"))
    command = next((c for c in CLI_COMMANDS if words == c or words.startswith(c + " ")), None)
    if Path(argv[0] if argv else "").name in ("paramcrop", "cli.py") and command:
        return f"paramcrop {command}"
    return Path(argv[0]).name if argv and argv[0] else "python"


def source_tags() -> dict[str, str]:
    """Tags every run gets (trial, parent, train): version, commit (``paramcrop.git_commit`` and
    MLflow's own ``mlflow.source.git.commit``), ``mlflow.source.name`` and ``.type`` (LOCAL)."""
    tags = {sinks.TAG_VERSION: __version__, sinks.SOURCE_NAME_TAG: source_name(), sinks.SOURCE_TYPE_TAG: "LOCAL"}
    commit = git_commit()
    if commit:
        tags[sinks.TAG_GIT_COMMIT] = tags[sinks.SOURCE_COMMIT_TAG] = commit
    return tags


def run_tags(config_flat: Mapping[str, object]) -> dict[str, str]:
    """The component tags of SPEC 4 from a flattened config, plus :func:`source_tags`."""
    return {
        sinks.TAG_CROP: str(config_flat.get("crop.method", "")),
        sinks.TAG_CROP_PARAMETERISATION: parameterisation_tag(config_flat),
        sinks.TAG_FRAMEWORK: str(config_flat.get("framework.name", "")),
        sinks.TAG_BACKBONE: str(config_flat.get("backbone.name", "")),
        **source_tags(),
    }


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may help: connection errors, timeouts, 5xx / 429, a locked SQLite database."""
    code = getattr(exc, "error_code", None)
    if code is not None:
        return code not in PERMANENT_ERRORS
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("sqlalchemy", "requests", "urllib3", "sqlite3", "psycopg", "pymysql"))


_warned_down: set[str] = set()


def call(fn, *args, window: float | None = None, quiet: bool = False, **kwargs):
    """``fn(*args, **kwargs)`` (an MLflow client method), retried with exponential backoff (0.5 s
    doubling to 15 s) on transient errors for up to ``window`` seconds (default
    :func:`retry_window`; 0 = one attempt). Permanent errors propagate at once; a store that stays
    down raises :class:`TrackingUnavailable` naming the URI, the attempts and the last error."""
    window = retry_window() if window is None else window
    client = getattr(fn, "__self__", None)
    start, delay, attempt = time.monotonic(), 0.5, 0
    while True:
        attempt += 1
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = time.monotonic() - start
            uri = tracking_uri_of(client) if client is not None else "(unknown)"
            first = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
            if elapsed + delay > window:
                raise TrackingUnavailable(
                    f"the MLflow tracking store {uri} did not answer for {elapsed:.0f} s ({attempt} attempt"
                    f"{'s' if attempt > 1 else ''}; last error: {redact(first)})") from None
            if not quiet and uri not in _warned_down:
                _warned_down.add(uri)
                print(f"warning: the MLflow tracking store {uri} is not answering ({redact(first)[:160]}); "
                      f"retrying for up to {window:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
        else:
            if attempt > 1 and not quiet and client is not None and tracking_uri_of(client) in _warned_down:
                _warned_down.discard(tracking_uri_of(client))
                print(f"the MLflow tracking store {tracking_uri_of(client)} answers again (after "
                      f"{time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
            return result


class MlflowSink:
    """A :class:`~paramcrop.sinks.MetricsSink` writing to one MLflow run, metrics batched.

    Nothing is dropped when the store is down: during training (``block=False`` writes) what
    fails stays queued and the next write tries again (at most every 10 s while the store is
    down); :meth:`finish` sends the queue retrying for the whole window, then writes a spool file
    (``spool_dir/mlflow-pending-<run id>.json``) if the store is still down.
    """

    def __init__(self, client, run_id: str, flush_every: int = MAX_METRICS, spool_dir: Path | None = None) -> None:
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._pending: list = []
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._artifacts: list[tuple[str, str | None]] = []
        self._datasets: list[list] = []  # [name, source, digest, context, n_videos]
        self._models: list[tuple[str, object, object]] = []  # (name, nn.Module, input example), sent last
        self._down_until = 0.0  # monotonic time before which non-blocking writes do not try
        self.unavailable: TrackingUnavailable | None = None  # set when finish() had to spool
        self.spool_path: Path | None = None
        # (key, step) points the run already holds (a resumed run: what the killed attempt sent after
        # its last checkpoint); they are not logged again, so each step appears once
        self.logged: set[tuple[str, int]] = set()

    # --- the MetricsSink interface: queue, then try to send -------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                             if (k, int(step)) not in self.logged)
        if len(self._pending) >= self.flush_every:
            self.flush(block=False)

    def log_params(self, params: Mapping[str, object]) -> None:
        self._params.update({k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()})
        self.flush(block=False)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._tags.update({k: str(v) for k, v in tags.items()})
        self.flush(block=False)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._artifacts.append((str(path), artifact_path))
        self.flush(block=False)

    def log_dataset(self, name: str, source: str, digest: str, context: str, n_videos: int) -> None:
        """Queue a dataset input (sent with ``log_inputs``; see :func:`dataset_input`)."""
        self._datasets.append([name, source, digest, context, int(n_videos)])

    def log_model(self, name: str, module, input_example) -> None:
        """Queue ``module`` as the run's MLflow model ``name`` (sent after everything else, see
        :func:`log_torch_model`)."""
        self._models.append((name, module, input_example))
        self.flush(block=False)

    def queue_metrics(self, metrics) -> None:
        """Queue ``mlflow.entities.Metric`` objects as they are (timestamps and steps kept)."""
        self._pending.extend(metrics)

    @property
    def queued(self) -> int:
        return (len(self._pending) + len(self._params) + len(self._tags) + len(self._artifacts)
                + len(self._datasets) + len(self._models))

    def flush(self, block: bool = True) -> None:
        """Send everything queued. ``block``: retry for the whole window (raise
        :class:`TrackingUnavailable` after it); else one attempt, keeping what fails queued."""
        if not block and time.monotonic() < self._down_until:
            return
        try:
            self._drain(None if block else 0.0)
        except TrackingUnavailable:
            if block:
                raise
            self._down_until = time.monotonic() + 10.0

    def _drain_mapping(self, queued: dict, limit: int, field: str, entity, window: float | None) -> None:
        """Send queued params or tags (``key -> value``) in batches of ``limit``; each is removed once sent."""
        while queued:
            chunk = dict(list(queued.items())[:limit])
            call(self.client.log_batch, self.run_id, window=window, **{field: [entity(k, v) for k, v in chunk.items()]})
            for k in chunk:
                del queued[k]

    def _drain(self, window: float | None) -> None:
        from mlflow.entities import Param, RunTag

        self._drain_mapping(self._params, MAX_PARAMS, "params", Param, window)
        while self._pending:
            call(self.client.log_batch, self.run_id, metrics=self._pending[:MAX_METRICS], window=window)
            del self._pending[:MAX_METRICS]
        self._drain_mapping(self._tags, MAX_TAGS, "tags", RunTag, window)
        while self._artifacts:
            path, artifact_path = self._artifacts[0]
            if Path(path).exists():
                call(self.client.log_artifact, self.run_id, path, artifact_path, window=window)
            self._artifacts.pop(0)
        while self._datasets:
            call(self.client.log_inputs, self.run_id, datasets=[dataset_input(*self._datasets[0])], window=window)
            self._datasets.pop(0)
        while self._models:
            name, module, example = self._models[0]
            call(log_torch_model, self.client, self.run_id, name, module, example, window=window)
            self._models.pop(0)

    # --- the end of the run ---------------------------------------------------------------
    def finish(self, status: str, reason: str | None = None, window: float | None = None) -> None:
        """Send the queue and end the run with ``status``; if the store stays down for ``window``
        seconds (or the wait is interrupted), spool everything to disk (see :func:`replay_spool`)
        and set :attr:`unavailable` (the caller decides whether to raise it, see :func:`tracked_run`).
        A ``KeyboardInterrupt`` while waiting spools too, then propagates."""
        if reason:
            self._tags[sinks.TAG_FAILURE] = reason[:5000]
        end_time = int(time.time() * 1000)
        try:
            self._drain(window)
            call(self.client.set_terminated, self.run_id, status=status, end_time=end_time, window=window)
        except (TrackingUnavailable, KeyboardInterrupt) as exc:
            self.spool_path = self._spool(status, end_time)
            kept = (f"everything the run logged is kept in {self.spool_path} and is sent by the next "
                    f"`paramcrop study run` of the same study (or studies.tracking.replay_spool)"
                    if self.spool_path else "what was not sent is lost (no spool folder)")
            self.unavailable = TrackingUnavailable(f"{exc}; {kept}" if isinstance(exc, TrackingUnavailable)
                                                   else f"interrupted while waiting for the tracking store; {kept}")
            if isinstance(exc, KeyboardInterrupt):
                raise

    def _spool(self, status: str, end_time: int) -> Path | None:
        if self.spool_dir is None:
            return None
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / f"{SPOOL_PREFIX}{self.run_id}.json"
        data = {"run_id": self.run_id, "tracking_uri": tracking_uri_of(self.client), "status": status,
                "end_time": end_time, "params": self._params, "tags": self._tags, "artifacts": self._artifacts,
                "datasets": self._datasets,
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self._pending],
                "models": self._spool_models()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
        return path

    def _spool_models(self) -> list[list[str]]:
        """The queued models as ``[name, folder]``: each saved with ``mlflow.pytorch.save_model``
        (its input example included) beside the spool file, read back by :func:`replay_spool`."""
        import mlflow.pytorch

        out = []
        for name, module, example in self._models:
            folder = self.spool_dir / f"{SPOOL_PREFIX}{self.run_id}-{name}"
            if not folder.exists():
                mlflow.pytorch.save_model(module, str(folder), input_example=example.numpy(),
                                          serialization_format="pickle")
            out.append([name, str(folder)])
        return out


def dataset_input(name: str, source: str, digest: str, context: str, n_videos: int):
    """An ``mlflow.entities.DatasetInput`` of a video dataset: named by its data source string, its
    folder as a local source (``{"uri": ...}``, as ``mlflow.data`` writes one), the video count as
    its profile, ``context`` (training / evaluation) as the ``mlflow.data.context`` input tag."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                      profile=json.dumps({"num_videos": n_videos}))
    return DatasetInput(dataset, tags=[InputTag(sinks.DATASET_CONTEXT_TAG, context)])


def replay_spool(client, path: Path, window: float | None = None) -> str:
    """Send a spool file written by :meth:`MlflowSink.finish` and end its run with the recorded
    status; the file is deleted once everything is in. Returns the run id."""
    from mlflow.entities import Metric

    data = json.loads(Path(path).read_text())
    sink = MlflowSink(client, data["run_id"])
    sink._params, sink._tags = dict(data["params"]), dict(data["tags"])
    sink._artifacts = [tuple(a) for a in data["artifacts"]]
    sink._datasets = [list(d) for d in data.get("datasets", [])]
    sink._pending = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in data["metrics"]]
    if data.get("models"):
        import shutil

        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import Model

        for name, folder in data["models"]:  # saved by MlflowSink._spool_models
            example = Model.load(folder).load_input_example(folder)
            sink._models.append((name, mlflow.pytorch.load_model(folder), torch.from_numpy(np.asarray(example))))
    sink._drain(window)
    call(client.set_terminated, data["run_id"], status=data["status"], end_time=data["end_time"], window=window)
    for _, folder in data.get("models", []):
        shutil.rmtree(folder, ignore_errors=True)
    Path(path).unlink()
    return data["run_id"]


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Within the block, MLflow's fluent API uses ``uri``; afterwards its global URI and
    ``$MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri`` also sets or unsets) are as before."""
    from mlflow.tracking._tracking_service import utils

    previous, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    utils.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


# what unpickling a logged backbone imports (MLflow's inference found the same, plus pandas for pyfunc)
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "torch", "torchvision", "paramcrop")


def log_torch_model(client, run_id: str, name: str, module, input_example) -> None:
    """Log ``module`` into run ``run_id`` of ``client``'s store with ``mlflow.pytorch.log_model``
    (an MLflow 3 logged model named ``name``, loadable as ``runs:/<run_id>/<name>``), with the
    signature inferred from ``input_example`` (a CPU tensor) and the module's output on it, and
    the example itself as the model's input example. Pickled (not MLflow's default ``pt2``
    export, which fixes the batch size and drops ``feature_dim`` / ``forward_features``): loading
    gives back the module itself and needs ``paramcrop`` importable. The pip requirements are
    the installed versions of what loading it imports (:data:`MODEL_REQUIREMENTS`): MLflow's own
    inference runs the model in a subprocess, ~8 s a run."""
    import logging
    from importlib.metadata import PackageNotFoundError, version

    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    requirements = []
    for package in MODEL_REQUIREMENTS:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pass
    with torch.no_grad():
        output = module(input_example)
    example = input_example.numpy()
    signature = infer_signature(example, output.numpy())
    # the logged model belongs to the run's experiment (fluent log_model alone would use the default one)
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    pytorch_log = logging.getLogger("mlflow.pytorch")
    level = pytorch_log.level
    pytorch_log.setLevel(logging.ERROR)  # its warning on pickling: the decision is made and documented above
    try:
        with _fluent_tracking_uri(client.tracking_uri):
            mlflow.pytorch.log_model(module, name=name, signature=signature, input_example=example, run_id=run_id,
                                     model_id=model.model_id, serialization_format="pickle",
                                     pip_requirements=requirements)
    finally:
        pytorch_log.setLevel(level)


def get_or_create_experiment(client, name: str) -> str:
    experiment = call(client.get_experiment_by_name, name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            call(client.restore_experiment, experiment.experiment_id)
        return experiment.experiment_id
    try:
        return call(client.create_experiment, name)
    except TrackingUnavailable:
        raise
    except Exception:  # another worker created it first
        experiment = call(client.get_experiment_by_name, name)
        if experiment is None:
            raise
        return experiment.experiment_id


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that runs end KILLED and trials FAIL cleanly."""


class GracefulStop:
    """SIGINT / SIGTERM handling for a training loop that can stop at a step boundary.

    Within :meth:`installed`, the first signal only sets :attr:`requested` while :attr:`deferring`
    is true (the trainer checks it between steps and stops there, with a checkpoint); outside
    training, or on a second signal, it raises ``KeyboardInterrupt`` (SIGINT) or
    :class:`RunInterrupted` (SIGTERM) at once. Main thread only; elsewhere it does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None  # "SIGINT" or "SIGTERM"
        self.deferring = False

    def _raise(self, name: str):
        if name == "SIGTERM":
            raise RunInterrupted("terminated (SIGTERM)")
        raise KeyboardInterrupt("interrupted (SIGINT)")

    def check(self) -> None:
        """Raise the requested interrupt, if any (called by the trainer at a step boundary)."""
        if self.requested:
            self._raise(self.requested)

    @contextlib.contextmanager
    def installed(self) -> Iterator["GracefulStop"]:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        main_pid = os.getpid()

        def handler(signum, frame):
            if os.getpid() != main_pid:  # a forked DataLoader worker (the terminal signals them all)
                return  # the main process stops them
            name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
            if self.deferring and not self.requested:
                self.requested = name
                print(f"\n{name}: stopping at the end of this training step, with a checkpoint "
                      f"({'send it again' if name == 'SIGTERM' else 'Ctrl-C again'} to stop now)",
                      file=sys.stderr, flush=True)
                return
            self.requested = self.requested or name
            self._raise(name)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


@contextlib.contextmanager
def tracked_run(client, experiment_id: str, run_name: str, tags: Mapping[str, str],
                parent_run_id: str | None = None, run_id: str | None = None,
                benign: tuple[type[BaseException], ...] = (), spool_dir: Path | None = None) -> Iterator[MlflowSink]:
    """Open (or reopen, with ``run_id``) a run; end it FINISHED, FAILED or KILLED whatever happens.

    Exceptions of the ``benign`` types (e.g. a pruned trial) end the run FINISHED and propagate.
    If the store is down when the run ends (see :meth:`MlflowSink.finish`), a run that succeeded
    raises :class:`TrackingUnavailable` after the spool is written; a run that failed re-raises
    its own error, with ``sink.unavailable`` set.
    """
    all_tags = dict(tags)
    if parent_run_id:
        all_tags[sinks.PARENT_RUN_TAG] = parent_run_id
    if run_id is None:
        run = call(client.create_run, experiment_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
    else:
        call(client.update_run, run_id, status="RUNNING")
    sink = MlflowSink(client, run_id, spool_dir=spool_dir)
    try:
        yield sink
    except benign:
        sink.finish("FINISHED")
        raise
    except KeyboardInterrupt as exc:
        sink.finish("KILLED", str(exc) or "interrupted (Ctrl-C)", window=min(10.0, retry_window()))
        raise
    except BaseException as exc:
        sink.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    else:
        sink.finish("FINISHED")
        if sink.unavailable is not None:
            raise sink.unavailable
