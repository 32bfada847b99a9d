"""What a run writes beside its checkpoint and logs to its sink: the resolved config, the dataset
inputs, the trajectory and skipped-videos tables, crop images and snapshots, the finished models.

Each function takes the run folder and the :class:`~paramcrop.sinks.MetricsSink` it logs to.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor, nn

from paramcrop import files, sinks
from paramcrop.config import TrainConfig

TRAJECTORY_NAME = "trajectory.csv"
SKIPPED_NAME = "skipped_videos.csv"
CONFIG_NAME = "config.yaml"


def log_config(sink: sinks.MetricsSink, run_dir: Path, cfg: TrainConfig) -> None:
    """``cfg``'s flattened params, and ``config.yaml`` (every default spelled out) as an artifact."""
    sink.log_params(cfg.flatten())
    path = run_dir / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_yaml(resolved=True))
    sink.log_artifact(path)


DATA_DIGEST = "data.digest"
"""The param naming the videos a run read: :func:`~paramcrop.data.sources.dataset_digest` of every
split together. ``data.source`` alone does not say it (``synthetic`` changed design once), so
analyses, which group runs by their params, never pool runs on different data."""


def log_datasets(sink: sinks.MetricsSink, source: str, splits: list[tuple[str, list]]) -> None:
    """Each ``(context, records)`` split of data source ``source`` as a dataset input of the run, and
    the param :data:`DATA_DIGEST` of all of them."""
    from paramcrop.data.sources import dataset_digest, dataset_root

    for context, records in splits:
        sink.log_dataset(source, str(dataset_root(records)), dataset_digest(records), context, len(records))
    sink.log_params({DATA_DIGEST: dataset_digest([r for _, records in splits for r in records])})  # disjoint splits


def read_trajectory(run_dir: Path, before: int) -> list[dict[str, float]]:
    """The rows of ``trajectory.csv`` with a step below ``before`` (none without the file)."""
    path = run_dir / TRAJECTORY_NAME
    if before == 0 or not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
    return [{**row, "step": int(row["step"])} for row in rows if row["step"] < before]


def write_trajectory(sink: sinks.MetricsSink, run_dir: Path, history: list[dict[str, float]]) -> None:
    """``history`` (one row per logged train step) as ``trajectory.csv``, columns ``step`` then sorted."""
    path = run_dir / TRAJECTORY_NAME
    names = ["step", *sorted({k for row in history for k in row} - {"step"})]
    with files.atomic(path, "w") as fh:  # a resume reads the rows before its checkpoint: never a torn file
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        writer.writerows(history)
    sink.log_artifact(path)


def report_skipped(sink: sinks.MetricsSink, run_dir: Path, rows: list[tuple[str, Path, str]], step: int) -> None:
    """``(split, path, reason)`` rows as ``data/skipped_videos`` at ``step`` and as ``skipped_videos.csv``,
    when the count changed since the file was written."""
    path = run_dir / SKIPPED_NAME
    if not rows or (path.exists() and path.read_text().count("\n") == len(rows) + 1):
        return
    sink.log_metrics({sinks.DATA_SKIPPED: float(len(rows))}, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "reason"])
        writer.writerows((split, str(p), reason) for split, p, reason in rows)
    sink.log_artifact(path)


def save_crop_images(sink: sinks.MetricsSink, run_dir: Path, clips: Tensor, views, step: int, title: str) -> None:
    """The first clip of ``clips (B, 3, T, H, W)`` with its two views' cubes and crops as ``crops/step_<step>.png``."""
    from paramcrop.visualize import save_crop_strip

    path = run_dir / "crops" / f"step_{step:06d}.png"
    with files.writing(path):
        save_crop_strip(clips[0], views.cubes1[0].detach(), views.cubes2[0].detach(), views.x1[0].detach(),
                        views.x2[0].detach(), path, title=title)
    sink.log_artifact(path, "crops")


def save_snapshot(sink: sinks.MetricsSink, run_dir: Path, step: int, cfg: TrainConfig, crop: nn.Module) -> None:
    """The learned crop's state before ``step``, for the ``replay`` crop (:mod:`paramcrop.crops.replay`)."""
    from paramcrop.crops.replay import SNAPSHOT_DIR, save_snapshot as save

    sink.log_artifact(save(run_dir, step, cfg.resolved()["crop"], crop), SNAPSHOT_DIR)


def log_models(sink: sinks.MetricsSink, run_dir: Path, cfg: TrainConfig, backbone: nn.Module, crop: nn.Module) -> None:
    """The finished run's backbone as the sink's model ``backbone`` (a CPU copy in eval mode,
    input example one zero clip ``(1, 3, view.frames, view.size, view.size)``); a learned
    crop's generator as the artifact folder ``generator/``: ``generator.pt`` (its state_dict)
    and ``crop.yaml`` (method, view shape and keys), enough to rebuild it with
    ``create_crop(method, shape, **keys)`` and replay its crops."""
    import copy

    import yaml

    view = cfg.view
    copied = copy.deepcopy(backbone).cpu().eval()
    sink.log_model(sinks.MODEL_BACKBONE, copied, torch.zeros(1, 3, view.frames, view.size, view.size))
    if next(crop.parameters(), None) is None:  # a crop that learns nothing
        return
    folder = run_dir / sinks.ARTIFACT_GENERATOR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in crop.state_dict().items()}, folder / "generator.pt")
    name, keys = cfg.component("crop")
    (folder / "crop.yaml").write_text(yaml.safe_dump(
        {"method": name, "shape": [view.frames, view.size, view.size], "keys": keys}, sort_keys=False))
    for file in ("generator.pt", "crop.yaml"):
        sink.log_artifact(folder / file, sinks.ARTIFACT_GENERATOR)
