"""Every private API of a dependency that paramcrop uses, one test each, failing with the feature it breaks.

pyproject.toml bounds the majors (optuna 5, mlflow 3, decord 0.6); an upgrade inside them that
moves one of these fails here, naming what to fix, instead of silently changing behaviour.
"""
import logging
import time

import pytest

optuna = pytest.importorskip("optuna")
mlflow = pytest.importorskip("mlflow")


def test_optuna_trial_study_storage_and_trial_id(tmp_path):
    """studies/runner.py: ``trial.study._storage.get_trial[_system_attrs](trial._trial_id)``."""
    study = optuna.create_study()
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, "failed_trial", 3)
    what = ("Optuna's trial.study._storage / trial._trial_id changed: studies/runner.py (a retried trial's "
            "checkpoint folder, the interrupted-trial requeue, the taken-trial check) must be ported")
    try:
        attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        frozen = trial.study._storage.get_trial(trial._trial_id)
    except AttributeError as exc:
        pytest.fail(f"{what}: {exc}")
    assert attrs.get("failed_trial") == 3, what
    assert frozen.number == trial.number and frozen._trial_id == trial._trial_id, what


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() on a heartbeat storage, on purpose
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_base_heartbeat_contract_of_the_journal_storage(tmp_path):
    """studies/storage.py: ``HeartbeatJournalStorage(JournalStorage, optuna.storages._heartbeat.BaseHeartbeat)``:
    Optuna must call its ``record_heartbeat`` while a trial runs and its ``_get_stale_trial_ids`` to fail stale
    trials (with ``FrozenTrial._trial_id``)."""
    what = ("Optuna's private heartbeat interface (optuna.storages._heartbeat.BaseHeartbeat) changed: "
            "studies/storage.py HeartbeatJournalStorage no longer detects dead workers of journal-storage studies "
            "(their trials stay RUNNING forever and are never retried)")
    try:
        from studies.storage import HEARTBEAT_ATTR, HeartbeatJournalStorage
    except ImportError as exc:
        pytest.fail(f"{what}: {exc}")
    stale = []
    storage = HeartbeatJournalStorage(str(tmp_path / "s.journal"), 60, 1, lambda study, trial: stale.append(trial))
    study = optuna.create_study(storage=storage)
    study.optimize(lambda trial: 0.0, n_trials=1)
    assert HEARTBEAT_ATTR in study.trials[0].system_attrs, f"{what}: Optuna did not call record_heartbeat"
    trial = study.ask()
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 100)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[1].state == optuna.trial.TrialState.FAIL, f"{what}: a stale trial was not failed"
    assert [t.number for t in stale] == [1], f"{what}: the stale-trial callback was not called"


def test_optuna_optimize_logger_name():
    """studies/runner.py filters Optuna's "Trial N failed" traceback for an interrupted trial on the logger
    ``optuna.study._optimize``: Optuna must log failed trials there, and the filter must drop only interrupts."""
    import studies.runner  # noqa: F401 - installs the filter

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("optuna.study._optimize")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)

    def failing(trial):
        raise ValueError("boom")

    def interrupted(trial):
        raise KeyboardInterrupt

    try:
        optuna.create_study().optimize(failing, n_trials=1, catch=(ValueError,))
        with pytest.raises(KeyboardInterrupt):
            optuna.create_study().optimize(interrupted, n_trials=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in records), (
        "Optuna no longer logs a failed trial on 'optuna.study._optimize': studies/runner.py's filter misses it and "
        "every interrupted study trial prints a KeyboardInterrupt traceback")
    assert not any(r.exc_info and isinstance(r.exc_info[1], KeyboardInterrupt) for r in records), (
        "studies/runner.py's filter on 'optuna.study._optimize' lets an interrupted trial's traceback through")


def test_optuna_rdb_storage_calls_that_ride_out_an_outage():
    """studies/storage.py ``ResilientRDBStorage`` retries the database calls of ``RDBStorage`` by name
    (``RETRIED_METHODS``: ``BaseStorage``'s and the private ones ``optuna.storages._cached_storage._CachedStorage``
    calls on its backend), overrides ``record_heartbeat`` / ``_get_stale_trial_ids`` (reading ``grace_period``)
    and quiets the ``_get_trials`` fallback warning of the logger ``optuna.storages._rdb.storage``."""
    import inspect
    import re

    from optuna.storages import RDBStorage, _cached_storage
    from optuna.storages._rdb import storage as rdb

    from studies.storage import RETRIED_METHODS

    what = ("Optuna's RDB storage or its cache changed the methods they call: studies/storage.py "
            "ResilientRDBStorage no longer retries every database call, so a study-database restart stops the workers")
    called = set(re.findall(r"self\._backend\.(\w+)\(", inspect.getsource(_cached_storage._CachedStorage)))
    not_retried = called - set(RETRIED_METHODS) - {"record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
                                                    "get_heartbeat_stale_trial_callback"}
    assert not not_retried, f"{what}: {sorted(not_retried)}"
    missing = [name for name in (*RETRIED_METHODS, "record_heartbeat", "_get_stale_trial_ids")
               if not callable(getattr(RDBStorage, name, None))]
    assert not missing, f"{what}: RDBStorage has no {missing}"
    assert "grace_period" in inspect.getsource(RDBStorage.__init__), f"{what}: no RDBStorage.grace_period"
    assert rdb._logger.name == "optuna.storages._rdb.storage" and \
        "Falling back to a slower alternative" in inspect.getsource(rdb), (
        "Optuna's _get_trials fallback warning moved: studies/storage.py's filter misses it and a lost connection "
        "prints the SQL it was running")


def test_mlflow_client_tracking_client_store_and_sql_metric(tmp_path):
    """analysis/histories.py: ``client._tracking_client.store`` (an ``SqlAlchemyStore`` for ``sqlite://``) and MLflow's
    ``SqlMetric`` table, the fast path that reads metric histories with one query per metric."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from analysis.histories import _histories_sql, _sql_store

    what = ("MLflow's private client._tracking_client.store or SqlMetric moved: analysis/histories.py falls back to one "
            "REST-style get_metric_history call per run and metric (analyses of big studies become many times slower)")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e"))
    client.log_batch(run.info.run_id, metrics=[Metric("train/loss", 0.5 * s, 0, s) for s in range(3)])
    try:
        store = client._tracking_client.store
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except (AttributeError, ImportError) as exc:
        pytest.fail(f"{what}: {exc}")
    assert isinstance(store, SqlAlchemyStore) and _sql_store(client) is store, what
    columns = set(SqlMetric.__table__.c.keys())
    assert {"run_uuid", "key", "step", "timestamp", "value", "is_nan"} <= columns, f"{what}: columns {columns}"
    history = _histories_sql(store, [run.info.run_id], ["train/loss"])
    assert sorted(zip(history["step"], history["value"])) == [(0, 0.0), (1, 0.5), (2, 1.0)], what


def test_decord_error_class(tmp_path):
    """paramcrop/data/video.py catches ``decord._ffi.base.DECORDError`` (not a RuntimeError) for broken videos."""
    what = ("decord._ffi.base.DECORDError moved: paramcrop/data/video.py cannot catch decord's errors, so one broken "
            "video stops a training instead of being skipped")
    try:
        from decord._ffi.base import DECORDError
    except ImportError as exc:
        pytest.fail(f"{what}: {exc}")
    import decord

    from paramcrop.data.video import DECODE_ERRORS

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(DECODE_ERRORS) as caught:
        decord.VideoReader(str(broken))
    assert DECORDError in DECODE_ERRORS and issubclass(DECORDError, Exception), what
    assert isinstance(caught.value, (DECORDError, RuntimeError)), what
