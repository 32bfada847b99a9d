"""Optuna storages: the default journal file, or any RDB URL, both with trial heartbeats.

The default is a journal file in the working directory (``paramcrop-studies.journal``), which
several local workers share safely (SQLite with several writers fails with "database is
locked"). ``--storage`` takes an RDB URL (``postgresql://``, ``mysql+pymysql://``,
``sqlite:///``) for workers on several hosts, or ``journal:PATH`` / a ``*.journal`` path.

Optuna 5 implements heartbeats (detecting trials left RUNNING by a dead worker) for RDB storage
only; :class:`HeartbeatJournalStorage` gives the journal storage the same ``BaseHeartbeat``
interface, so Optuna's own heartbeat thread, ``fail_stale_trials`` and the failed-trial
callback (retry) work for both.

An RDB server that restarts or fails over (Optuna 5 does not retry a dropped connection):
:class:`ResilientRDBStorage` retries every database call on connection errors for up to
``$PARAMCROP_STORAGE_RETRY_S`` seconds (default 300) of outage, with backoff, saying once that the
storage is unreachable and once that it is back (:class:`studies.retry.Outage`). A heartbeat is
one attempt (training goes on meanwhile; a missed beat is no error), and no trial is taken for
stale until the storage has answered for a whole grace period (3 heartbeats): a worker alive
through the outage beats again within one interval. Past the window every call raises
:class:`StorageUnavailable` and ``on_lost`` is called once (the runner stops the trial as on SIGTERM).
"""
from __future__ import annotations

import functools
import logging
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from paramcrop.sinks import redact_url as redact
from studies.retry import Outage, first_line, window_from_env

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"

from studies import DEFAULT_STORAGE  # noqa: F401  (re-exported: the storage module's default)
"""The default Optuna storage of studies and analyses: this journal file in the working directory."""
HEARTBEAT_ATTR = "paramcrop:heartbeat"
CONNECT_TIMEOUT_S = 10
RETRY_ENV = "PARAMCROP_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 300.0
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]
# connection errors whose cause no retry fixes: wrong credentials, a database that does not exist, a full disk
PERMANENT_CONNECT_ERRORS = ("authentication failed", "access denied", "does not exist", "unknown database",
                            "no password supplied", "database or disk is full")


class StorageUnavailable(RuntimeError):
    """The study storage did not answer for the whole retry window."""


def retry_window() -> float:
    """Seconds of outage the study storage is waited for: ``$PARAMCROP_STORAGE_RETRY_S``, default 300."""
    return window_from_env(RETRY_ENV, DEFAULT_RETRY_S)


def driver_error(exc: BaseException) -> BaseException:
    """The SQLAlchemy error under Optuna's ``StorageInternalError`` (whose own message says nothing)."""
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def is_connection_error(exc: BaseException) -> bool:
    """A lost or refused database connection: SQLAlchemy's ``OperationalError`` / ``InterfaceError`` /
    ``DisconnectionError``, also as the cause of Optuna's ``StorageInternalError`` or of what a
    session raises after it (``PendingRollbackError``); not integrity or programming errors, wrong
    credentials or a missing database."""
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 5:  # the exception, then what it was raised from or during
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)):
            return not any(marker in str(exc).lower() for marker in PERMANENT_CONNECT_ERRORS)
        if not isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.PendingRollbackError)):
            return False
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage whose running trials record heartbeats as a system attribute."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int,
                 failed_trial_callback: StaleCallback | None) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.failed_trial_callback = failed_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile: the runner says so
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is not None and now - beat > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_failed_trial_callback(self) -> StaleCallback | None:
        return self.failed_trial_callback

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self.failed_trial_callback


def _quiet_fallback(record: logging.LogRecord) -> bool:
    """Optuna's RDB storage logs a connection lost in ``_get_trials`` as "Falling back to a slower
    alternative" with the SQL; the outage line says it instead."""
    text = record.getMessage()
    return not ("Falling back to a slower alternative" in text and "connection" in text.lower())


logging.getLogger("optuna.storages._rdb.storage").addFilter(_quiet_fallback)


def _outage(url: str) -> Outage:
    return Outage(f"the study storage {redact(url)}", is_connection_error, StorageUnavailable, driver_error)


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDB storage whose database calls ride out an outage (see the module's docstring).

    ``on_lost(error)`` is called once (from the heartbeat thread or the caller's) when the outage
    outlasts the window; :attr:`lost` holds that error until the storage answers again."""

    def __init__(self, url: str, *, on_lost: Callable[[StorageUnavailable], None] | None = None, **kwargs) -> None:
        self.outage = _outage(url)
        self.on_lost, self.lost = on_lost, None
        self._depth = threading.local()  # an outer call retries the whole operation, inner ones do not
        super().__init__(url, **kwargs)

    def _window(self) -> float:
        """What is left of the window in this outage (0 once it is over: one attempt per call)."""
        since = self.outage.down_since
        return retry_window() - (time.monotonic() - since if since is not None else 0.0)

    def _retried(self, method, *args, **kwargs):
        depth = getattr(self._depth, "n", 0)
        if depth:
            return method(self, *args, **kwargs)
        self._depth.n = 1
        try:
            result = self.outage.call(method, self, *args, window=max(0.0, self._window()), **kwargs)
        except StorageUnavailable as exc:
            self._give_up(exc)
            raise
        finally:
            self._depth.n = 0
        self.lost = None
        return result

    def _give_up(self, exc: StorageUnavailable) -> None:
        first = self.lost is None
        self.lost = exc
        if first and self.on_lost is not None:
            self.on_lost(exc)

    def record_heartbeat(self, trial_id: int) -> None:
        """One attempt: a beat missed in an outage is no error (Optuna's heartbeat thread would die)."""
        try:
            RDBStorage.record_heartbeat(self, trial_id)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self.outage.failed(exc, retry_window())
            if self._window() <= 0:
                self._give_up(StorageUnavailable(f"{self.outage.name} did not answer for {retry_window():.0f} s "
                                                 f"(last error: {first_line(driver_error(exc))})"))
        else:
            self.outage.answered()
            self.lost = None

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """None until the storage has answered for a grace period (trials alive through an outage beat again)."""
        stale = self._retried(RDBStorage._get_stale_trial_ids, study_id)
        return stale if self.outage.settled(self.grace_period) else []


# every database call of RDBStorage that Optuna (and its _CachedStorage, which calls some private ones) makes
RETRIED_METHODS = tuple(name for name in dir(BaseStorage) if not name.startswith("_") and name != "remove_session") \
    + ("_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param")


def _retrying(name: str):
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def retried(self, *args, **kwargs):
        return self._retried(method, *args, **kwargs)

    return retried


for _name in RETRIED_METHODS:
    setattr(ResilientRDBStorage, _name, _retrying(_name))


def settled(storage, seconds: float) -> bool:
    """Whether ``storage`` (as opened by :func:`open_storage`) has answered for the last ``seconds``."""
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in its cache
    return backend.outage.settled(seconds) if isinstance(backend, ResilientRDBStorage) else True


def is_journal(storage: str) -> bool:
    return storage.startswith("journal:") or "://" not in storage


def open_storage(storage: str | None = None, *, heartbeat: int = 30, on_stale: StaleCallback | None = None,
                 on_lost: Callable[[StorageUnavailable], None] | None = None) -> BaseStorage:
    """Open ``storage`` (default: the journal file here); heartbeats every ``heartbeat`` seconds,
    a trial is stale after three missed beats; an RDB storage rides out outages
    (:class:`ResilientRDBStorage`, ``on_lost`` when one outlasts the window), also while opening.
    Raises ``ValueError`` naming the (redacted) URL when it cannot be opened."""
    storage = storage or DEFAULT_STORAGE
    grace = 3 * heartbeat
    if is_journal(storage):
        path = Path(storage.removeprefix("journal:"))
        if not path.parent.exists():
            raise ValueError(f"cannot create the study storage {str(path)!r}: folder {str(path.parent)!r} does not "
                             f"exist")
        return HeartbeatJournalStorage(str(path), heartbeat, grace, on_stale)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if storage.startswith(("postgresql", "mysql")):  # an unreachable host fails in seconds, not minutes
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    def connect() -> ResilientRDBStorage:
        for attempt in range(5):
            try:
                return ResilientRDBStorage(storage, on_lost=on_lost, heartbeat_interval=heartbeat, grace_period=grace,
                                           heartbeat_stale_trial_callback=on_stale, engine_kwargs=engine_kwargs)
            except Exception as exc:  # noqa: BLE001 - sqlalchemy errors
                if _creating_tables_race(exc) and attempt < 4:
                    time.sleep(0.2 + random.random())  # another worker is creating the tables: they exist soon
                    continue
                raise
        raise AssertionError("unreachable")

    try:  # a server that is restarting is waited for; bad credentials, a missing driver are not
        return _outage(storage).call(connect, window=retry_window())
    except Exception as exc:  # noqa: BLE001 - unreachable for the window, bad credentials, missing driver
        raise ValueError(f"cannot open the study storage {redact(storage)}: {first_line(exc)}") from None


def _creating_tables_race(exc: Exception) -> bool:
    """Workers starting together on an empty database all create Optuna's tables; all but one fail
    with a unique violation ("duplicate key ... pg_type", "already exists")."""
    import sqlalchemy.exc

    text = str(exc).lower()
    return isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) and (
        "already exists" in text or "duplicate" in text)
