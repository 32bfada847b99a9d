"""Resolving a run: the config with every run-time choice filled in, and the components built from it.

:func:`resolve` runs once before the :class:`~paramcrop.train.Trainer` (so bad input fails before
anything is tracked). It fills in, in one :meth:`~paramcrop.config.TrainConfig.with_overrides`, what
the config leaves to the run: ``data.workers: auto`` (:func:`resolve_workers`), the data source's
augmentation defaults where ``augment`` sets none (synthetic: no flip), ``crop.steps`` for a crop
scheduled over the run, and ``compile: false`` when ``$PARAMCROP_COMPILE`` is ``0``; the params and
``config.yaml`` of the run record that resolved config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from paramcrop.augment import ClipAugment
from paramcrop.backbones import create_backbone
from paramcrop.checkpoint import seed_everything
from paramcrop.config import AUTO, ONLINE_DRAW_PER_CLASS, TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.crops import CROPS, create_crop
from paramcrop.crops.base import CropMethod
from paramcrop.data import EvalClips, TrainClips, resolve_source
from paramcrop.data.records import DatasetSpec, VideoRecord
from paramcrop.data.sources import evaluation_draws
from paramcrop.data.datasets import check_window_fits
from paramcrop.distributed import DistInfo, init_from_env
from paramcrop.frameworks import create_framework
from paramcrop.frameworks.base import Framework
from paramcrop.heads import HeadSpec
from paramcrop.losses import ORDER_LOSS, REGION_LOSS, RegionContrast, TemporalOrder
from paramcrop.runtime import tune_allocator
from paramcrop.transfer import DownstreamDataset, eval_stride

COMPILE_ENV = "PARAMCROP_COMPILE"  # "0": no torch.compile whatever the config says (tests, debugging)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU) or a torch device name; ``ConfigError`` for CUDA without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available: use --device cpu or auto")
    return device


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """The DataLoader worker count for ``data.workers``: an int is used as given; ``"auto"`` is
    ``min(8, cores // GPUs)`` on CUDA (each GPU's process gets its share of the cores) and on CPU
    ``min(4, cores - 1)`` when there are more than 2 cores, else 0 (on 1-2 cores workers would
    take cores from the training step itself), ``cores`` being ``os.cpu_count()``."""
    if setting != AUTO:
        return int(setting)
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores // max(1, torch.cuda.device_count()))
    return min(4, cores - 1) if cores > 2 else 0


@dataclass
class RunPlan:
    """A resolved config and the components of its run, on ``device``.

    ``eval_sets``: the memory bank (the training videos) and the test queries, as evaluation clips;
    ``val_set``: the validation queries (None without a validation split); on a ``synthetic`` source
    with ``eval.draw_per_class`` > 0 both query sets are its fresh evaluation draws, and
    ``online_per_class`` the queries per class an online evaluation uses (None: all); ``losses``: the switched-on
    auxiliary losses by metric name, ``loss_weights`` their weights; ``autocast``: whether steps
    run under bf16 autocast.
    """

    cfg: TrainConfig
    device: torch.device
    dist: DistInfo
    autocast: bool
    backbone: nn.Module  # the framework's online backbone: what is evaluated and transfers
    train_set: TrainClips
    eval_sets: list[EvalClips]
    val_set: EvalClips | None
    online_per_class: int | None
    num_classes: int
    downstream: list[DownstreamDataset]  # one per eval.datasets source
    crop: CropMethod
    augment: ClipAugment
    framework: Framework
    losses: nn.ModuleDict
    loss_weights: dict[str, float]

    def __post_init__(self) -> None:
        if len(self.eval_sets) != 2:
            raise ValueError(f"eval_sets must be (memory bank, test split), got {len(self.eval_sets)} sets")
        if set(self.losses) - set(self.loss_weights):
            raise ValueError(f"losses without a weight: {sorted(set(self.losses) - set(self.loss_weights))}")
        if self.backbone is not self.framework.backbone:
            raise ValueError("backbone must be the framework's own online backbone")


def evaluation_sets(cfg: TrainConfig, dataset: DatasetSpec, bank: list[VideoRecord], infos=None
                    ) -> tuple[list[EvalClips], EvalClips | None, int | None]:
    """The evaluation clips of a run over ``dataset`` (validation carved): ``([memory bank, test
    queries], validation queries or None, online_per_class)``. The bank is ``bank`` (the pretraining
    videos; ``infos``: their scan when already made). On a ``synthetic`` source with
    ``eval.draw_per_class`` > 0 the queries are its fresh evaluation draws (their windows decoded once
    and kept beside them) and an online evaluation uses :data:`ONLINE_DRAW_PER_CLASS` of them per
    class; otherwise the dataset's own test and validation videos, all of them."""
    view = (cfg.view.frames, eval_stride(cfg), cfg.view.size, cfg.eval.clips_per_video)  # a whole raw clip's span
    cache = cfg.data.cache_mb
    bank_set = EvalClips(bank, *view, infos=infos, cache_mb=cache)
    draws = evaluation_draws(cfg.data.source, cfg.eval.draw_per_class)  # disjoint from all else
    if draws is None:
        val = EvalClips(dataset.val, *view, cache_mb=cache) if dataset.val else None  # never trained on
        return [bank_set, EvalClips(dataset.test, *view, cache_mb=cache)], val, None
    val = EvalClips(draws.val, *view, persist=draws.folder) if dataset.val else None
    return [bank_set, EvalClips(draws.test, *view, persist=draws.folder)], val, ONLINE_DRAW_PER_CLASS


def resolve(cfg: TrainConfig) -> RunPlan:
    """Resolve ``cfg`` (see the module docstring) and build its components. Draws, from ``cfg.seed``
    (seeded here): the backbone's, then the crop's, the framework head's and the auxiliary losses'
    initial weights. Under torchrun the process group is joined here and each rank builds the same weights."""
    tune_allocator()  # large blocks reused, not refaulted each step (paramcrop.runtime)
    device = resolve_device(cfg.device)
    dist = init_from_env(device.type)  # a single process unless launched by torchrun
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    autocast = (cfg.precision == "bf16") or (cfg.precision == "auto" and device.type == "cuda")
    overrides: dict[str, object] = {}
    if cfg.data.workers == AUTO:
        overrides["data.workers"] = resolve_workers(cfg.data.workers, device)
    seed_everything(cfg.seed)

    backbone_name, backbone_kw = cfg.component("backbone")
    backbone = create_backbone(backbone_name, **backbone_kw)
    backbone.check_input(cfg.view.frames, cfg.view.size)
    crop_name, crop_kw = cfg.component("crop")
    if CROPS.get(crop_name).uses_run_steps(crop_kw):  # a scheduled crop spans the run
        overrides["crop.steps"] = cfg.steps
    with torch.random.fork_rng(devices=[]):  # a bad crop value fails now, not after the data and draws are built
        create_crop(crop_name, (cfg.view.frames, cfg.view.size, cfg.view.size),
                    **{**crop_kw, **({"steps": cfg.steps} if "crop.steps" in overrides else {})})

    dataset = resolve_source(cfg.data.source).with_validation(cfg.data.val_fraction)  # val: held out of all else
    overrides.update({f"augment.{k}": v for k, v in dataset.augment_defaults.items() if k not in cfg.augment})
    if cfg.compile and os.environ.get(COMPILE_ENV) == "0":
        overrides["compile"] = False
    if overrides:
        cfg = cfg.with_overrides(overrides)

    check_window_fits(dataset.train, cfg.data.frames, cfg.data.stride)  # refuse a clip longer than every video
    cache = cfg.data.cache_mb
    train_set = TrainClips(dataset.train, cfg.data.frames, cfg.data.stride, cfg.data.size, seed=cfg.seed,
                           cache_mb=cache)
    eval_sets, val_set, online_per_class = evaluation_sets(cfg, dataset, train_set.records, train_set.infos)
    downstream = [DownstreamDataset(source, cfg) for source in cfg.eval.datasets]  # scanned once

    crop_name, crop_kw = cfg.component("crop")
    crop = create_crop(crop_name, (cfg.view.frames, cfg.view.size, cfg.view.size), **crop_kw).to(device)
    augment = ClipAugment(**cfg.augment)
    if cfg.compile:
        crop.fuse()
        augment.fuse()
    fw_name, fw_kw = cfg.component("framework")
    framework = create_framework(fw_name, backbone, HeadSpec(*cfg.component("head")), **fw_kw).to(device)
    obj = cfg.losses
    losses = nn.ModuleDict()
    if obj.region > 0:
        losses[REGION_LOSS] = RegionContrast(backbone.feature_dim, temperature=obj.region_temperature)
    if obj.order > 0:
        losses[ORDER_LOSS] = TemporalOrder(backbone.feature_dim, bins=obj.order_bins)
    losses.to(device)
    return RunPlan(cfg=cfg, device=device, dist=dist, autocast=autocast, backbone=backbone, train_set=train_set,
                   eval_sets=eval_sets, val_set=val_set, online_per_class=online_per_class, num_classes=len(dataset.classes), downstream=downstream,
                   crop=crop, augment=augment, framework=framework, losses=losses,
                   loss_weights={REGION_LOSS: obj.region, ORDER_LOSS: obj.order})
