"""``paramcrop eval``: finished runs evaluated on any data source, the results logged back into them;
or their own final evaluation recomputed, its per-query predictions logged (:func:`evaluate_own`).

Each run's resolved ``config.yaml`` artifact gives the evaluation geometry and settings, its logged
model ``backbone`` (``runs:/<id>/backbone``) the features. Metrics are
:func:`paramcrop.transfer.downstream_metric` names (``eval/<dataset name>/<metric>``), logged with
``MlflowClient.log_batch`` at the run's last step (``steps - 1``, the step convention), so they sit beside the run's own
evaluation; what could not be computed is the tag ``paramcrop.eval_skipped.<dataset name>``.
A study's runs are its trial runs (tag ``paramcrop.study``, role ``trial``), one per trial: the
latest finished run of each trial number (a retried trial keeps the run that finished it).
Each distinct evaluation geometry scans the dataset once, however many runs share it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from paramcrop import sinks
from studies.tracking import call


@dataclass
class EvalRow:
    """One run's outcome: its metrics, the reasons for what was skipped, or the error that stopped it."""

    run_id: str
    trial: str = ""
    crop: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str = ""


def parse_protocols(text: str) -> tuple[str, ...]:
    """``"knn,linear"`` -> ``("knn", "linear")``; ``ValueError`` naming unknown ones."""
    from paramcrop.transfer import PROTOCOLS

    protocols = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(PROTOCOLS)}")
    return protocols


def select_runs(client, *, run_id: str | None = None, study: str | None = None, trial: int | None = None,
                best: bool = False, storage: str | None = None) -> list:
    """The MLflow runs to evaluate: ``run_id``; or the study's trial runs (only trial ``trial``, or
    only the Optuna study's best trial with ``best``). ``ValueError`` when there is none."""
    if run_id:
        return [call(client.get_run, run_id)]
    if best:
        import optuna

        from studies.runner import RUN_ATTR
        from studies.storage import open_storage

        loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
        try:
            best_trial = loaded.best_trial
        except (ValueError, RuntimeError) as exc:  # no complete trial, or a multi-objective study
            raise ValueError(f"study {study!r} has no single best trial ({exc}); use --trial N") from None
        return [call(client.get_run, best_trial.user_attrs[RUN_ATTR])]
    experiment = call(client.get_experiment_by_name, study)
    if experiment is None:
        raise ValueError(f"no MLflow experiment named {study!r} (is --tracking-uri right? `paramcrop study list`)")
    query = f"tags.`{sinks.TAG_ROLE}` = 'trial' and tags.`{sinks.TAG_STUDY}` = '{study}' and attributes.status = 'FINISHED'"
    if trial is not None:
        query += f" and tags.`{sinks.TAG_TRIAL}` = '{trial}'"
    runs = call(client.search_runs, [experiment.experiment_id], query, order_by=["attributes.start_time DESC"],
                max_results=50_000)
    latest = {}
    for run in runs:  # newest first: the first run of each trial number is the one kept
        latest.setdefault(run.data.tags.get(sinks.TAG_TRIAL), run)
    if not latest:
        which = f"trial {trial}" if trial is not None else "trial"
        raise ValueError(f"study {study!r} has no finished {which} run in MLflow")
    return sorted(latest.values(), key=lambda r: int(r.data.tags.get(sinks.TAG_TRIAL) or 0))


DRAW_KEY = "eval.draw_per_class"


def run_config(client, run):
    """The run's resolved :class:`~paramcrop.config.TrainConfig` from its ``config.yaml`` artifact; a
    run whose params lack ``eval.draw_per_class`` was logged before evaluation draws existed and
    evaluated on its dataset's own videos: its config says so (``eval.draw_per_class`` 0)."""
    import os
    import tempfile
    from pathlib import Path

    from paramcrop.config import TrainConfig

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download otherwise
    with tempfile.TemporaryDirectory() as tmp:
        path = call(client.download_artifacts, run.info.run_id, "config.yaml", tmp)
        cfg = TrainConfig.from_yaml(Path(path).read_text())
    return cfg if DRAW_KEY in run.data.params else cfg.with_overrides({DRAW_KEY: 0})


OWN_SPLIT = "own-split"
"""The name of a run's evaluation on its dataset's own validation and test videos when its own
evaluation queried fresh draws (``paramcrop eval RUN --own-split``)."""


def evaluate_own(client, runs: list, *, device: str = "auto", own_split: bool = False,
                 on_row=None) -> list[EvalRow]:
    """Recompute each run's own final evaluation (:func:`paramcrop.plan.evaluation_sets` of its config
    and data, its logged backbone) and log its per-query predictions (``predictions/<split>.csv``,
    :mod:`paramcrop.predictions`). The run's metrics are not changed: the row holds the recomputed
    ones, and a recomputed top-1 that differs from the logged value by more than one query is
    reported in ``skipped``. With ``own_split``, the evaluation is on the dataset's own validation and
    test videos instead (``eval.draw_per_class`` 0, the evaluation before draws), logged as the
    named evaluation :data:`OWN_SPLIT`: metrics ``eval/own-split/...`` at the run's last step and
    predictions ``predictions/own-split/<split>.csv``: the same runs read on both evaluations."""
    import tempfile
    from pathlib import Path

    from torch.utils.data import DataLoader

    from paramcrop.data import resolve_source
    from paramcrop.data.batches import normalize_clips
    from paramcrop.evaluation import evaluate_queries
    from paramcrop.plan import evaluation_sets, resolve_device
    from paramcrop.predictions import artifact_path, metric_name, write_split
    from paramcrop.transfer import load_backbone

    rows = []
    for run in runs:
        row = EvalRow(run.info.run_id, run.data.tags.get(sinks.TAG_TRIAL, ""), run.data.tags.get(sinks.TAG_CROP, ""))
        try:
            cfg = run_config(client, run).with_overrides({"device": device} | ({DRAW_KEY: 0} if own_split else {}))
            torch_device = resolve_device(cfg.device)
            backbone = load_backbone(f"runs:/{run.info.run_id}/{sinks.MODEL_BACKBONE}", torch_device)
        except Exception as exc:  # noqa: BLE001 - reported per run: a run without config or model
            row.error = f"cannot load the run's config or backbone: {type(exc).__name__}: {str(exc)[:300]}"
        else:
            dataset = resolve_source(cfg.data.source).with_validation(cfg.data.val_fraction)
            (bank, test), val, _ = evaluation_sets(cfg, dataset, dataset.train)
            queries = {"test": test} | ({"val": val} if val is not None else {})
            e = cfg.eval
            results = evaluate_queries(
                backbone, DataLoader(bank, batch_size=e.batch_size),
                {split: DataLoader(ds, batch_size=e.batch_size) for split, ds in queries.items()},
                device=torch_device, normalize=normalize_clips, knn_k=e.knn_k, knn_temperature=e.knn_temperature,
                linear=e.linear, retrieval=e.retrieval)
            evaluation = OWN_SPLIT if own_split else None
            with tempfile.TemporaryDirectory() as tmp:
                for split, (found, predictions) in results.items():
                    path = write_split(Path(tmp), split, queries[split].records, predictions, evaluation)
                    call(client.log_artifact, run.info.run_id, str(path), str(Path(artifact_path(split, evaluation)).parent))
                    for name, value in found.items():
                        name = metric_name(name, split, evaluation)
                        row.metrics[name] = value
                        logged = run.data.metrics.get(name)
                        if logged is not None and abs(logged - value) > 1 / len(queries[split]):
                            row.skipped[f"logged {name}"] = f"{logged:.4f}, recomputed {value:.4f}"
            if own_split:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                call(client.log_batch, run.info.run_id, metrics=[Metric(k, float(v), now, max(cfg.steps - 1, 0))
                                                                 for k, v in row.metrics.items()])
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def evaluate_runs(client, runs: list, source: str, protocols: tuple[str, ...], *, device: str = "auto",
                  finetune_steps: int | None = None, on_row=None) -> list[EvalRow]:
    """Evaluate each run's backbone on ``source`` with ``protocols`` and log the metrics (and the
    skipped-tag) into that run. A run that cannot be evaluated (no config or model logged) gets
    its row's ``error`` and the others go on. ``on_row(row)`` is called after each run."""
    from mlflow.entities import Metric, RunTag

    from paramcrop.plan import resolve_device
    from paramcrop.transfer import DownstreamDataset, eval_stride, load_backbone

    datasets: dict[tuple, DownstreamDataset] = {}
    rows = []
    for run in runs:
        row = EvalRow(run.info.run_id, run.data.tags.get(sinks.TAG_TRIAL, ""), run.data.tags.get(sinks.TAG_CROP, ""))
        try:
            overrides = {"device": device}
            if finetune_steps is not None:
                overrides["eval.finetune_steps"] = finetune_steps
            cfg = run_config(client, run).with_overrides(overrides)
            torch_device = resolve_device(cfg.device)
            backbone = load_backbone(f"runs:/{run.info.run_id}/{sinks.MODEL_BACKBONE}", torch_device)
        except Exception as exc:  # noqa: BLE001 - reported per run: a run without config or model
            row.error = f"cannot load the run's config or backbone: {type(exc).__name__}: {str(exc)[:300]}"
        else:
            key = (cfg.view.frames, cfg.view.size, eval_stride(cfg), cfg.eval.clips_per_video)
            if key not in datasets:
                datasets[key] = DownstreamDataset(source, cfg)
            result = datasets[key].evaluate(backbone, torch_device, protocols, cfg=cfg)
            row.metrics, row.skipped = result.metrics, result.skipped
            now = int(time.time() * 1000)
            call(client.log_batch, run.info.run_id,
                 metrics=[Metric(k, float(v), now, max(cfg.steps - 1, 0)) for k, v in result.metrics.items()],
                 tags=[RunTag(k, v) for k, v in result.tags().items()])
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def print_rows(rows: list[EvalRow], console) -> None:
    """The table: one line per run and dataset (a split, or a split mean), one column per metric
    (``knn_top1`` = ``eval/<dataset>/knn_top1``); then the skipped parts and the errors."""
    from rich.markup import escape
    from rich.table import Table

    def split(name: str) -> tuple[str, str]:
        parts = name.split("/")  # eval/<dataset>/<metric>; a run's own eval/[<name>/][val/]<metric>
        return "/".join(parts[1:-1]) or "test", parts[-1]

    metrics = sorted({split(k)[1] for r in rows for k in r.metrics})
    table = Table(title="evaluation")
    for column in ("run", "trial", "crop", "dataset", *metrics):
        table.add_column(column, justify="right" if column in metrics else "left", overflow="fold")
    for r in rows:
        by_dataset: dict[str, dict[str, float]] = {}
        for name, value in r.metrics.items():
            dataset, metric = split(name)
            by_dataset.setdefault(dataset, {})[metric] = value
        for dataset, values in by_dataset.items():
            table.add_row(r.run_id[:8], r.trial, r.crop, dataset,
                          *[f"{values[m]:.4f}" if m in values else "-" for m in metrics])
    console.print(table)
    for r in rows:
        for what, why in r.skipped.items():
            console.print(f"[yellow]run {r.run_id[:8]}: skipped {escape(what)}[/]: {escape(why)}", highlight=False)
        if r.error:
            console.print(f"[red]run {r.run_id[:8]}: {escape(r.error)}[/]", highlight=False)
