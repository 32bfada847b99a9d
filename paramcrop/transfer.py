"""Transfer evaluation: a pretrained backbone evaluated on downstream datasets, and loading it back.

A downstream dataset is any data source string (``paramcrop.data.sources``); its metrics are
today's evaluation metrics with the dataset's name inserted, ``eval/<name>/<metric>``
(``eval/ucf101-1/knn_top1``), while ``eval/<metric>`` stays the pretraining dataset's. Names
(:func:`dataset_name`):

| source | name |
|---|---|
| ``synthetic`` | ``synthetic`` |
| ``synthetic:variant=textures,seed=1`` | ``synthetic-textures-seed1`` (the variant's value, then ``<key><value>`` per other key, in order) |
| ``folder:DIR`` | ``folder-<last folder name of DIR>`` |
| ``ucf101:ROOT:N`` / ``hmdb51:ROOT:N`` | ``ucf101-N`` / ``hmdb51-N`` |
| ``ucf101:ROOT`` / ``hmdb51:ROOT`` | the three official splits ``ucf101-1``, ``-2``, ``-3`` and their mean as ``ucf101`` |
| ``kinetics:CSV:ROOT`` | ``kinetics-<CSV file stem>`` |

Characters other than letters, digits, ``_ . -`` become ``_``. Each split is evaluated on the run's
evaluation geometry (``view.frames`` x ``view.size``, the pretraining clip's span, ``eval.clips_per_video``)
with the protocols asked for (``knn``, ``linear``, ``retrieval``, ``finetune``). What cannot be
computed is skipped with a reason instead of failing (:attr:`DownstreamResult.skipped`, logged as
tag ``paramcrop.eval_skipped.<name>``): a split without readable train or test videos; a linear
probe with fewer than :data:`MIN_PROBE_PER_CLASS` train videos in some class or fewer than two
classes; fine-tuning with fewer than two classes or ``eval.finetune_steps`` = 0; a split mean when
a metric is missing from some split.

:func:`load_backbone` reads a logged backbone (``runs:/<run id>/backbone``) back; it is the only
place in ``paramcrop/`` that touches MLflow, imported inside the function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from paramcrop import sinks
from paramcrop.data.batches import EpochBatches, normalize_clips
from paramcrop.dataset_names import dataset_name

PROTOCOLS = ("knn", "linear", "retrieval", "finetune")
MIN_PROBE_PER_CLASS = 2
"""A linear probe needs at least this many train videos in every class (one is memorised, not probed)."""


def downstream_metric(name: str, metric: str) -> str:
    """``eval/knn_top1`` of dataset ``name`` -> ``eval/<name>/knn_top1``."""
    return f"eval/{name}/{metric.removeprefix('eval/')}"


def eval_stride(cfg) -> int:
    """The evaluation clips' frame stride: the view's frames span the pretraining clip."""
    return max(1, cfg.data.stride * cfg.data.frames // cfg.view.frames)


def default_protocols(cfg) -> tuple[str, ...]:
    """The protocols ``cfg.eval`` switches on: kNN always, linear / retrieval by their flags,
    fine-tuning when ``eval.finetune_steps`` > 0."""
    e = cfg.eval
    on = {"knn": True, "linear": e.linear, "retrieval": e.retrieval, "finetune": e.finetune_steps > 0}
    return tuple(p for p in PROTOCOLS if on[p])


@dataclass
class DownstreamResult:
    """``metrics``: ``eval/<name>/<metric>`` -> value; ``skipped``: what could not be computed ->
    why (``"<split name> linear": "..."``)."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """``paramcrop.eval_skipped.<name>``: the reasons joined by ``; `` (empty dict when none)."""
        if not self.skipped:
            return {}
        text = "; ".join(f"{what}: {why}" for what, why in self.skipped.items())
        return {f"{sinks.TAG_EVAL_SKIPPED}.{self.name}": text[:5000]}


@dataclass
class _Split:
    name: str
    classes: list[str]
    train: object | None = None  # EvalClips, or None when unusable (see reason)
    test: object | None = None
    reason: str = ""


class DownstreamDataset:
    """One downstream source, parsed and its videos scanned once (so a trainer that evaluates it
    every ``eval.every`` steps, or ``paramcrop eval`` over a study's runs, reads each file's
    header once). ``cfg``: the run's :class:`~paramcrop.config.TrainConfig` (geometry, protocol settings).

    Raises ``ValueError`` for a bad source string or a missing root; unreadable splits are kept
    and reported by :meth:`evaluate`."""

    def __init__(self, source: str, cfg, *, cache_dir: Path | str | None = None) -> None:
        from paramcrop.data import EvalClips, resolve_source
        from paramcrop.data.sources import official_splits

        self.source, self.cfg, self.name = source, cfg, dataset_name(source)
        split_sources = official_splits(source) or [source]
        geometry = (cfg.view.frames, eval_stride(cfg), cfg.view.size, cfg.eval.clips_per_video)
        self.splits: list[_Split] = []
        for split_source in split_sources:
            spec = resolve_source(split_source, cache_dir=cache_dir)
            split = _Split(dataset_name(split_source), spec.classes)
            try:
                split.train = EvalClips(spec.train, *geometry, cache_mb=cfg.data.cache_mb)
                split.test = EvalClips(spec.test, *geometry, cache_mb=cfg.data.cache_mb)
            except ValueError as exc:  # an empty list, or nothing readable in it
                split.reason = f"{'train' if split.train is None else 'test'} split: {exc}"
            self.splits.append(split)

    def evaluate(self, backbone: nn.Module, device: torch.device | str,
                 protocols: tuple[str, ...] | None = None, *, cfg=None) -> DownstreamResult:
        """The metrics of frozen (and, for ``finetune``, a fine-tuned copy of) ``backbone`` on every
        split, plus the split mean for a split-less UCF101 / HMDB51 source; ``protocols`` default
        :func:`default_protocols`. ``cfg``: another run's config of the same evaluation geometry
        (its kNN, probe and fine-tuning settings are used; default: the one given at construction).
        The backbone is not changed."""
        cfg = self.cfg if cfg is None else cfg
        protocols = default_protocols(cfg) if protocols is None else tuple(protocols)
        unknown = sorted(set(protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; valid: {', '.join(PROTOCOLS)}")
        result = DownstreamResult(self.name)
        per_split = []
        for split in self.splits:
            metrics = self._evaluate_split(split, backbone, device, protocols, cfg, result.skipped)
            per_split.append(metrics)
            result.metrics.update({downstream_metric(split.name, k): v for k, v in metrics.items()})
        if len(self.splits) > 1:
            for metric in sorted({k for m in per_split for k in m}):
                values = [m[metric] for m in per_split if metric in m]
                if len(values) == len(per_split):
                    result.metrics[downstream_metric(self.name, metric)] = sum(values) / len(values)
                else:
                    result.skipped[f"{self.name} mean {metric}"] = (
                        f"measured on {len(values)} of {len(per_split)} splits only")
        return result

    def _evaluate_split(self, split: _Split, backbone: nn.Module, device, protocols: tuple[str, ...], cfg,
                        skipped: dict[str, str]) -> dict[str, float]:
        """``eval/<metric>`` -> value on one split; reasons for what is left out go to ``skipped``."""
        from paramcrop.evaluation import evaluate

        if split.reason:
            skipped[split.name] = split.reason
            return {}
        e = cfg.eval
        counts = torch.bincount(torch.tensor([r.label for r in split.train.records]), minlength=len(split.classes))
        present = counts[counts > 0]
        linear = "linear" in protocols
        if linear and (len(present) < 2 or int(present.min()) < MIN_PROBE_PER_CLASS):
            linear = False
            few = [split.classes[i] for i in range(len(split.classes)) if 0 < counts[i] < MIN_PROBE_PER_CLASS]
            skipped[f"{split.name} linear"] = (
                f"needs >= {MIN_PROBE_PER_CLASS} train videos in each of >= 2 classes; "
                + (f"class(es) {', '.join(few)} have fewer" if few else f"{len(present)} class(es) have train videos"))
        metrics: dict[str, float] = {}
        loaders = [DataLoader(ds, batch_size=e.batch_size, num_workers=cfg.data.workers)
                   for ds in (split.train, split.test)]
        if {"knn", "retrieval"} & set(protocols) or linear:
            metrics.update(evaluate(backbone, *loaders, device=device, normalize=normalize_clips, knn_k=e.knn_k,
                                    knn_temperature=e.knn_temperature, knn="knn" in protocols, linear=linear,
                                    retrieval="retrieval" in protocols))
        if "finetune" in protocols:
            if len(present) < 2:
                skipped[f"{split.name} finetune"] = f"needs train videos of >= 2 classes, has {len(present)}"
            elif e.finetune_steps < 1:
                skipped[f"{split.name} finetune"] = "eval.finetune_steps is 0 (paramcrop eval: --finetune-steps N)"
            else:
                metrics[sinks.EVAL_FINETUNE_TOP1] = finetune_top1(
                    backbone, split.train.records, loaders[1], len(split.classes), cfg, device,
                    infos=split.train.infos)
        return metrics


def evaluate_downstream(backbone: nn.Module, source: str, cfg, device: torch.device | str,
                        protocols: tuple[str, ...] | None = None, *,
                        cache_dir: Path | str | None = None) -> DownstreamResult:
    """:meth:`DownstreamDataset.evaluate` of ``source`` in one call (parses and scans it)."""
    return DownstreamDataset(source, cfg, cache_dir=cache_dir).evaluate(backbone, device, protocols)


def finetune_top1(backbone: nn.Module, train_records, test_loader: DataLoader, num_classes: int, cfg,
                  device: torch.device | str, *, infos=None) -> float:
    """Test top-1 of a copy of ``backbone`` fine-tuned with labels for ``eval.finetune_steps`` steps
    of ``min(batch_size, videos)`` clips of ``train_records`` (the evaluation clips' geometry at
    random positions, no other augmentation) at ``eval.finetune_lr``; ``backbone`` is not changed.
    ``infos``: the records' scan when already made."""
    from paramcrop.data import TrainClips
    from paramcrop.evaluation import finetune, predict_videos

    train = TrainClips(train_records, cfg.view.frames, eval_stride(cfg), cfg.view.size, seed=cfg.seed,
                       labelled=True, infos=infos)
    batches = DataLoader(train, batch_sampler=EpochBatches(len(train), min(cfg.batch_size, len(train)), cfg.seed),
                         num_workers=cfg.data.workers, generator=torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)  # the classifier's initial weights
    model = finetune(backbone, iter(batches), num_classes=num_classes, steps=cfg.eval.finetune_steps, device=device,
                     normalize=normalize_clips, lr=cfg.eval.finetune_lr, weight_decay=cfg.optim.weight_decay)
    pred, labels = predict_videos(model, test_loader, device=device, normalize=normalize_clips)
    return (pred == labels).float().mean().item()


def load_backbone(model_uri: str, device: torch.device | str = "cpu") -> nn.Module:
    """The backbone logged by a run (``runs:/<run id>/backbone``, ``models:/<name>/<version>``, ...)
    as an ``nn.Module`` in eval mode on ``device``, via ``mlflow.pytorch.load_model`` on the
    current tracking URI (``$MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``)."""
    import mlflow.pytorch  # lazily: paramcrop/ works without MLflow installed

    return mlflow.pytorch.load_model(model_uri, map_location=torch.device(device)).eval()
