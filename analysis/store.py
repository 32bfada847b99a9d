"""Where the tracked runs live: the tracking-URI rule and opening a client on it.

The rule (shared with the study runner): ``--tracking-uri`` when given, else the environment
variable ``MLFLOW_TRACKING_URI``, else MLflow's own default for the working directory,
``sqlite:///mlflow.db`` (artifacts in ``./mlruns``), so that a bare ``mlflow ui`` in the same
folder shows the same runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AnalysisError, NotFoundError
from paramcrop.sinks import redact_url

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set (and not empty), else ``sqlite:///mlflow.db``.

    One rule for the whole project: this delegates to :func:`paramcrop.sinks.default_tracking_uri`,
    which the trainer and the study runner use too."""
    from paramcrop.sinks import default_tracking_uri as rule

    return rule()


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri`` when given, else :func:`default_tracking_uri`."""
    return uri or default_tracking_uri()


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI points to (``sqlite:///x.db``, ``file:...``,
    a plain path); ``None`` for remote stores (``http(s)://``, ``databricks``, databases)."""
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        return Path(database) if database and database != ":memory:" else None
    if uri.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return Path(url2pathname(urlparse(uri).path))
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return Path(uri)
    return None


def open_client(uri: str | None = None) -> "MlflowClient":
    """An :class:`mlflow.MlflowClient` on ``uri`` (default: :func:`default_tracking_uri`).

    A local store that does not exist raises :class:`NotFoundError` instead of being created
    empty as a side effect of looking at it.
    """
    uri = resolve_tracking_uri(uri)
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise NotFoundError(
            f"no MLflow tracking store at {uri} ({path.resolve()} does not exist). Run a study "
            f"here first (`paramcrop study run`), or point --tracking-uri / ${TRACKING_URI_ENV} "
            "at the store that holds your runs."
        )
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # fail here, with the URI in the message
    except MlflowException as exc:
        raise AnalysisError(f"cannot read the MLflow tracking store {uri}: {exc.message}") from exc
    return client


def open_optuna_storage(storage: str | None = None):
    """An Optuna storage for ``storage``: an RDB URL (``sqlite:///...``, ``postgresql://...``)
    or else the path of a journal file (optionally prefixed ``journal:``; default the study runner's
    :data:`studies.storage.DEFAULT_STORAGE`), opened with ``JournalStorage(JournalFileBackend(path))``.
    Nothing is created where nothing exists."""
    import optuna

    from studies.storage import DEFAULT_STORAGE

    storage = storage or DEFAULT_STORAGE

    if storage.startswith("journal:"):  # the study runner's spelling of a journal file
        storage = storage[len("journal:"):]

    if "://" in storage:
        path = local_store_path(storage) if storage.startswith("sqlite:") else None
        if path is not None and not path.exists():
            raise NotFoundError(f"no Optuna storage at {storage} ({path.resolve()} does not exist)")
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as exc:  # noqa: BLE001 - Optuna/SQLAlchemy raise many kinds
            raise AnalysisError(f"cannot open the Optuna storage {redact_url(storage)}: "
                                f"{redact_url(str(exc))}") from None
    path = Path(storage)
    if not path.is_file():
        raise NotFoundError(
            f"no Optuna journal file at {path} (resolved: {path.resolve()}). Pass --storage with "
            "the storage the study ran on (a journal file path or an RDB URL such as sqlite:///optuna.db)."
        )
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))
