"""Optuna storages: the default journal file, or any RDB URL, both with trial heartbeats.

The default is a journal file in the working directory (``paramcrop-studies.journal``), which
several local workers share safely (SQLite with several writers fails with "database is
locked"). ``--storage`` takes an RDB URL (``postgresql://``, ``mysql+pymysql://``,
``sqlite:///``) for workers on several hosts, or ``journal:PATH`` / a ``*.journal`` path.

Optuna 5 implements heartbeats (detecting trials left RUNNING by a dead worker) for RDB storage
only; :class:`HeartbeatJournalStorage` gives the journal storage the same ``BaseHeartbeat``
interface, so Optuna's own heartbeat thread, ``fail_stale_trials`` and the failed-trial
callback (retry) work for both.
"""
from __future__ import annotations

import random
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

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"

from studies import DEFAULT_STORAGE  # noqa: F401  (re-exported: the storage module's default)
"""The default Optuna storage of studies and analyses: this journal file in the working directory."""
HEARTBEAT_ATTR = "paramcrop:heartbeat"
CONNECT_TIMEOUT_S = 10
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage whose running trials record heartbeats as a system attribute."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int,
                 failed_trial_callback: StaleCallback | None) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.failed_trial_callback = failed_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

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


def is_journal(storage: str) -> bool:
    return storage.startswith("journal:") or "://" not in storage


def open_storage(storage: str | None = None, *, heartbeat: int = 30,
                 on_stale: StaleCallback | None = None) -> BaseStorage:
    """Open ``storage`` (default: the journal file here); heartbeats every ``heartbeat`` seconds,
    a trial is stale after three missed beats. Raises ``ValueError`` naming the (redacted) URL when
    it cannot be opened."""
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
    for attempt in range(5):
        try:
            return RDBStorage(storage, heartbeat_interval=heartbeat, grace_period=grace,
                              heartbeat_stale_trial_callback=on_stale, engine_kwargs=engine_kwargs)
        except Exception as exc:  # sqlalchemy errors: unreachable server, bad credentials, missing driver
            if _creating_tables_race(exc) and attempt < 4:
                time.sleep(0.2 + random.random())  # another worker is creating the tables: they exist soon
                continue
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"cannot open the study storage {redact(storage)}: {redact(first)}") from None
    raise AssertionError("unreachable")


def _creating_tables_race(exc: Exception) -> bool:
    """Workers starting together on an empty database all create Optuna's tables; all but one fail
    with a unique violation ("duplicate key ... pg_type", "already exists")."""
    import sqlalchemy.exc

    text = str(exc).lower()
    return isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) and (
        "already exists" in text or "duplicate" in text)
