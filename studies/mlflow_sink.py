"""The trainer's metrics sink on one MLflow run, its spool file, and the tracked run around it.

:class:`MlflowSink` buffers metrics and writes them with ``MlflowClient.log_batch`` (a single
``log_metric`` call costs ~6 ms on SQLite; a batch of 1,000 costs ~70 ms in all).
:func:`tracked_run` opens a run and guarantees it ends FINISHED, FAILED (with the reason as a
tag) or KILLED (Ctrl-C / SIGTERM): nothing is left RUNNING after the process ends normally.

A tracking store that goes away loses nothing (calls are retried, :func:`studies.tracking.call`):

- during training a failing write does not stop the run: what could not be sent stays queued in
  the sink and goes out with the next write;
- when the run ends, everything queued is sent, retrying for the whole window; if the store is
  still down, the queue (metrics, params, tags, artifact paths, the final status) is written to a
  *spool file* next to the run's checkpoint and :class:`~studies.tracking.TrackingUnavailable` says so.
  :func:`replay_spool` sends a spool file later (``paramcrop study run`` does it when it resumes).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator, Mapping

from paramcrop import files, sinks
from studies.tracking import (MAX_METRICS, MAX_PARAM_LENGTH, MAX_PARAMS, MAX_TAGS, TrackingUnavailable, call,
                              retry_window, tracking_uri_of)

SPOOL_PREFIX = "mlflow-pending-"


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
        except (TrackingUnavailable, KeyboardInterrupt, files.DiskFull) as exc:
            self._store_failed(exc, status, end_time)
            if isinstance(exc, KeyboardInterrupt):
                raise
        except Exception as exc:  # noqa: BLE001 - a store on a full disk raises whatever its driver does
            full = files.disk_full(exc, _local_store(self.client))
            if full is None:
                raise
            self._store_failed(full, status, end_time)

    def _store_failed(self, exc: BaseException, status: str, end_time: int) -> None:
        """What the store did not take goes to the spool file; :attr:`unavailable` says where (or that
        it is lost, and from which step, when the spool cannot be written either)."""
        try:
            self.spool_path = self._spool(status, end_time)
        except files.DiskFull as full:
            first = min((m.step for m in self._pending), default=None)
            kept = (f"the spool cannot be written either ({full}): the run's metrics from step {first} on are lost"
                    if first is not None else f"the spool cannot be written either ({full})")
        else:
            kept = (f"everything the run logged is kept in {self.spool_path} and is sent by the next "
                    f"`paramcrop study run` of the same study (or studies.tracking.replay_spool)"
                    if self.spool_path else "what was not sent is lost (no spool folder)")
        what = "interrupted while waiting for the tracking store" if isinstance(exc, KeyboardInterrupt) else \
            f"the MLflow store cannot be written ({exc})" if isinstance(exc, files.DiskFull) else str(exc)
        self.unavailable = TrackingUnavailable(f"{what}; {kept}")

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
        with files.atomic(path, "w") as handle:
            handle.write(json.dumps(data))
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


def _local_store(client) -> Path | None:
    """The file of a ``sqlite:///`` tracking store (what a full disk names), else None."""
    uri = str(getattr(client, "tracking_uri", ""))
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


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
