"""The ``replay`` crop's source, resolved into a local folder before a trial's trainer is built.

``paramcrop/`` reads snapshot files only (:mod:`paramcrop.crops.replay`); a spec refers to them by
reference and this module finds them:

- ``crop.source: runs:/<run id>``: the MLflow run's ``generator-snapshots/`` artifacts, downloaded to
  ``<runs root>/<study>/replay-sources/<run id>/``.
- ``crop.source: trial:<variant>`` (the decision for built-in specs, so that a study with a replay
  control runs with one command): this study's trial whose params equal the replay trial's except that
  the variants dimension holding the replay variant is ``<variant>`` (same seed, same everything
  else). Its folder is read locally when it holds the snapshots (one host), else its MLflow run's
  artifacts are downloaded. The grid sampler hands out every point whose crop is not a
  ``trial:`` replay first (:func:`grid_sampler`), so on one worker the reference has finished when
  its replay starts; on several, a replay whose reference is still running (or queued for a retry)
  waits for it. A reference that failed, or never ran, fails the replay trial with the reason.
  ``trial:`` references need the grid sampler (:func:`check_replay_references`).

The replay trial's run logs ``crop.source`` as the spec wrote it (``trial:paramcrop``: the same for
every seed, so an analysis grouping runs by their params keeps the replays of all seeds together)
and gets the tags ``paramcrop.replay_of`` (the reference's MLflow run id) and
``paramcrop.replay_source`` (the folder it read); its ``config.yaml`` holds the folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from paramcrop.config import TrainConfig
from paramcrop.crops.replay import SNAPSHOT_DIR, is_reference
from studies.spec import StudySpec

TAG_REPLAY_OF = "paramcrop.replay_of"
TAG_REPLAY_SOURCE = "paramcrop.replay_source"
TRIAL_SCHEME, RUNS_SCHEME = "trial:", "runs:/"
REPLAY_SOURCES = "replay-sources"


def _trial_reference(cfg: TrainConfig) -> str | None:
    """The variant a ``trial:<variant>`` replay config refers to, else None."""
    source = str(cfg.crop.get("source", ""))
    if cfg.crop.get("method") != "replay" or not source.startswith(TRIAL_SCHEME):
        return None
    return source[len(TRIAL_SCHEME):]


def check_replay_references(spec: StudySpec) -> None:
    """Every ``trial:<variant>`` source names a non-replay variant of the dimension that holds it, and
    the sampler is ``grid``; ``ValueError`` naming the variant and the fix otherwise."""
    for dim in spec.search_space:
        if dim.type != "variants":
            continue
        for name, overrides in dim.choices.items():
            source = str(overrides.get("crop.source", ""))
            if not source.startswith(TRIAL_SCHEME):
                continue
            target = source[len(TRIAL_SCHEME):]
            if target not in dim.choices or str(dim.choices[target].get("crop.source", "")).startswith(TRIAL_SCHEME):
                raise ValueError(f"search_space.{dim.key}.choices.{name}: crop.source {source!r} must name another "
                                 f"variant of {dim.key} with a learned crop; variants: {', '.join(dim.choices)}")
            if spec.sampler != "grid":
                raise ValueError(f"search_space.{dim.key}.choices.{name}: a trial: replay source needs sampler: grid "
                                 f"(the reference must run first); give runs:/<run id> instead")


def grid_sampler(spec: StudySpec) -> optuna.samplers.GridSampler:
    """Optuna's grid sampler over ``spec.grid()`` with every ``trial:`` replay point after the others
    (its shuffled order otherwise kept: trial ``n`` of a fresh study takes point ``n``)."""
    sampler = optuna.samplers.GridSampler(spec.grid(), seed=spec.sampler_seed)
    names = sampler._param_names  # the sorted param names of each grid tuple (tests/test_controls.py pins it)

    def is_replay(point: tuple) -> bool:
        return _trial_reference(spec.config_for(dict(zip(names, point)))[0]) is not None

    sampler._all_grids.sort(key=is_replay)  # a stable sort
    return sampler


class _SpecSource:
    """A metrics sink that logs ``crop.source`` as the spec wrote it; everything else passes through."""

    def __init__(self, sink, source: str) -> None:
        self._sink, self._source = sink, source

    def __getattr__(self, name: str):
        return getattr(self._sink, name)

    def log_params(self, params) -> None:
        self._sink.log_params({**params, "crop.source": self._source} if "crop.source" in params else params)


def prepare_replay_trial(cfg: TrainConfig, spec: StudySpec, trial: optuna.Trial, client, runs_root: Path, sink,
                         say: Callable[[str], None] = print):
    """A trial's ``(config, sink)`` for its trainer: for a replay with a reference source, the config with
    the folder (:func:`resolve_replay_source`), the run tagged and the sink logging the spec's source
    (module doc); otherwise both unchanged."""
    resolved, tags = resolve_replay_source(cfg, spec, trial, client, runs_root, say=say)
    if not tags:
        return cfg, sink
    sink.set_tags(tags)
    return resolved, _SpecSource(sink, str(cfg.crop["source"]))


def resolve_replay_source(cfg: TrainConfig, spec: StudySpec, trial: optuna.Trial | None, client, runs_root: Path,
                          wait_s: float = 5.0,
                          say: Callable[[str], None] = print) -> tuple[TrainConfig, dict[str, str]]:
    """``cfg`` with a reference ``crop.source`` replaced by a local folder of snapshots, and the run's
    tags (``paramcrop.replay_of``, ``paramcrop.replay_source``); other configs unchanged, no tags."""
    source = str(cfg.crop.get("source", ""))
    if cfg.crop.get("method") != "replay" or not is_reference(source):
        return cfg, {}
    if source.startswith(RUNS_SCHEME):
        run_id = source[len(RUNS_SCHEME):].strip("/")
        folder = _download(client, run_id, runs_root / spec.name)
    else:
        reference = _wait_for_reference(spec, trial, source[len(TRIAL_SCHEME):], wait_s, say)
        run_id = reference.user_attrs.get("mlflow_run_id", "")
        origin = reference.system_attrs.get("failed_trial", reference.number)
        folder = runs_root / spec.name / f"trial-{origin:04d}" / SNAPSHOT_DIR
        if not any(folder.glob("step_*.pt")):  # ran on another host: its MLflow artifacts
            folder = _download(client, run_id, runs_root / spec.name)
    return cfg.with_overrides({"crop.source": str(folder)}), {TAG_REPLAY_OF: run_id, TAG_REPLAY_SOURCE: str(folder)}


def resolve_train_source(cfg: TrainConfig, tracking_uri: str, runs_root: Path) -> TrainConfig:
    """``paramcrop train``'s replay source: ``runs:/<id>`` downloaded under ``runs_root``; a ``trial:``
    reference is refused (``ValueError``: it exists only inside a study)."""
    source = str(cfg.crop.get("source", ""))
    if cfg.crop.get("method") != "replay" or not is_reference(source):
        return cfg
    if source.startswith(TRIAL_SCHEME):
        raise ValueError(f"crop.source {source!r} refers to a study's trial: use it in a study spec, or give "
                         f"runs:/<run id> or a run folder")
    from studies.tracking import open_tracking_store

    folder = _download(open_tracking_store(tracking_uri), source[len(RUNS_SCHEME):].strip("/"), runs_root)
    return cfg.with_overrides({"crop.source": str(folder)})


def _download(client, run_id: str, study_dir: Path) -> Path:
    from studies.tracking import call

    if not run_id:
        raise ValueError("crop.source runs:/<run id>: the run id is missing")
    dst = study_dir / REPLAY_SOURCES / run_id
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(call(client.download_artifacts, run_id, SNAPSHOT_DIR, str(dst)))
    except Exception as exc:  # noqa: BLE001 - named with the fix
        raise ValueError(f"crop.source runs:/{run_id}: could not fetch its {SNAPSHOT_DIR}/ artifacts ({exc}); it "
                         f"must be a finished learned-crop run of this tracking store") from None


def _wait_for_reference(spec: StudySpec, trial: optuna.Trial, variant: str, wait_s: float,
                        say: Callable[[str], None]) -> FrozenTrial:
    """The COMPLETE trial with ``trial``'s params but ``variant`` in the dimension of its replay variant;
    waits while such a trial is running or queued."""
    params = dict(trial.params)
    dim = next(d for d in spec.search_space if d.type == "variants" and
               str(d.choices.get(params.get(d.param_name), {}).get("crop.source", "")) == TRIAL_SCHEME + variant)
    target = {**params, dim.param_name: variant}
    shown = ", ".join(f"{k}={v}" for k, v in target.items())
    said = False
    while True:
        matches = [t for t in trial.study.get_trials(deepcopy=False) if t.params == target]
        complete = [t for t in matches if t.state == TrialState.COMPLETE]
        if complete:
            return complete[-1]
        if not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in matches):
            raise ValueError(f"the replay's reference trial ({shown}) has not completed "
                             f"({', '.join(t.state.name for t in matches) or 'never ran'}): run it (the grid runs "
                             f"references first); the replay cannot run without it")
        if not said:
            say(f"waiting for the replay's reference trial ({shown}) to finish")
            said = True
        time.sleep(wait_s)

