"""Each run's per-query outcomes of its final evaluation, from the run artifacts of
:mod:`paramcrop.predictions` (``predictions/<split>.csv``): what ``analyze variance`` and the
hierarchical bootstrap of ``analyze compare`` resample.

:class:`QueryOutcomes` downloads a run's file once per call (its cache lives as long as the
object) and gives, per run, a Series ``video -> 1.0 | 0.0`` (the query's prediction in the
metric's column equals its label). Its mean is the metric's value.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator

import pandas as pd

from analysis.errors import NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

EVAL_COMMAND = "paramcrop eval {run_id} --data {source}"
"""The command that writes a finished run's per-query predictions (on the run's own data source)."""


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bar on stderr (one per file otherwise), unless the user asks for it."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ.setdefault(name, "false")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def metrics_with_predictions() -> list[str]:
    """The metric names whose per-query predictions an evaluation writes."""
    from paramcrop.predictions import METRIC_COLUMNS, SPLIT_PREFIXES

    return [prefix + m for prefix in sorted(SPLIT_PREFIXES.values()) for m in METRIC_COLUMNS]


def source(metric: str) -> tuple[str, str]:
    """``(artifact path, column)`` of ``metric``'s per-query predictions; :class:`NotFoundError`
    (exit 2) for a metric they do not give."""
    from paramcrop.predictions import source_of

    found = source_of(metric)
    if found is None:
        raise NotFoundError(f"objective {metric!r} has no per-query predictions; these metrics have: "
                            f"{', '.join(metrics_with_predictions())} (choose one with --objective)")
    return found


class QueryOutcomes:
    """Per-query outcomes of runs in one tracking store, each file downloaded once."""

    def __init__(self, client: "MlflowClient") -> None:
        self.client = client
        self._files: dict[tuple[str, str], pd.DataFrame | None] = {}

    def predictions(self, run_id: str, path: str) -> pd.DataFrame | None:
        """The run's ``path`` artifact as a frame, None when the run has none."""
        key = (run_id, path)
        if key not in self._files:
            self._files[key] = self._download(run_id, path)
        return self._files[key]

    def _download(self, run_id: str, path: str) -> pd.DataFrame | None:
        import tempfile

        folder = path.rsplit("/", 1)[0]
        if path not in {f.path for f in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
            return pd.read_csv(self.client.download_artifacts(run_id, path, tmp))

    def outcomes(self, run_ids: Iterable[str], metric: str) -> tuple[dict[str, pd.Series], list[str]]:
        """``({run_id: Series video -> 1.0/0.0}, run ids without the file or its column)`` for
        ``metric`` (:func:`source`)."""
        path, col = source(metric)
        found, missing = {}, []
        for rid in dict.fromkeys(run_ids):
            frame = self.predictions(rid, path)
            if frame is None or col not in frame.columns:
                missing.append(rid)
                continue
            correct = (frame[col].to_numpy() == frame["label"].to_numpy()).astype(float)
            found[rid] = pd.Series(correct, index=frame["video"].astype(str).to_numpy(), name=rid)
        return found, missing


def missing_message(runs: pd.DataFrame, missing: list[str], metric: str, why: str, shown: int = 20) -> str:
    """Names the runs of ``missing`` (``runs``: the selection's runs frame) and, for each, the command
    that writes its predictions."""
    from paramcrop.predictions import source_of

    path = source_of(metric)[0]
    rows = runs.set_index("run_id")
    lines = []
    for rid in missing[:shown]:
        name = rows.at[rid, "run_name"] if "run_name" in rows.columns else None
        data = rows.at[rid, "params.data.source"] if "params.data.source" in rows.columns else None
        data = data if isinstance(data, str) and data.strip() else "SOURCE"
        lines.append(f"  {name or ''} ({rid}): {EVAL_COMMAND.format(run_id=rid, source=data)}")
    if len(missing) > shown:
        lines.append(f"  ... and {len(missing) - shown} more")
    return (f"{len(missing)} run(s) have no per-query predictions ({path}, for {metric}): {why}. Write them "
            f"with `paramcrop eval RUN_ID --data SOURCE` (the run's own data source):\n" + "\n".join(lines))
