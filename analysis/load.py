"""MLflow -> pandas: which runs to analyse, and their params, tags and final metrics.

Selections (exactly one of them; none = the most recent study):

- a **study** by name: the MLflow experiment of that name holding a parent run tagged
  ``paramcrop.role=study``. Its runs are every other run of the experiment (trials, and
  ``paramcrop train`` runs logged into it). The most recent study is the experiment whose
  parent run started last.
- one or more **experiments** (name or id): their runs, parent study runs excluded.
- explicit **run ids**: those runs, whatever their state (a note says when one is not finished).

For studies and experiments only *finished* runs are analysed: status ``FINISHED`` and no
``paramcrop.pruned`` tag (pruned trials stop early and would bias the means); the others are
counted in :attr:`Selection.notes`.

The runs frame is tidy: one row per run; columns ``run_id, run_name, experiment_id, experiment,
status, start_time, end_time`` then ``params.<key>`` (strings, as logged), ``tags.<key>`` and
``metrics.<key>`` (the final value: MLflow's latest by step, then time), like
``mlflow.search_runs``; params of runs logged under an old config name (``objectives.*``) under the
current one (``losses.*``). Histories (every logged point of a metric): :mod:`analysis.histories`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.errors import NoDataError, NotFoundError
from paramcrop import sinks
from paramcrop.keys import current_key

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient
    from mlflow.entities import Run

ROLE_STUDY = "study"
DEFAULT_REPORTED_METRIC = sinks.EVAL_KNN_TOP1
"""What an analysis reports when neither ``--objective`` nor the study's ``paramcrop.objective`` tag names
a metric: the test split's kNN top-1."""
_PAGE = 1000


@dataclass
class Selection:
    """The runs an analysis works on, and where they come from."""

    kind: str                       # "study" | "experiment" | "runs"
    name: str                       # study or experiment name(s); "runs" for explicit ids
    runs: pd.DataFrame              # one row per selected run (see module doc)
    experiment_ids: list[str]
    parent_run_id: str | None       # the study's parent run (artifacts go there); None otherwise
    objective: str                  # metric name of the objective
    notes: list[str] = field(default_factory=list)  # what was skipped, and why

    @property
    def run_ids(self) -> list[str]:
        return list(self.runs["run_id"])

    def title(self, subject: str) -> str:
        """Figure title: ``Study <name>: <subject>``, ``Experiment <name>: ...``, ``<n> runs: ...``."""
        if self.kind == "runs":
            return f"{len(self.runs)} runs: {subject}"
        return f"{self.kind.capitalize()} {self.name}: {subject}"


@dataclass(frozen=True)
class RunQuery:
    """What an MLflow-based analysis reads and where it writes: the options that ``analyze
    iou-curves``, ``strength`` and ``table`` share.

    At most one of ``study``, ``experiments`` and ``run_ids`` (none = the most recent study, see
    the module doc); ``objective`` overrides the study's objective metric; ``out`` is the output
    folder (default ``./analysis-<name>/``); ``log`` logs the files to a study's parent run."""

    study: str | None = None
    experiments: Sequence[str] = ()
    run_ids: Sequence[str] = ()
    objective: str | None = None
    tracking_uri: str | None = None
    out: Path | None = None
    log: bool = True

    def resolve(self, client: "MlflowClient | None" = None) -> tuple["MlflowClient", Selection]:
        """``(client, selection)``: opens the tracking store unless ``client`` is given."""
        from analysis.store import open_client

        client = client or open_client(self.tracking_uri)
        return client, select(client, self.study, self.experiments, self.run_ids, self.objective)


# --- runs ----------------------------------------------------------------------------------
def _all_experiment_ids(client: "MlflowClient") -> dict[str, str]:
    """Active experiments, id -> name."""
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        out.update({e.experiment_id: e.name for e in page})
        token = page.token
        if not token:
            return out


def _search_runs(client: "MlflowClient", experiment_ids: Sequence[str], filter_string: str = "") -> list["Run"]:
    runs: list = []
    if not experiment_ids:
        return runs
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string,
                                  max_results=_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: Iterable["Run"], experiment_names: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run: identity, status, times, ``params.*``, ``tags.*``, ``metrics.*``. Params
    under an old config name (:data:`paramcrop.config.RENAMED_KEYS`: ``objectives.region``, ``augment.strength``)
    are read under the current one (``losses.region``, ``augment.jitter_scale``)."""
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "experiment_id": info.experiment_id,
            "experiment": (experiment_names or {}).get(info.experiment_id),
            "status": info.status,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True) if info.start_time else pd.NaT,
            "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
        }
        row.update({f"params.{current_key(k)}": v for k, v in data.params.items()})
        row.update({f"tags.{k}": v for k, v in data.tags.items()})
        row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "run_name", "experiment_id", "experiment", "status",
                                      "start_time", "end_time"])
    fixed = [c for c in frame.columns if "." not in c]
    prefixed = sorted(c for c in frame.columns if "." in c)
    return frame[fixed + prefixed].reset_index(drop=True)


def column(frame: pd.DataFrame, name: str, default=None) -> pd.Series:
    """``frame[name]`` or a column of ``default`` when absent (params a method lacks)."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([default] * len(frame), index=frame.index, dtype=object)


def list_studies(client: "MlflowClient") -> pd.DataFrame:
    """Parent study runs, newest first: ``study`` (experiment name), ``experiment_id``,
    ``parent_run_id``, ``start_time``, ``objective``."""
    names = _all_experiment_ids(client)
    parents = _search_runs(client, list(names), f"tags.`{sinks.TAG_ROLE}` = '{ROLE_STUDY}'")
    rows = [{
        "study": names.get(r.info.experiment_id, r.info.experiment_id),
        "experiment_id": r.info.experiment_id,
        "parent_run_id": r.info.run_id,
        "start_time": r.info.start_time or 0,
        "objective": _objective(r.data.tags, None),
    } for r in parents]
    frame = pd.DataFrame(rows, columns=["study", "experiment_id", "parent_run_id", "start_time", "objective"])
    return frame.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def _is_pruned(value) -> bool:
    return isinstance(value, str) and value.strip().lower() not in ("", "false", "0", "no")


def finished_only(runs: pd.DataFrame, what: str) -> tuple[pd.DataFrame, list[str]]:
    """Keep status FINISHED and not pruned; the notes say what was left out."""
    pruned = column(runs, f"tags.{sinks.TAG_PRUNED}").map(_is_pruned).astype(bool)
    finished = (runs["status"] == "FINISHED") & ~pruned
    notes = []
    if (~finished).any():
        left = runs[~finished]
        counts = left["status"].where(~pruned[~finished], "pruned").value_counts()
        parts = ", ".join(f"{n} {state}" for state, n in counts.items())
        notes.append(f"{what}: {int((~finished).sum())} of {len(runs)} runs not analysed ({parts}); "
                     "only finished, unpruned runs count.")
    return runs[finished].reset_index(drop=True), notes


def _objective(parent_tags: dict | None, objective: str | None) -> str:
    """``objective``, else the (first, for a multi-objective study: the tag is comma-separated)
    metric of the parent's ``paramcrop.objective`` tag, else :data:`DEFAULT_REPORTED_METRIC`."""
    if objective:
        return objective
    tag = (parent_tags or {}).get(sinks.TAG_OBJECTIVE) or ""
    first = tag.split(",")[0].strip()
    return first or DEFAULT_REPORTED_METRIC


def select(
    client: "MlflowClient",
    study: str | None = None,
    experiments: Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
    objective: str | None = None,
) -> Selection:
    """Resolve what to analyse (see module doc). ``objective`` overrides the parent run's
    ``paramcrop.objective`` tag (default ``eval/knn_top1``).

    Raises :class:`NotFoundError` for unknown names or ids, :class:`NoDataError` when the
    selection has no finished runs.
    """
    experiments = [e for e in (experiments or []) if e]
    run_ids = [r.strip() for item in (run_ids or []) for r in item.split(",") if r.strip()]
    given = sum(bool(x) for x in (study, experiments, run_ids))
    if given > 1:
        raise NotFoundError("give at most one of --study, --experiment and --runs")
    if run_ids:
        return _select_runs(client, run_ids, objective)
    if experiments:
        return _select_experiments(client, experiments, objective)
    return _select_study(client, study, objective)


def _select_study(client: "MlflowClient", study: str | None, objective: str | None) -> Selection:
    studies = list_studies(client)
    if study is None:
        if studies.empty:
            names = sorted(_all_experiment_ids(client).values())
            raise NoDataError(
                "no paramcrop study in this tracking store (no run tagged "
                f"{sinks.TAG_ROLE}={ROLE_STUDY}). Experiments here: {', '.join(names) or 'none'}; "
                "analyse one with --experiment NAME, or runs with --runs ID,..."
            )
        row = studies.iloc[0]
    else:
        match = studies[studies["study"] == study]
        if match.empty:
            known = ", ".join(dict.fromkeys(studies["study"])) or "none"
            hint = ""
            if client.get_experiment_by_name(study) is not None:
                hint = (f" (an experiment named {study!r} exists but has no parent study run; "
                        f"use --experiment {study!r})")
            raise NotFoundError(f"unknown study {study!r}{hint}. Known studies: {known}")
        row = match.iloc[0]
    name, eid, parent_id = row["study"], row["experiment_id"], row["parent_run_id"]
    parents = set(studies.loc[studies["experiment_id"] == eid, "parent_run_id"])
    runs = [r for r in _search_runs(client, [eid]) if r.info.run_id not in parents]
    frame = runs_frame(runs, {eid: name})
    if frame.empty:
        raise NoDataError(f"study {name!r} has no trial runs yet (experiment {eid}); run it with "
                          f"`paramcrop study run` first")
    kept, notes = finished_only(frame, f"study {name!r}")
    if kept.empty:
        states = ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items())
        raise NoDataError(f"study {name!r} has no finished runs ({states}); wait for trials to "
                          "finish, or analyse unfinished runs explicitly with --runs ID,...")
    tags = client.get_run(parent_id).data.tags
    return Selection("study", name, kept, [eid], parent_id, _objective(tags, objective), notes)


def _select_experiments(client: "MlflowClient", experiments: Sequence[str], objective: str | None) -> Selection:
    known = _all_experiment_ids(client)
    by_name = {v: k for k, v in known.items()}
    ids, unknown = [], []
    for e in experiments:
        if e in by_name:
            ids.append(by_name[e])
        elif e in known:
            ids.append(e)
        else:
            unknown.append(e)
    if unknown:
        raise NotFoundError(f"unknown experiment(s) {', '.join(map(repr, unknown))}. "
                            f"Known experiments: {', '.join(sorted(by_name)) or 'none'}")
    ids = list(dict.fromkeys(ids))
    all_runs = _search_runs(client, ids)
    parents = [r for r in all_runs if r.data.tags.get(sinks.TAG_ROLE) == ROLE_STUDY]
    parent_ids = {r.info.run_id for r in parents}
    frame = runs_frame([r for r in all_runs if r.info.run_id not in parent_ids], known)
    name = "+".join(known[i] for i in ids)
    if frame.empty:
        raise NoDataError(f"experiment {name!r} has no runs")
    kept, notes = finished_only(frame, f"experiment {name!r}")
    if kept.empty:
        states = ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items())
        raise NoDataError(f"experiment {name!r} has no finished runs ({states})")
    tags = parents[0].data.tags if len(parents) == 1 else None
    return Selection("experiment", name, kept, ids, None, _objective(tags, objective), notes)


def _select_runs(client: "MlflowClient", run_ids: Sequence[str], objective: str | None) -> Selection:
    from mlflow.exceptions import MlflowException

    runs, unknown = [], []
    for rid in dict.fromkeys(run_ids):
        try:
            run = client.get_run(rid)
        except MlflowException:
            unknown.append(rid)
            continue
        if run.info.lifecycle_stage == "deleted":
            unknown.append(f"{rid} (deleted)")
        else:
            runs.append(run)
    if unknown:
        raise NotFoundError(f"unknown run id(s): {', '.join(unknown)}")
    names = {r.info.experiment_id: client.get_experiment(r.info.experiment_id).name
             for r in runs}
    frame = runs_frame(runs, names)
    notes = [f"run {r} is {s}, not FINISHED: its curves may stop early"
             for r, s in zip(frame["run_id"], frame["status"]) if s != "FINISHED"]
    parent_ids = {r.data.tags.get(sinks.PARENT_RUN_TAG) for r in runs}
    tags = None
    if len(parent_ids) == 1 and None not in parent_ids:
        try:
            tags = client.get_run(parent_ids.pop()).data.tags
        except MlflowException:
            tags = None
    return Selection("runs", "runs", frame, list(names), None, _objective(tags, objective), notes)


def require_metrics(selection: Selection, metrics: Sequence[str], why: str, skip: bool = False) -> list[str]:
    """Check that every selected run has a final value for each of ``metrics`` (a logged
    history). Raises :class:`NoDataError` naming the runs without, and why they are needed;
    with ``skip`` those runs are dropped from ``selection.runs`` (a note says so) and the
    error comes only when none remain. Returns the notes."""
    runs = selection.runs
    missing = {}
    for _, row in runs.iterrows():
        lacks = [m for m in metrics if pd.isna(row.get(f"metrics.{m}", np.nan))]
        if lacks:
            missing[row["run_id"]] = lacks
    if not missing:
        return []

    def describe(rid: str) -> str:
        row = runs.loc[runs["run_id"] == rid].iloc[0]
        has = sorted(c[len("metrics."):] for c in runs.columns
                     if c.startswith("metrics.") and not pd.isna(row[c]))
        return (f"  {row['run_name'] or ''} ({rid}): missing {', '.join(missing[rid])}; "
                f"has {', '.join(has) or 'no metrics'}")

    listing = "\n".join(describe(r) for r in missing)
    if skip and len(missing) < len(runs):
        selection.runs = runs[~runs["run_id"].isin(list(missing))].reset_index(drop=True)
        note = f"{len(missing)} run(s) skipped without {', '.join(metrics)}:\n{listing}"
        selection.notes.append(note)
        return [note]
    hint = "" if skip or len(missing) == len(runs) else " Pass --skip-incomplete to plot the other runs."
    raise NoDataError(
        f"{len(missing)} of {len(runs)} run(s) of {selection.name!r} have no {', '.join(metrics)} "
        f"history: {why}\n{listing}\n{hint}".rstrip()
    )
