"""One self-supervised pretraining run: crop -> augment -> framework (+ auxiliary losses), evaluated on frozen features.

The loop reports to a :class:`~paramcrop.sinks.MetricsSink` and knows nothing of MLflow or
Optuna. With a learned crop, one backward pass serves both sides: the backbone's optimiser
descends the loss, and the generator's optimiser steps on gradients that the reversal layer
has already negated and scaled by lambda, so it ascends the same loss. The generator's Adam
would cancel that scale, so its learning rate is ``optim.generator_lr * lambda(step)`` (times the
factor of ``optim.generator_schedule``): lambda sets the adversary's step size (SGD,
``optim.generator_optimizer: sgd``, keeps the scale: its rate is not multiplied by lambda). A learned
crop's step metrics include its diagnostics (:data:`paramcrop.sinks.GENERATOR_METRICS`); a crop that
chooses views by the model (``hardest``) scores them through :meth:`Trainer.score_pairs`.

The framework also receives each view's augmentation vector (cube, flip, relative shift), as the
projection head's ``augmentation_inputs`` asks for it (the CATE head; the MLP head takes none). The loss is the
framework's loss plus the switched-on auxiliary losses (:mod:`paramcrop.losses`) times their
weights; ``train/loss`` logs that total, ``train/region_loss`` / ``train/order_loss`` each term
unweighted. Objectives that are off cost nothing.
"""
from __future__ import annotations

import csv
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from paramcrop import sinks
from paramcrop.augment import AugmentParams, ClipAugment
from paramcrop.config import AUTO, ConfigError, TrainConfig
from paramcrop.schedules import warmup_cosine
from paramcrop.crops.base import CropMethod, Views, by_parts
from paramcrop.distributed import DistInfo, average_gradients, init_from_env, shard
from paramcrop.frameworks.base import pool
from paramcrop.geometry import cube_spread, view_disparity
from paramcrop.heads import HeadSpec
from paramcrop.losses import ORDER_LOSS, REGION_LOSS, RegionContrast, TemporalOrder, global_view
from paramcrop.runtime import tune_allocator

# the Kinetics statistics that torchvision's video models use
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)
CHECKPOINT_NAME = "checkpoint.pt"
COMPILE_ENV = "PARAMCROP_COMPILE"  # "0": no torch.compile whatever the config says (tests, debugging)
RANK_RNG_NAME = "rng-rank{rank}.pt"  # rank r > 0's RNG state at the checkpoint (rank 0's is in the checkpoint)
TRAJECTORY_NAME = "trajectory.csv"
SKIPPED_NAME = "skipped_videos.csv"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops instead of training on garbage."""


@dataclass
class TrainResult:
    """What a finished run returns: its last metrics, the final evaluation and where its files are."""

    steps: int
    seconds: float
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    run_dir: Path
    skipped_videos: list[tuple[str, Path, str]] = field(default_factory=list)  # (split, path, reason)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available: use --device cpu or auto")
    return device


PHASE_PREFIX = "paramcrop:"


def phase(name: str) -> torch.profiler.record_function:
    """A ``torch.profiler`` region ``paramcrop:NAME`` around one phase of a step (``benchmarks/profile_step.py``
    breaks a step down by them); a few microseconds when no profiler runs."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of DDP rank ``rank``'s random stream (cubes, ParamCrop noise, augmentation draws):
    ``seed`` itself on rank 0 (a single process draws what it always drew), on rank r > 0 a 63-bit
    number from ``numpy.random.SeedSequence([seed, r])``, so every rank draws its own views and
    the run stays reproducible from ``(seed, world_size)``."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**63, rank]).generate_state(1, np.uint64)[0] >> 1)


def rng_state() -> dict[str, Tensor | list[Tensor]]:
    """This process's torch, numpy, Python (and CUDA) RNG states, as tensors (``weights_only`` loads them)."""
    state = {"rng_torch": torch.get_rng_state(),
             "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "rng_python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["rng_torch"].cpu())
    np.random.set_state(("MT19937", state["rng_numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["rng_python"]), None))
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])


def to_input(x: Tensor) -> Tensor:
    """Float clips on the 0-1 scale ``(B, 3, T, H, W)`` -> normalised backbone input."""
    mean = x.new_tensor(MEAN).view(1, 3, 1, 1, 1)
    std = x.new_tensor(STD).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def normalize_clips(x: Tensor) -> Tensor:
    """uint8/float clips on the 0-255 scale -> normalised backbone input (used for evaluation)."""
    return to_input(x.float() / 255.0)


def two_views(crop: CropMethod, augment: ClipAugment, clips: Tensor, step: int
              ) -> tuple[Views, tuple[Tensor, AugmentParams], tuple[Tensor, AugmentParams]]:
    """The crop's two views of raw ``clips (B, 3, T, H, W)``, then each view augmented on the 0-1 scale:
    ``(views, (x1, aug1), (x2, aug2))``, ``x1, x2 (B, 3, t, h, w)``. Draws, in order: the cubes, the
    two views' augmentation parameters, then the crop's :meth:`~CropMethod.grad_subset`. With a subset
    (``crop.grad_fraction`` < 1) the subset's clips and the others are cut and augmented as two batches
    (:func:`~paramcrop.crops.base.by_parts`: the crop and augmentation backward run on the subset
    only), with the values of one batch to float rounding."""
    with phase("crop"), torch.autocast(clips.device.type, enabled=False):
        cubes1, cubes2 = crop.cubes(clips, step)
    params = [augment.sample(clips.shape[0], crop.size[1], clips.device) for _ in range(2)]
    subset = crop.grad_subset(clips.shape[0], clips.device)

    def cut_and_augment(rows: Tensor | None, c1: Tensor, c2: Tensor) -> tuple[Tensor, ...]:
        with phase("crop"):
            v1, v2 = crop.cut(clips if rows is None else clips[rows], c1, c2)
        with phase("augment"):
            return v1, v2, augment.apply(v1 / 255.0, params[0], rows), augment.apply(v2 / 255.0, params[1], rows)

    if subset is None:
        x1, x2, a1, a2 = cut_and_augment(None, cubes1, cubes2)
    else:
        x1, x2, a1, a2 = by_parts(cut_and_augment, subset, cubes1, cubes2)
    return Views(x1, x2, cubes1, cubes2, crop.metrics()), (a1, params[0]), (a2, params[1])


class EpochBatches(Sampler[list[int]]):
    """Endless shuffled batches, reproducible from ``(seed, step)``: epoch ``e`` uses the
    permutation seeded by ``(seed, e)``, so a resumed run sees exactly the batches it would
    have seen (no decoding of skipped batches). Under torchrun, ``batch_size`` is the global
    batch and each rank gets its contiguous slice."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0,
                 dist_info: DistInfo = DistInfo()) -> None:
        if n < batch_size:
            raise ConfigError(
                f"the training set has {n} readable videos, fewer than the global batch of {batch_size}: lower "
                f"batch_size"
            )
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step
        self.per_epoch = n // batch_size
        self.dist_info = dist_info

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, offset = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for b in range(offset, self.per_epoch):
                batch = [epoch * self.n + int(i) for i in perm[b * self.batch_size:(b + 1) * self.batch_size]]
                yield shard(batch, self.dist_info)  # this rank's slice of the global batch
                step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for its own len()
        return 2**31


class Trainer:
    """Builds every component of a run from its config (so bad input fails here, before anything
    is tracked), then :meth:`fit` runs the loop and reports to a sink.

    ``on_eval(step, metrics)`` is called after each evaluation (a study's pruner hooks in here
    and may raise to stop); ``progress`` shows a rich progress bar. ``stop``, when set, is checked
    at every step boundary: once its ``requested`` is truthy the trainer writes a checkpoint there
    and calls ``stop.check()``, which raises (``studies.tracking.GracefulStop`` on SIGINT/SIGTERM).

    Step convention (every metric): a value is logged at the 0-based index of the last training
    step completed when it was measured: step ``s``'s train and view metrics at ``s`` (``train/lr``
    is the rate step ``s`` used), an evaluation after ``s + 1`` steps at ``s`` (the final one at
    ``steps - 1``), ``data/skipped_videos`` likewise (at 0 before the first step).
    """

    stop = None

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, progress: bool = True,
                 on_eval: Callable[[int, dict[str, float]], None] | None = None) -> None:
        from paramcrop.backbones import create_backbone
        from paramcrop.crops import CROPS, create_crop
        from paramcrop.data import EvalClips, TrainClips, resolve_source
        from paramcrop.data.datasets import check_window_fits
        from paramcrop.frameworks import create_framework
        from paramcrop.transfer import DownstreamDataset, eval_stride

        tune_allocator()  # large blocks reused, not refaulted each step (paramcrop.runtime)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.sink: sinks.MetricsSink = sinks.MemorySink()
        self.progress, self.on_eval = progress, on_eval
        self.device = resolve_device(cfg.device)
        self.dist = init_from_env(self.device.type)  # a single process unless launched by torchrun
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.data.workers == AUTO:  # resolved once: the params and config.yaml record the count used
            self.cfg = cfg = cfg.with_overrides({"data.workers": resolve_workers(cfg.data.workers, self.device)})
        self.autocast = (cfg.precision == "bf16") or (cfg.precision == "auto" and self.device.type == "cuda")
        seed_everything(cfg.seed)

        backbone_name, backbone_kw = cfg.component("backbone")
        backbone = create_backbone(backbone_name, **backbone_kw)
        backbone.check_input(cfg.view.frames, cfg.view.size)

        dataset = resolve_source(cfg.data.source).with_validation(cfg.data.val_fraction)  # val: held out of all else
        # the source's own augmentation defaults (synthetic: no flip) where the config sets none: the
        # params and config.yaml of the run then record the values used
        source_defaults = {f"augment.{k}": v for k, v in dataset.augment_defaults.items() if k not in cfg.augment}
        if source_defaults:
            self.cfg = cfg = cfg.with_overrides(source_defaults)
        check_window_fits(dataset.train, cfg.data.frames, cfg.data.stride)  # refuse a clip longer than every video
        cache = cfg.data.cache_mb
        self.train_set = TrainClips(dataset.train, cfg.data.frames, cfg.data.stride, cfg.data.size, seed=cfg.seed,
                                    cache_mb=cache)
        self.eval_stride = eval_stride(cfg)  # span of a whole raw clip
        view = (cfg.view.frames, self.eval_stride, cfg.view.size, cfg.eval.clips_per_video)
        self.eval_sets = [EvalClips(self.train_set.records, *view, infos=self.train_set.infos, cache_mb=cache),
                          EvalClips(dataset.test, *view, cache_mb=cache)]  # the first: scanned once
        self.val_set = EvalClips(dataset.val, *view, cache_mb=cache) if dataset.val else None  # never trained on
        self.num_classes = len(dataset.classes)
        self.downstream = [DownstreamDataset(source, cfg) for source in cfg.eval.datasets]  # scanned once

        crop_name, crop_kw = cfg.component("crop")
        if CROPS.get(crop_name).uses_run_steps(crop_kw):  # a scheduled crop
            self.cfg = cfg = cfg.with_overrides({"crop.steps": cfg.steps})  # spans the run, recorded as crop.steps
            crop_kw["steps"] = cfg.steps
        self.crop = create_crop(crop_name, (cfg.view.frames, cfg.view.size, cfg.view.size), **crop_kw).to(self.device)
        self.augment = ClipAugment(**cfg.augment)
        if cfg.compile and os.environ.get(COMPILE_ENV) == "0":  # recorded as used
            self.cfg = cfg = cfg.with_overrides({"compile": False})
        if cfg.compile:
            self.crop.fuse()
            self.augment.fuse()
        fw_name, fw_kw = cfg.component("framework")
        self.framework = create_framework(fw_name, backbone, HeadSpec(*cfg.component("head")), **fw_kw).to(self.device)
        self.crop.bind_scorer(self.score_pairs)  # the model's per-pair loss, for crops that choose by it
        obj = cfg.losses
        self.losses = nn.ModuleDict()  # the switched-on extra loss terms, by metric name
        if obj.region > 0:
            self.losses[REGION_LOSS] = RegionContrast(backbone.feature_dim, temperature=obj.region_temperature)
        if obj.order > 0:
            self.losses[ORDER_LOSS] = TemporalOrder(backbone.feature_dim, bins=obj.order_bins)
        self.losses.to(self.device)
        self.loss_weights = {REGION_LOSS: obj.region, ORDER_LOSS: obj.order}
        # Under torchrun the framework is wrapped in DDP; the generator and the auxiliary losses' small
        # heads have their gradients averaged explicitly (the generator has none while lambda = 0,
        # which DDP's reducer does not allow).
        self.model: nn.Module = self.framework
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.framework, device_ids=device_ids)

        params = [p for m in (self.framework, self.losses) for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        o = cfg.optim  # the learned crop's update rule and its schedule
        self.adversary = self.crop.adversary(o.generator_lr, optimizer=o.generator_optimizer,
                                             schedule=o.generator_schedule,
                                             warmup_steps=o.generator_warmup_steps, total_steps=cfg.steps,
                                             min_lr_ratio=o.min_lr_ratio)
        self.gen_optimizer = self.adversary.optimizer  # None for crops that learn nothing
        self.step = 0
        self.history: list[dict[str, float]] = []  # the trajectory rows (logged train steps) so far
        if self.dist.rank:  # every rank built the same weights from cfg.seed; from here each draws its own
            seed_everything(rank_seed(cfg.seed, self.dist.rank))

    # --- schedule ------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        return warmup_cosine(step, o.warmup_steps, self.cfg.steps, o.min_lr_ratio)

    # --- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "framework": self.framework.state_dict(),
            "losses": self.losses.state_dict(),
            "crop": self.crop.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **rng_state(),  # rank 0's; the other ranks' are in their RANK_RNG_NAME files
        }
        if self.gen_optimizer is not None:
            state["gen_optimizer"] = self.gen_optimizer.state_dict()
        return state

    def checkpoint(self) -> None:
        """What a resume needs, at a step boundary, on every rank. Rank 0: ``trajectory.csv``, the
        metrics queued so far flushed to the sink (so a kill loses no logged step), then the
        checkpoint (its step says which trajectory rows and metrics count). Rank r > 0: its own
        RNG state in ``rng-rank<r>.pt``, tagged with the step."""
        if self.dist.is_main:
            self._write_trajectory(self.history)
            self.sink.flush(block=False)
            self.save_checkpoint()
        else:
            path = self.run_dir / RANK_RNG_NAME.format(rank=self.dist.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"step": self.step, **rng_state()}, tmp)
            tmp.replace(path)

    def save_checkpoint(self) -> Path:
        """Write atomically (temp file + rename): a crash never leaves a torn checkpoint."""
        path = self.run_dir / CHECKPOINT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint; ``weights_only=True``: loading never executes code."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.framework.load_state_dict(state["framework"])
        self.losses.load_state_dict(state["losses" if "losses" in state else "objectives"])  # or pre-rename
        self.crop.load_state_dict(state["crop"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.gen_optimizer is not None:
            self.gen_optimizer.load_state_dict(state["gen_optimizer"])
        self.step = int(state["step"])
        if self.dist.is_main:
            set_rng_state(state)
            return
        # rank r > 0: its own stream as saved at this step; a rank without one (the world grew, or
        # it died before writing) starts a fresh stream seeded from (seed, step, rank)
        own = self.run_dir / RANK_RNG_NAME.format(rank=self.dist.rank)
        rank_state = torch.load(own, map_location="cpu", weights_only=True) if own.exists() else None
        if rank_state is not None and int(rank_state["step"]) == self.step:
            set_rng_state(rank_state)
        else:
            seed_everything(rank_seed(self.cfg.seed * 1_000_003 + self.step, self.dist.rank))

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, final: bool = True) -> dict[str, float]:
        """The evaluation metrics of the backbone now (:func:`paramcrop.evaluation.evaluate`): the
        test split's as ``eval/<metric>`` and, with a validation split, the validation videos'
        as ``eval/val/<metric>``, both against the same memory bank (the remaining training videos;
        its features extracted once for both). Plus
        ``eval/finetune_top1`` when ``final`` and ``eval.finetune_steps`` > 0, plus each of
        ``eval.datasets``' ``eval/<name>/...`` (:mod:`paramcrop.transfer`) when ``final`` or
        ``eval.online_datasets``, its skipped parts as a tag. Runs on a forked
        RNG: evaluating never changes the training's random stream, so ``eval.every`` changes no
        training result."""
        from paramcrop.evaluation import extract_features, feature_metrics

        e = self.cfg.eval
        loaders = [DataLoader(ds, batch_size=e.batch_size, num_workers=self.cfg.data.workers) for ds in self.eval_sets]
        splits = [(loaders[1], lambda name: name)]
        if self.val_set is not None:
            splits.append((DataLoader(self.val_set, batch_size=e.batch_size, num_workers=self.cfg.data.workers),
                           sinks.val_metric))
        metrics = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            def features(loader):
                return [t.to(self.device) for t in extract_features(self.framework.backbone, loader,
                                                                    device=self.device, normalize=normalize_clips)]

            bank = features(loaders[0])  # the memory bank, extracted once for every query split
            for queries, metric_name in splits:
                found = feature_metrics(*bank, *features(queries), knn_k=e.knn_k, knn_temperature=e.knn_temperature,
                                        linear=e.linear, retrieval=e.retrieval)
                metrics.update({metric_name(name): value for name, value in found.items()})
            if final and e.finetune_steps > 0:
                metrics[sinks.EVAL_FINETUNE_TOP1] = self.finetune_top1(loaders[1])
            for dataset in self.downstream if final or e.online_datasets else []:
                downstream = dataset.evaluate(self.framework.backbone, self.device)
                metrics.update(downstream.metrics)
                self.sink.set_tags(downstream.tags())
        return metrics

    def finetune_top1(self, test_loader: DataLoader) -> float:
        """Test top-1 of a fine-tuned copy of the backbone on the train split
        (:func:`paramcrop.transfer.finetune_top1`); the run's backbone is not changed."""
        from paramcrop.transfer import finetune_top1

        return finetune_top1(self.framework.backbone, self.train_set.records, test_loader, self.num_classes, self.cfg,
                             self.device, infos=self.train_set.infos)

    # --- the loop ------------------------------------------------------------------------------
    def _loader(self) -> Iterator[Tensor]:
        sampler = EpochBatches(len(self.train_set), self.cfg.batch_size * self.dist.world_size, self.cfg.seed,
                               start_step=self.step, dist_info=self.dist)
        # its own generator: creating the iterator must not draw from the global RNG (resume equality)
        loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.cfg.data.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=self.cfg.data.workers > 0,
                            generator=torch.Generator().manual_seed(self.cfg.seed))
        return iter(loader)

    @torch.no_grad()
    def score_pairs(self, x1: Tensor, x2: Tensor, cubes1: Tensor, cubes2: Tensor, groups: int) -> Tensor:
        """The :data:`~paramcrop.crops.base.PairScorer` handed to the crop: the framework's per-pair loss
        ``(N,)`` of views ``(N, 3, t, h, w)`` on the 0-255 scale, normalised but not augmented (no flip in
        the head's augmentation vectors), in evaluation mode (the training mode is restored after)."""
        was_training = self.framework.training
        self.framework.eval()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                unflipped = torch.zeros(x1.shape[0], dtype=torch.bool, device=x1.device)
                vectors = self.framework.projector.augmentation_inputs(cubes1, cubes2, unflipped, unflipped)
                return self.framework.pair_losses(to_input(x1 / 255.0), to_input(x2 / 255.0), *vectors,
                                                  groups=groups).float()
        finally:
            self.framework.train(was_training)

    def loss_terms(self, clips: Tensor, views: "Views", flips: tuple[Tensor, Tensor],  # noqa: F821
                        maps: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """The switched-on auxiliary losses' unweighted values by metric name (empty, and free, when none is on).

        ``clips (B, 3, T, H, W)`` raw; ``flips``: the views' flip flags ``(B,)``; ``maps``: the
        framework's online feature maps of the two views.
        """
        terms = {}
        if REGION_LOSS in self.losses:
            terms[REGION_LOSS] = self.losses[REGION_LOSS](*maps, views.cubes1, views.cubes2, *flips)
        if ORDER_LOSS in self.losses:
            x, cubes = global_view(clips, self.crop.size)
            x, _ = self.augment(x / 255.0)
            features = self.framework.backbone(to_input(x))  # the order loss's one extra backbone pass
            terms[ORDER_LOSS] = self.losses[ORDER_LOSS](features, [pool(m) for m in maps],
                                                            [views.cubes1, views.cubes2], cubes)
        return terms

    def train_step(self, clips: Tensor) -> tuple[Tensor, dict[str, Tensor], "Views"]:  # noqa: F821
        """One optimisation step on raw clips ``(B, 3, T, H, W)``; returns (loss, metrics, views)."""
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            views, (x1, aug1), (x2, aug2) = two_views(self.crop, self.augment, clips, self.step)
            with phase("framework"):
                vectors = self.framework.projector.augmentation_inputs(views.cubes1, views.cubes2, aug1.flip, aug2.flip)
                out = self.model(to_input(x1), to_input(x2), *vectors)
            with phase("losses"):
                terms = self.loss_terms(clips, views, (aug1.flip, aug2.flip), out.maps)
        loss = out.loss + sum(self.loss_weights[name] * value for name, value in terms.items())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.step}: lower optim.lr, "
                                     f"check the data, or use precision=fp32")
        self.optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            if self.dist.enabled:
                average_gradients(self.losses.parameters())
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], cfg.optim.grad_clip)
            self.optimizer.step()
        with phase("generator"):
            # lr x lambda x its schedule, skipped at lambda 0, averaged across ranks; clears its grads
            diagnostics = self.adversary.step(self.step, self._lr_factor(self.step))
        self.step_lr = self.scheduler.get_last_lr()[0]  # the rate this step used (train/lr)
        self.scheduler.step()
        with phase("optimizer"):
            self.framework.update_targets()
        with torch.no_grad(), phase("metrics"):
            cubes = views.cubes1.detach().float(), views.cubes2.detach().float()
            disparity = view_disparity(*cubes)
            if self.gen_optimizer is not None:  # a learned crop: its generator's diagnostics
                diagnostics.update(cube_spread(*cubes))
        return loss.detach(), {**disparity, **views.metrics, **diagnostics, **out.metrics,
                               **{k: v.detach() for k, v in terms.items()}}, views

    def fit(self, sink: sinks.MetricsSink, resume: bool = False, until: int | None = None) -> TrainResult:
        """Train to ``cfg.steps``. With ``resume``, continue from ``run_dir``'s checkpoint (metrics
        continue at the step where they stopped; no checkpoint: ``ConfigError``, nothing logged); in
        both cases log params, config and datasets. ``until`` stops early at that step with a checkpoint and
        no final evaluation (as if preempted). Under torchrun only rank 0 reports, evaluates,
        visualises and writes the checkpoint (each other rank its own RNG state)."""
        if not self.dist.is_main:
            sink, self.progress, self.on_eval = sinks.MemorySink(), False, None
        self.sink = sink
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if resume:
            if not checkpoint.exists():
                raise ConfigError(f"nothing to resume: {self.run_dir} holds no {CHECKPOINT_NAME}; start anew without "
                                  f"resuming")
            self.load_checkpoint(checkpoint)
        # params, config and datasets on resume too: a study's retry is a new run (and one that resumes
        # its own run logs the same values again, which MLflow accepts); they are the config this
        # trainer resolved (e.g. a source's augmentation defaults), not the one it was given
        sink.log_params(self.cfg.flatten())
        config_path = self.run_dir / "config.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(self.cfg.to_yaml(resolved=True))  # every default spelled out
        sink.log_artifact(config_path)
        self._log_datasets(sink)
        return self._run(self.cfg.steps if until is None else min(until, self.cfg.steps))

    def _log_datasets(self, sink: sinks.MetricsSink) -> None:
        """The training split (what pretraining draws from), the test split and, when there is one, the
        validation split, as the run's dataset inputs."""
        from paramcrop.data.sources import dataset_digest, dataset_root

        splits = [(sinks.DATASET_TRAINING, self.train_set.records), (sinks.DATASET_EVALUATION, self.eval_sets[1].records)]
        if self.val_set is not None:
            splits.append((sinks.DATASET_VALIDATION, self.val_set.records))
        for context, records in splits:
            sink.log_dataset(self.cfg.data.source, str(dataset_root(records)), dataset_digest(records), context,
                             len(records))

    def _run(self, until: int) -> TrainResult:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cfg = self.cfg
        start_time = time.perf_counter()
        self._report_skipped()
        vis_steps = {round(i * (cfg.steps - 1) / max(1, cfg.visualize_at - 1)) for i in range(cfg.visualize_at)}
        self.history = history = self._earlier_trajectory()  # a resumed run keeps the rows before its checkpoint
        last: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        loss_sum, loss_n, interval_start, data_wait = torch.zeros(()), 0, time.perf_counter(), 0.0
        columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        batches = self._loader()
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step, status="")
            self.framework.train()
            while self.step < until:
                if self.stop is not None and self.stop.requested:
                    self.checkpoint()  # a step boundary: the stop leaves a consistent checkpoint
                    self.stop.check()
                if self.gen_optimizer is not None and cfg.snapshot_every and self.step % cfg.snapshot_every == 0 \
                        and self.dist.is_main:
                    self._snapshot()
                wait_start = time.perf_counter()  # train/data_wait_s: blocked on the loader + the copy to the device
                with phase("data"):
                    clips = next(batches).to(self.device, non_blocking=True)
                data_wait += time.perf_counter() - wait_start
                loss, metrics, views = self.train_step(clips)
                loss_sum, loss_n = loss_sum + loss.float().cpu(), loss_n + 1
                step = self.step
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - interval_start
                    last = {sinks.TRAIN_LOSS: float(loss_sum) / loss_n, sinks.TRAIN_LR: self.step_lr,
                            sinks.TRAIN_CLIPS_PER_S: loss_n * cfg.batch_size * self.dist.world_size / max(elapsed, 1e-9),
                            sinks.TRAIN_STRENGTH: self.crop.strength_at(step), sinks.TRAIN_DATA_WAIT_S: data_wait,
                            **({sinks.TRAIN_GENERATOR_LR: self.adversary.lr_at(step, self._lr_factor(step))}
                               if self.gen_optimizer is not None else {}),
                            **{k: float(v) for k, v in metrics.items()}}
                    self.sink.log_metrics(last, step)
                    history.append({"step": step, **last})
                    bar.update(task, status=f"loss {last[sinks.TRAIN_LOSS]:.3f}  iou {last[sinks.VIEW_IOU]:.2f}  "
                                            f"{last[sinks.TRAIN_CLIPS_PER_S]:.0f} clips/s")
                    loss_sum, loss_n, interval_start, data_wait = torch.zeros(()), 0, time.perf_counter(), 0.0
                main = self.dist.is_main
                if main and step in vis_steps:
                    self._visualize(clips, views, step)
                # evaluate before the checkpoint: its metrics are flushed with it, so a retry keeps them
                if main and cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                    eval_metrics = self._evaluate_and_report(final=False)
                    self.framework.train()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                bar.update(task, completed=self.step)
        self.checkpoint()
        if self.dist.is_main:
            if self.step == cfg.steps:
                eval_metrics = self._evaluate_and_report()
                self._log_models()
            self._report_skipped()  # files that failed to decode during training too
        return TrainResult(steps=self.step, seconds=time.perf_counter() - start_time, final_metrics=last,
                           eval_metrics=eval_metrics, run_dir=self.run_dir, skipped_videos=self.skipped_videos())

    def _evaluate_and_report(self, final: bool = True) -> dict[str, float]:
        metrics = self.evaluate(final)
        step = max(self.step - 1, 0)  # the last step completed (the step convention)
        self.sink.log_metrics(metrics, step)
        if self.on_eval is not None:
            self.on_eval(step, metrics)
        return metrics

    def _log_models(self) -> None:
        """The finished run's backbone as the sink's model ``backbone`` (a CPU copy in eval mode,
        input example one zero clip ``(1, 3, view.frames, view.size, view.size)``); a learned
        crop's generator as the artifact folder ``generator/``: ``generator.pt`` (its state_dict)
        and ``crop.yaml`` (method, view shape and keys), enough to rebuild it with
        ``create_crop(method, shape, **keys)`` and replay its crops."""
        import copy

        import yaml

        view = self.cfg.view
        backbone = copy.deepcopy(self.framework.backbone).cpu().eval()
        self.sink.log_model(sinks.MODEL_BACKBONE, backbone, torch.zeros(1, 3, view.frames, view.size, view.size))
        if next(self.crop.parameters(), None) is not None:  # a learned crop
            folder = self.run_dir / sinks.ARTIFACT_GENERATOR
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.cpu() for k, v in self.crop.state_dict().items()}, folder / "generator.pt")
            name, keys = self.cfg.component("crop")
            (folder / "crop.yaml").write_text(yaml.safe_dump(
                {"method": name, "shape": [view.frames, view.size, view.size], "keys": keys}, sort_keys=False))
            for file in ("generator.pt", "crop.yaml"):
                self.sink.log_artifact(folder / file, sinks.ARTIFACT_GENERATOR)

    def _snapshot(self) -> None:
        """The learned crop's state before this step, for the ``replay`` crop (:mod:`paramcrop.crops.replay`)."""
        from paramcrop.crops.replay import SNAPSHOT_DIR, save_snapshot

        path = save_snapshot(self.run_dir, self.step, self.cfg.resolved()["crop"], self.crop)
        self.sink.log_artifact(path, SNAPSHOT_DIR)

    def _visualize(self, clips: Tensor, views, step: int) -> None:
        from paramcrop.visualize import save_crop_strip

        path = self.run_dir / "crops" / f"step_{step:06d}.png"
        save_crop_strip(clips[0], views.cubes1[0].detach(), views.cubes2[0].detach(), views.x1[0].detach(),
                        views.x2[0].detach(), path, title=f"{self.cfg.crop['method']} crop, step {step}")
        self.sink.log_artifact(path, "crops")

    def skipped_videos(self) -> list[tuple[str, Path, str]]:
        """``(split, path, reason)`` of every file the datasets could not read so far."""
        return ([("train", p, r) for p, r in self.train_set.skipped]
                + [("test", p, r) for p, r in self.eval_sets[1].skipped]
                + [("val", p, r) for p, r in (self.val_set.skipped if self.val_set is not None else [])])

    def _report_skipped(self) -> None:
        """The count as ``data/skipped_videos`` and the list as ``skipped_videos.csv``, when either changed."""
        rows = self.skipped_videos()
        path = self.run_dir / SKIPPED_NAME
        if not rows or (path.exists() and path.read_text().count("\n") == len(rows) + 1):
            return
        self.sink.log_metrics({sinks.DATA_SKIPPED: float(len(rows))}, max(self.step - 1, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["split", "path", "reason"])
            writer.writerows((split, str(p), reason) for split, p, reason in rows)
        self.sink.log_artifact(path)

    def _earlier_trajectory(self) -> list[dict[str, float]]:
        path = self.run_dir / TRAJECTORY_NAME
        if self.step == 0 or not path.exists():
            return []
        with path.open(newline="") as fh:
            rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
        return [{**row, "step": int(row["step"])} for row in rows if row["step"] < self.step]

    def _write_trajectory(self, history: list[dict[str, float]]) -> None:
        path = self.run_dir / TRAJECTORY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        names = ["step", *sorted({k for row in history for k in row} - {"step"})]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=names)
            writer.writeheader()
            writer.writerows(history)
        self.sink.log_artifact(path)


def train(cfg: TrainConfig, sink: sinks.MetricsSink | None = None, run_dir: Path | str = "paramcrop-runs/run", *,
          resume: bool = False, progress: bool = True,
          on_eval: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Build and run ``cfg`` end to end (see :class:`Trainer`)."""
    trainer = Trainer(cfg, Path(run_dir), progress=progress, on_eval=on_eval)
    return trainer.fit(sink if sink is not None else sinks.MemorySink(), resume=resume)
