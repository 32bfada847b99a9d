"""Per-query predictions of an evaluation: what each query video got, so analyses can resample it.

Every final evaluation writes, per query split, one CSV logged as the run artifact
``predictions/<split>.csv`` (:func:`artifact_path`): ``test`` for the metrics ``eval/<metric>``,
``val`` for ``eval/val/<metric>``. A named evaluation of the same run (``paramcrop eval RUN
--own-split``: ``eval/own-split/<metric>``, ``eval/own-split/val/<metric>``) writes
``predictions/<name>/<split>.csv``. One row per query video, columns :data:`COLUMNS`:

- ``video``: the video's path relative to its dataset's folder (``test/circle_right/0024.mp4``);
- ``label``: its class index;
- ``knn``: the weighted-kNN prediction (absent when the run evaluated no kNN);
- ``linear``: the linear probe's prediction (absent when the run evaluated no linear probe).

A metric's value is the mean of ``prediction == label`` over the rows (:func:`source_of` names the
file and column of a metric), so the per-query file and the logged metric agree exactly.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

PREDICTIONS_DIR = "predictions"
COLUMNS = ("video", "label", "knn", "linear")
METRIC_COLUMNS = {"knn_top1": "knn", "linear_top1": "linear"}
"""The top-1 metrics that per-query predictions can recompute, and their prediction column."""
SPLIT_PREFIXES = {"val": "eval/val/", "test": "eval/"}
"""Query split -> the prefix of its metric names."""


def artifact_path(split: str, evaluation: str | None = None) -> str:
    """The run artifact of ``split``'s predictions, ``predictions/test.csv`` (of a named
    ``evaluation``: ``predictions/<evaluation>/test.csv``)."""
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_PREFIXES)}, got {split!r}")
    return f"{PREDICTIONS_DIR}/{evaluation + '/' if evaluation else ''}{split}.csv"


def metric_name(metric: str, split: str, evaluation: str | None = None) -> str:
    """``eval/knn_top1`` of query ``split`` (and named ``evaluation``) -> its logged name:
    ``eval/val/knn_top1``, ``eval/own-split/knn_top1``, ``eval/own-split/val/knn_top1``."""
    from paramcrop.sinks import val_metric

    name = val_metric(metric) if split == "val" else metric
    return f"eval/{evaluation}/{name.removeprefix('eval/')}" if evaluation else name


def source_of(metric: str) -> tuple[str, str] | None:
    """``(artifact path, column)`` holding ``metric``'s per-query predictions, e.g.
    ``eval/val/knn_top1`` -> ``("predictions/val.csv", "knn")``, ``eval/own-split/knn_top1`` ->
    ``("predictions/own-split/test.csv", "knn")``; ``None`` for a metric they do not give
    (retrieval, fine-tuning, training metrics)."""
    parts = metric.split("/")
    if len(parts) < 2 or parts[0] != "eval" or parts[-1] not in METRIC_COLUMNS:
        return None
    middle = parts[1:-1]  # [], [val], [name], [name, val]
    split = "val" if middle[-1:] == ["val"] else "test"
    names = middle[:-1] if split == "val" else middle
    if len(names) > 1:
        return None
    return artifact_path(split, names[0] if names else None), METRIC_COLUMNS[parts[-1]]


def write_split(run_dir: Path, split: str, records: Sequence, predictions: Mapping[str, Sequence[int]],
                evaluation: str | None = None) -> Path:
    """Write ``split``'s predictions for the query videos ``records`` (:class:`~paramcrop.data.VideoRecord`,
    in the order of ``predictions``' rows) to ``run_dir / artifact_path(split, evaluation)``; returns that path."""
    from paramcrop.data.sources import dataset_root

    root = dataset_root(list(records))
    return write_predictions(run_dir / artifact_path(split, evaluation), [r.path.absolute().relative_to(root).as_posix()
                                                               for r in records],
                             [r.label for r in records], {k: [int(v) for v in values] for k, values in predictions.items()})


def write_predictions(path: Path, videos: Sequence[str], labels: Sequence[int],
                      predictions: Mapping[str, Sequence[int]]) -> Path:
    """Write one split's predictions to ``path`` (columns :data:`COLUMNS`, those of ``predictions``
    only: ``{"knn": ..., "linear": ...}``, each as long as ``videos``). Returns ``path``."""
    unknown = set(predictions) - set(COLUMNS[2:])
    if unknown:
        raise ValueError(f"unknown prediction columns {sorted(unknown)}; valid: {', '.join(COLUMNS[2:])}")
    for name, values in [("labels", labels), *predictions.items()]:
        if len(values) != len(videos):
            raise ValueError(f"{name}: {len(values)} values for {len(videos)} videos")
    columns = [c for c in COLUMNS[2:] if c in predictions]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "label", *columns])
        for i, video in enumerate(videos):
            writer.writerow([video, int(labels[i]), *(int(predictions[c][i]) for c in columns)])
    return path
