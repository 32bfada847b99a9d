"""MLflow -> pandas: the logged histories of runs, one row per point (columns
``run_id, metric, step, timestamp, value``, sorted by run, metric, step, time; nothing cached).

They come from the SQL tracking store in one query per metric when the store is an SQL store
(SQLite, PostgreSQL, MySQL: ~2 s for 800,000 points), else from ``MlflowClient.get_metric_history``
per run and metric in a thread pool (REST servers). ``benchmarks/analysis_load.py`` measures both.
Which runs to read comes from :mod:`analysis.load`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

HISTORY_COLUMNS = ["run_id", "metric", "step", "timestamp", "value"]


def _sql_store(client: "MlflowClient"):
    """The SQLAlchemy tracking store behind ``client``, or None (REST, file store)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store  # noqa: SLF001 - no public accessor
        return store if isinstance(store, SqlAlchemyStore) else None
    except Exception:  # noqa: BLE001 - private API moved: use the public path
        return None


def _fetch_rows(conn, query) -> list[tuple]:
    """Rows of ``query`` as plain tuples straight from the DB-API cursor (SQLAlchemy's Row
    objects cost ~3x more for hundreds of thousands of points); falls back to SQLAlchemy."""
    try:
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = compiled.params
        if compiled.positiontup is not None:
            params = tuple(params[name] for name in compiled.positiontup)
        cursor = conn.connection.driver_connection.cursor()
    except Exception:  # noqa: BLE001 - an unusual driver: let SQLAlchemy do it
        return [tuple(r) for r in conn.execute(query).fetchall()]
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _histories_sql(store, run_ids: Sequence[str], metrics: Sequence[str] | None) -> pd.DataFrame:
    """One query per metric (and per 500 runs) on MLflow's ``metrics`` table, through MLflow's
    own table definition (``SqlMetric``)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    t = SqlMetric.__table__
    cols = [t.c.run_uuid, t.c.key, t.c.step, t.c.timestamp, t.c.value, t.c.is_nan]
    parts = []
    with store.engine.connect() as conn:
        for start in range(0, len(run_ids), 500):  # stay below SQL parameter limits
            chunk = list(run_ids[start:start + 500])
            for key in (metrics if metrics is not None else [None]):
                query = sa.select(*cols).where(t.c.run_uuid.in_(chunk))
                if key is not None:
                    query = query.where(t.c.key == key)
                rows = _fetch_rows(conn, query)
                if rows:
                    parts.append(pd.DataFrame.from_records(
                        rows, columns=["run_id", "metric", "step", "timestamp", "value", "is_nan"]))
    if not parts:
        return _empty_history()
    frame = pd.concat(parts, ignore_index=True)
    frame["value"] = frame["value"].astype(float).where(~frame.pop("is_nan").astype(bool), np.nan)
    return frame


def _histories_client(client: "MlflowClient", run_ids: Sequence[str], metrics: Sequence[str] | None,
                      workers: int) -> pd.DataFrame:
    if metrics is None:
        keys = {rid: list(client.get_run(rid).data.metrics) for rid in run_ids}
    else:
        keys = {rid: list(metrics) for rid in run_ids}
    pairs = [(rid, k) for rid in run_ids for k in keys[rid]]

    def fetch(pair):
        rid, key = pair
        return [(rid, key, m.step, m.timestamp, m.value) for m in client.get_metric_history(rid, key)]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = [row for chunk in pool.map(fetch, pairs) for row in chunk]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS) if rows else _empty_history()


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame({"run_id": pd.Series(dtype=object), "metric": pd.Series(dtype=object),
                         "step": pd.Series(dtype="int64"), "timestamp": pd.Series(dtype="int64"),
                         "value": pd.Series(dtype=float)})


def load_histories(
    client: "MlflowClient",
    run_ids: Sequence[str],
    metrics: Sequence[str] | None = None,
    method: str = "auto",
    workers: int = 8,
) -> pd.DataFrame:
    """Every logged point of ``metrics`` (default: all) of ``run_ids``, as a tidy frame.

    ``method``: ``"auto"`` (SQL bulk read when the store is SQL, else the client),
    ``"sql"`` or ``"client"`` (``get_metric_history`` per run and metric, ``workers`` threads).
    """
    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids:
        return _empty_history()
    store = _sql_store(client) if method in ("auto", "sql") else None
    if method == "sql" and store is None:
        raise ValueError("method='sql' needs an SQL tracking store (sqlite, postgresql, mysql)")
    frame = (_histories_sql(store, run_ids, metrics) if store is not None
             else _histories_client(client, run_ids, metrics, workers))
    frame = frame[HISTORY_COLUMNS].astype({"step": "int64", "timestamp": "int64", "value": float})
    return frame.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable").reset_index(drop=True)


def last_per_step(history: pd.DataFrame) -> pd.DataFrame:
    """One value per (run, metric, step): the last logged (by time) when a step was logged twice,
    e.g. by a resumed run."""
    ordered = history.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    return ordered.drop_duplicates(["run_id", "metric", "step"], keep="last").reset_index(drop=True)
