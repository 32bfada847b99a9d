"""The MLflow tracking store: opening and checking it, retried calls, experiments, run tags.

A tracking store that goes away (a server restarting, a network cut, SQLite "database is
locked") loses nothing: every call is retried with exponential backoff (0.5 s doubling to 15 s) for
up to ``$PARAMCROP_TRACKING_RETRY_S`` seconds (default 120); errors that a retry cannot fix (a bad
parameter value, an unknown run) are raised at once. What a run logs while the store is down is
queued and, at its end, spooled to disk (:mod:`studies.mlflow_sink`).

For HTTP tracking servers MLflow's own request retries are turned down
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=30`` unless set), so the
window above is the one that counts (MLflow's default would retry each call for ~4 minutes).

Every experiment the suite creates carries the tag ``mlflow.experimentKind =
custom_model_development`` (:data:`EXPERIMENT_KIND_TAG`), which tells MLflow's UI how to present it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from paramcrop import __version__, files, sinks
from paramcrop.crops.dof import parameterisation_tag
from paramcrop.sinks import redact_url as redact
from studies.retry import Outage, window_from_env

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits per request
MAX_PARAM_LENGTH = 6000
RETRY_ENV = "PARAMCROP_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 120.0
# MLflow error codes that no retry can fix; everything else (connection errors, timeouts, 5xx,
# 429, "database is locked") is transient
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED",
                    "NOT_IMPLEMENTED", "CUSTOMER_UNAUTHORIZED", "MALFORMED_REQUEST", "INVALID_REQUEST"}


class TrackingUnavailable(RuntimeError):
    """The tracking store could not be reached for the whole retry window."""


def retry_window() -> float:
    """Seconds a tracking call keeps retrying: ``$PARAMCROP_TRACKING_RETRY_S``, default 120."""
    return window_from_env(RETRY_ENV, DEFAULT_RETRY_S)


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
    """A run's component tags (crop, its parameterisation, framework, backbone) from a flattened
    config, plus :func:`source_tags`."""
    return {
        sinks.TAG_CROP: str(config_flat.get("crop.method", "")),
        sinks.TAG_CROP_PARAMETERISATION: parameterisation_tag(config_flat),
        sinks.TAG_FRAMEWORK: str(config_flat.get("framework.name", "")),
        sinks.TAG_BACKBONE: str(config_flat.get("backbone.name", "")),
        **source_tags(),
    }


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may help: connection errors, timeouts, 5xx / 429, a locked SQLite database; not
    a full disk (:func:`paramcrop.files.disk_full`: the run stops and says so)."""
    if files.disk_full(exc) is not None:
        return False
    code = getattr(exc, "error_code", None)
    if code is not None:
        return code not in PERMANENT_ERRORS
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("sqlalchemy", "requests", "urllib3", "sqlite3", "psycopg", "pymysql"))


_outages: dict[str, Outage] = {}  # one per tracking URI


def call(fn, *args, window: float | None = None, quiet: bool = False, **kwargs):
    """``fn(*args, **kwargs)`` (an MLflow client method), retried with exponential backoff (0.5 s
    doubling to 15 s) on transient errors for up to ``window`` seconds (default
    :func:`retry_window`; 0 = one attempt); :class:`studies.retry.Outage` says when the store stops
    answering and when it is back. Permanent errors propagate at once; a store that stays down
    raises :class:`TrackingUnavailable` naming the URI, the attempts and the last error."""
    client = getattr(fn, "__self__", None)
    uri = tracking_uri_of(client) if client is not None else "(unknown)"
    outage = _outages.setdefault(uri, Outage(f"the MLflow tracking store {uri}", is_transient, TrackingUnavailable))
    return outage.call(fn, *args, window=retry_window() if window is None else window, quiet=quiet, **kwargs)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def get_or_create_experiment(client, name: str) -> str:
    """The id of experiment ``name`` (restored if deleted, created if missing), tagged
    ``mlflow.experimentKind = custom_model_development`` (also when it existed without the tag)."""
    experiment = call(client.get_experiment_by_name, name)
    if experiment is None:
        try:
            return call(client.create_experiment, name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except TrackingUnavailable:
            raise
        except Exception:  # another worker created it first
            experiment = call(client.get_experiment_by_name, name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        call(client.restore_experiment, experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        call(client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


UI_VIEW = "?workflowType=machine_learning"
"""MLflow 3.17's UI picks GenAI or model-training pages from a per-browser switch (the sidebar's
"GenAI | Model training", kept in localStorage ``mlflow.workflowType``, default GenAI), not from the
experiment's ``mlflow.experimentKind``: an experiment clicked in the list opens on the GenAI
"Overview". A URL's ``workflowType`` overrides the switch for that page, so the links we print carry it."""


def runs_url(experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs page of experiment ``experiment_id`` in an MLflow UI served at ``host:port``."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs{UI_VIEW}"


def run_url(experiment_id: str, run_id: str, artifact: str | None = None, host: str = "127.0.0.1",
            port: int = 5000) -> str:
    """A run's page in the MLflow UI at ``host:port``; with ``artifact``, that artifact opened in its
    viewer (``report.html`` renders inline). Like :func:`runs_url`, in the model-training view."""
    url = f"http://{host}:{port}/#/experiments/{experiment_id}/runs/{run_id}"
    return (f"{url}/artifacts/{artifact}" if artifact else url) + UI_VIEW


