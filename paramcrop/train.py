"""One self-supervised pretraining run: crop -> augment -> framework (+ auxiliary losses), evaluated on frozen features.

:func:`paramcrop.plan.resolve` builds the run's components from its config; the :class:`Trainer`
runs the loop on them and reports to a :class:`~paramcrop.sinks.MetricsSink`, knowing nothing of
MLflow or Optuna. With a learned crop, one backward pass serves both sides: the backbone's optimiser
descends the loss, and the generator's optimiser steps on gradients that the reversal layer
has already negated and scaled by lambda, so it ascends the same loss. The generator's Adam
would cancel that scale, so its learning rate is ``optim.generator_lr * lambda(step)`` (times the
factor of ``optim.generator_schedule``): lambda sets the adversary's step size (SGD,
``optim.generator_optimizer: sgd``, keeps the scale: its rate is not multiplied by lambda). A learned
crop's step metrics include its diagnostics (:data:`paramcrop.sinks.GENERATOR_METRICS`); a crop that
chooses views by the model (``hardest``) scores them through :meth:`Trainer.score_pairs`.

The framework also receives each view's augmentation vector (cube, flip, relative shift,
:meth:`~paramcrop.frameworks.base.Framework.augmentation_inputs`; the CATE head uses them, the MLP
head takes none). The loss is the framework's loss plus the switched-on auxiliary losses
(:mod:`paramcrop.losses`) times their weights; ``train/loss`` logs that total,
``train/region_loss`` / ``train/order_loss`` each term unweighted. Objectives that are off cost nothing.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from paramcrop import artifacts, checkpoint, sinks
from paramcrop.augment import AugmentParams, ClipAugment
from paramcrop.checkpoint import CHECKPOINT_NAME, rank_seed, seed_everything
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.schedules import warmup_cosine
from paramcrop.crops.base import CropMethod, Views, by_parts
from paramcrop.data.batches import EpochBatches, normalize_clips, to_input
from paramcrop.data.records import first_per_class
from paramcrop.distributed import average_gradients
from paramcrop.frameworks.base import pool
from paramcrop.geometry import cube_spread, view_disparity
from paramcrop.losses import ORDER_LOSS, REGION_LOSS, global_view
from paramcrop.plan import RunPlan, resolve

PHASE_PREFIX = "paramcrop:"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops instead of training on garbage."""


class StopSignal(Protocol):
    """A request to stop at the next step boundary (``studies.signals.GracefulStop`` on SIGINT/SIGTERM)."""

    requested: str | None

    def check(self) -> None:
        """Raise the requested interrupt, if any."""

    def deferred(self) -> ContextManager:
        """Within the block, a first signal only sets :attr:`requested` (the trainer stops at a step boundary)."""


@dataclass
class TrainResult:
    """What a finished run returns: its last metrics, the final evaluation and where its files are."""

    steps: int
    seconds: float
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    run_dir: Path
    skipped_videos: list[tuple[str, Path, str]] = field(default_factory=list)  # (split, path, reason)


def phase(name: str) -> torch.profiler.record_function:
    """A ``torch.profiler`` region ``paramcrop:NAME`` around one phase of a step (``benchmarks/profile_step.py``
    breaks a step down by them); a few microseconds when no profiler runs."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


def progress_bar(disable: bool = False, console=None):
    """The training progress line: ``train  [bar]  steps/total  loss · iou · clips/s  ETA``, readable at
    80 columns (an 8-character bar; the ``status`` field is :func:`progress_status`)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]train"), BarColumn(bar_width=8), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[status]}"), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, disable=disable, transient=False, console=console)


def progress_status(loss: float, iou: float, clips_per_s: float) -> str:
    return f"loss {loss:.3f} iou {iou:.2f} {clips_per_s:.0f} clips/s"


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


class Trainer:
    """The training loop of a resolved run (:class:`~paramcrop.plan.RunPlan`; a ``TrainConfig`` is
    resolved first), reporting to ``sink``.

    ``on_eval(step, metrics)`` is called after each evaluation (a study's pruner hooks in here
    and may raise to stop); ``progress`` shows a rich progress bar. ``stop``, when given, defers
    signals during :meth:`fit` and is checked at every step boundary: once its ``requested`` is
    truthy the trainer writes a checkpoint there and calls ``stop.check()``, which raises. Under
    torchrun only rank 0 reports (the other ranks get a memory sink, no progress bar, no ``on_eval``).

    Step convention (every metric): a value is logged at the 0-based index of the last training
    step completed when it was measured: step ``s``'s train and view metrics at ``s`` (``train/lr``
    is the rate step ``s`` used), an evaluation after ``s + 1`` steps at ``s`` (the final one at
    ``steps - 1``), ``data/skipped_videos`` likewise (at 0 before the first step).
    """

    def __init__(self, plan: RunPlan | TrainConfig, run_dir: Path, *, sink: sinks.MetricsSink | None = None,
                 stop: StopSignal | None = None, on_eval: Callable[[int, dict[str, float]], None] | None = None,
                 progress: bool = True) -> None:
        self.plan = plan = plan if isinstance(plan, RunPlan) else resolve(plan)
        cfg = self.cfg = plan.cfg
        self.run_dir = Path(run_dir)
        self.device, self.dist, self.autocast = plan.device, plan.dist, plan.autocast
        self.crop, self.augment, self.framework, self.losses = plan.crop, plan.augment, plan.framework, plan.losses
        self.train_set, self.eval_sets, self.val_set = plan.train_set, plan.eval_sets, plan.val_set
        main = self.dist.is_main
        self.sink: sinks.MetricsSink = sink if sink is not None and main else sinks.MemorySink()
        self.stop, self.on_eval, self.progress = stop, on_eval if main else None, progress and main
        self.crop.bind_scorer(self.score_pairs)  # the model's per-pair loss, for crops that choose by it
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
            **checkpoint.rng_state(),  # rank 0's; the other ranks' are in their RANK_RNG_NAME files
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
            artifacts.write_trajectory(self.sink, self.run_dir, self.history)
            self.sink.flush(block=False)
            self.save_checkpoint()
        else:
            checkpoint.save_rank_rng(self.run_dir, self.dist.rank, self.step)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` atomically (temp file + rename: a crash never leaves a torn checkpoint),
        keeping the one before as ``checkpoint.previous.pt`` (:func:`paramcrop.checkpoint.save_checkpoint`)."""
        return checkpoint.save_checkpoint(self.state_dict(), self.run_dir)

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint (loading never executes code) and this rank's RNG state."""
        state = checkpoint.load(path, self.device)
        self.framework.load_state_dict(state["framework"])
        self.losses.load_state_dict(state["losses" if "losses" in state else "objectives"])  # stored under either name
        self.crop.load_state_dict(state["crop"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.gen_optimizer is not None:
            self.gen_optimizer.load_state_dict(state["gen_optimizer"])
        self.step = int(state["step"])
        if self.dist.is_main:
            checkpoint.set_rng_state(state)
        else:
            checkpoint.restore_rank_rng(self.run_dir, self.dist.rank, self.step, self.cfg.seed)

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, final: bool = True) -> dict[str, float]:
        """The evaluation metrics of the backbone now (:func:`paramcrop.evaluation.evaluate_queries`):
        the test queries' as ``eval/<metric>`` and, with a validation split, the validation queries'
        as ``eval/val/<metric>``, both against the same memory bank (the pretraining videos; its
        features extracted once for both); an online evaluation (not ``final``) queries the first
        ``plan.online_per_class`` videos per class of each evaluation draw. The final one logs each
        query split's per-query predictions (:mod:`paramcrop.predictions`). Plus
        ``eval/finetune_top1`` when ``final`` and ``eval.finetune_steps`` > 0, plus each of
        ``eval.datasets``' ``eval/<name>/...`` (:mod:`paramcrop.transfer`) when ``final`` or
        ``eval.online_datasets``, its skipped parts as a tag. Runs on a forked
        RNG: evaluating never changes the training's random stream, so ``eval.every`` changes no
        training result."""
        from paramcrop.evaluation import evaluate_queries
        from paramcrop.predictions import metric_name, write_split

        e = self.cfg.eval
        queries = {"test": self.eval_sets[1]} | ({"val": self.val_set} if self.val_set is not None else {})
        per_class = None if final else self.plan.online_per_class  # online: a fixed subsample of the draws

        def loader(dataset, subset=None):
            return DataLoader(dataset if subset is None else Subset(dataset, subset), batch_size=e.batch_size,
                              num_workers=self.cfg.data.workers)

        metrics = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            results = evaluate_queries(
                self.plan.backbone, loader(self.eval_sets[0]),
                {split: loader(ds, None if per_class is None else first_per_class(ds.records, per_class))
                 for split, ds in queries.items()},
                device=self.device, normalize=normalize_clips, knn_k=e.knn_k, knn_temperature=e.knn_temperature,
                linear=e.linear, retrieval=e.retrieval)
            for split, (found, predictions) in results.items():
                metrics.update({metric_name(k, split): v for k, v in found.items()})
                if final:  # the per-query predictions of the final evaluation (paramcrop.predictions)
                    path = write_split(self.run_dir, split, queries[split].records, predictions)
                    self.sink.log_artifact(path, path.parent.name)
            if final and e.finetune_steps > 0:
                metrics[sinks.EVAL_FINETUNE_TOP1] = self.finetune_top1(loader(self.eval_sets[1]))
            for dataset in self.plan.downstream if final or e.online_datasets else []:
                downstream = dataset.evaluate(self.plan.backbone, self.device)
                metrics.update(downstream.metrics)
                self.sink.set_tags(downstream.tags())
        return metrics

    def finetune_top1(self, test_loader: DataLoader) -> float:
        """Test top-1 of a fine-tuned copy of the backbone on the train split
        (:func:`paramcrop.transfer.finetune_top1`); the run's backbone is not changed."""
        from paramcrop.transfer import finetune_top1

        return finetune_top1(self.plan.backbone, self.train_set.records, test_loader, self.plan.num_classes, self.cfg,
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
                vectors = self.framework.augmentation_inputs(cubes1, cubes2, unflipped, unflipped)
                return self.framework.pair_losses(to_input(x1 / 255.0), to_input(x2 / 255.0), *vectors,
                                                  groups=groups).float()
        finally:
            self.framework.train(was_training)

    def loss_terms(self, clips: Tensor, views: Views, flips: tuple[Tensor, Tensor],
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
            features = self.plan.backbone(to_input(x))  # the order loss's one extra backbone pass
            terms[ORDER_LOSS] = self.losses[ORDER_LOSS](features, [pool(m) for m in maps],
                                                            [views.cubes1, views.cubes2], cubes)
        return terms

    def train_step(self, clips: Tensor) -> tuple[Tensor, dict[str, Tensor], Views]:
        """One optimisation step on raw clips ``(B, 3, T, H, W)``; returns (loss, metrics, views)."""
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            views, (x1, aug1), (x2, aug2) = two_views(self.crop, self.augment, clips, self.step)
            with phase("framework"):
                vectors = self.framework.augmentation_inputs(views.cubes1, views.cubes2, aug1.flip, aug2.flip)
                out = self.model(to_input(x1), to_input(x2), *vectors)
            with phase("losses"):
                terms = self.loss_terms(clips, views, (aug1.flip, aug2.flip), out.maps)
        loss = out.loss + sum(self.plan.loss_weights[name] * value for name, value in terms.items())
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

    def fit(self, resume: bool = False, until: int | None = None) -> TrainResult:
        """Train to ``cfg.steps``. With ``resume``, continue from ``run_dir``'s checkpoint (metrics
        continue at the step where they stopped; no checkpoint: ``ConfigError``, nothing logged); in
        both cases log params, the resolved config and datasets (a study's retry is a new run). ``until``
        stops early at that step with a checkpoint and no final evaluation (as if preempted). Under
        torchrun only rank 0 reports, evaluates, visualises and writes the checkpoint (each other rank
        its own RNG state)."""
        with self.stop.deferred() if self.stop is not None else contextlib.nullcontext():
            path = self.run_dir / CHECKPOINT_NAME
            if resume:
                if not path.exists():
                    raise ConfigError(f"nothing to resume: {self.run_dir} holds no {CHECKPOINT_NAME}; start anew "
                                      f"without resuming")
                self.load_checkpoint(path)
            artifacts.log_config(self.sink, self.run_dir, self.cfg)
            splits = [(sinks.DATASET_TRAINING, self.train_set.records),
                      (sinks.DATASET_EVALUATION, self.eval_sets[1].records)]
            if self.val_set is not None:
                splits.append((sinks.DATASET_VALIDATION, self.val_set.records))
            artifacts.log_datasets(self.sink, self.cfg.data.source, splits)
            return self._run(self.cfg.steps if until is None else min(until, self.cfg.steps))

    def _run(self, until: int) -> TrainResult:
        cfg = self.cfg
        start_time = time.perf_counter()
        self._report_skipped()
        vis_steps = {round(i * (cfg.steps - 1) / max(1, cfg.visualize_at - 1)) for i in range(cfg.visualize_at)}
        # a resumed run keeps the trajectory rows before its checkpoint
        self.history = history = artifacts.read_trajectory(self.run_dir, self.step)
        last: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        loss_sum, loss_n, interval_start, data_wait = torch.zeros(()), 0, time.perf_counter(), 0.0
        batches = self._loader()
        with progress_bar(disable=not self.progress) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step, status="")
            self.framework.train()
            while self.step < until:
                if self.stop is not None and self.stop.requested:
                    self.checkpoint()  # a step boundary: the stop leaves a consistent checkpoint
                    self.stop.check()
                if self.gen_optimizer is not None and cfg.snapshot_every and self.step % cfg.snapshot_every == 0 \
                        and self.dist.is_main:
                    artifacts.save_snapshot(self.sink, self.run_dir, self.step, self.cfg, self.crop)
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
                    bar.update(task, status=progress_status(last[sinks.TRAIN_LOSS], last[sinks.VIEW_IOU],
                                                            last[sinks.TRAIN_CLIPS_PER_S]))
                    loss_sum, loss_n, interval_start, data_wait = torch.zeros(()), 0, time.perf_counter(), 0.0
                main = self.dist.is_main
                if main and step in vis_steps:
                    artifacts.save_crop_images(self.sink, self.run_dir, clips, views, step,
                                               f"{cfg.crop['method']} crop, step {step}")
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
        """The finished run's backbone and a learned crop's generator (:func:`paramcrop.artifacts.log_models`)."""
        artifacts.log_models(self.sink, self.run_dir, self.cfg, self.plan.backbone, self.crop)

    def skipped_videos(self) -> list[tuple[str, Path, str]]:
        """``(split, path, reason)`` of every file the datasets could not read so far."""
        return ([("train", p, r) for p, r in self.train_set.skipped]
                + [("test", p, r) for p, r in self.eval_sets[1].skipped]
                + [("val", p, r) for p, r in (self.val_set.skipped if self.val_set is not None else [])])

    def _report_skipped(self) -> None:
        artifacts.report_skipped(self.sink, self.run_dir, self.skipped_videos(), max(self.step - 1, 0))


def train(cfg: TrainConfig, sink: sinks.MetricsSink | None = None, run_dir: Path | str = "paramcrop-runs/run", *,
          resume: bool = False, progress: bool = True,
          on_eval: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Resolve and run ``cfg`` end to end (see :class:`Trainer`)."""
    return Trainer(resolve(cfg), Path(run_dir), sink=sink, progress=progress, on_eval=on_eval).fit(resume=resume)
