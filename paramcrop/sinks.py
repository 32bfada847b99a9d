"""How training reports what it measures, without knowing who listens.

``paramcrop/`` never imports MLflow or Optuna: the trainer talks to a :class:`MetricsSink`,
and ``studies/`` (or ``cli.py``) connects one to MLflow. Metric and tag names are the suite's
tracking conventions and live here so that every producer and the ``analysis/`` reader agree on
one spelling.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor, nn

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: a bare `mlflow ui` here shows it all


def redact_url(url: str) -> str:
    """The URL without its password (``postgresql://user:***@host/db``), for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

# --- metric names ----------------------------------------------------------------------
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_CLIPS_PER_S = "train/clips_per_s"
TRAIN_STRENGTH = "train/strength"
"""The adversarial strength λ in force at that step (``crop.strength``, ramped by its warmup; 0 for a
crop that learns nothing). Runs logged before the rename have it as ``train/lambda``."""
TRAIN_GENERATOR_LR = "train/generator_lr"
"""The learned crop's rate at that step: generator_lr x lambda x its schedule (only for a learned crop;
with ``optim.generator_optimizer: sgd`` lambda is in the gradient instead, :mod:`paramcrop.crops.adversary`)."""
GENERATOR_GRAD_NORM = "train/generator_grad_norm"
"""L2 norm of all the generator's gradients at that step, before its optimiser step (0 at lambda 0)."""
GENERATOR_UPDATE_NORM = "train/generator_update_norm"
"""L2 norm of the change that step's optimiser step made to all the generator's parameters."""
GENERATOR_SATURATION = "train/generator_saturation"
"""Fraction of the generator's used squashed outputs within 1 % of a bound of their range
(:func:`paramcrop.crops.paramcrop.saturation`): near 1, its gradients vanish."""
CUBE_PARAMS = ("cx", "cy", "ct", "hx", "hy", "ht")
"""The six cube parameters, in the cube's order."""


def cube_std_metric(view: int, param: str) -> str:
    """The batch standard deviation of one view's cube parameter, ``train/cube_std/view1/cx`` (view 1 or 2)."""
    return f"train/cube_std/view{view}/{param}"


CUBE_STD_METRICS = tuple(cube_std_metric(v, p) for v in (1, 2) for p in CUBE_PARAMS)
"""The sample standard deviations (ddof 1) over the batch of each view's cube parameters (learned crops)."""
GENERATOR_METRICS = (GENERATOR_GRAD_NORM, GENERATOR_UPDATE_NORM, GENERATOR_SATURATION, *CUBE_STD_METRICS)
"""The generator's diagnostics, logged at every log step of a learned crop (``paramcrop analyze generator``)."""
TRAIN_DATA_WAIT_S = "train/data_wait_s"
"""Seconds a logged interval's steps waited for their batches (``next`` on the loader + the copy to the
device, which is asynchronous on CUDA), summed over the interval: near 0 when decoding keeps up."""
POS_SIM = "train/pos_sim"
"""Mean cosine similarity of the two views' online embeddings (every framework logs it)."""
REGION_LOSS = "train/region_loss"
"""The (unweighted) soft region contrast loss (:mod:`paramcrop.losses`; only when on)."""
ORDER_LOSS = "train/order_loss"
"""The (unweighted) local-global temporal order cross-entropy (:mod:`paramcrop.losses`; only when on)."""
VIEW_IOU = "view/iou"
VIEW_IOU_XY = "view/iou_xy"
VIEW_IOU_T = "view/iou_t"
VIEW_CENTER_DISTANCE = "view/center_distance"
VIEW_CENTER_DISTANCE_XY = "view/center_distance_xy"
VIEW_CENTER_DISTANCE_T = "view/center_distance_t"
VIEW_METRICS = (
    VIEW_IOU, VIEW_IOU_XY, VIEW_IOU_T,
    VIEW_CENTER_DISTANCE, VIEW_CENTER_DISTANCE_XY, VIEW_CENTER_DISTANCE_T,
)
VIEW_CANDIDATES_IOU = "view/candidates_iou"
"""The ``hardest`` crop's mean view IoU over all its candidate pairs (``view/iou`` is the chosen pairs')."""
EVAL_KNN_TOP1 = "eval/knn_top1"
EVAL_LINEAR_TOP1 = "eval/linear_top1"
EVAL_FINETUNE_TOP1 = "eval/finetune_top1"
"""Top-1 of a fine-tuned copy of the backbone (only when ``eval.finetune_steps`` > 0, at the end)."""


def val_metric(name: str) -> str:
    """The validation split's name of an evaluation metric, ``eval/knn_top1`` -> ``eval/val/knn_top1``;
    ``eval/<metric>`` itself is the test split's."""
    return "eval/val/" + name.removeprefix("eval/")


EVAL_VAL_KNN_TOP1 = val_metric(EVAL_KNN_TOP1)
"""The validation split's kNN top-1: the default study objective (selection never sees test labels)."""
DATA_SKIPPED = "data/skipped_videos"

# --- tag keys --------------------------------------------------------------------------
TAG_PREFIX = "paramcrop."
TAG_ROLE = "paramcrop.role"            # "study" (parent run), "trial" (child run), "train"
TAG_STUDY = "paramcrop.study"
TAG_TRIAL = "paramcrop.trial"          # Optuna trial number
TAG_TRIAL_STATE = "paramcrop.trial_state"
TAG_CROP = "paramcrop.crop"            # crop method name
TAG_CROP_PARAMETERISATION = "paramcrop.crop_parameterisation"  # e.g. "spatial", "spatiotemporal, input none"
TAG_FRAMEWORK = "paramcrop.framework"
TAG_BACKBONE = "paramcrop.backbone"
TAG_VERSION = "paramcrop.version"
TAG_GIT_COMMIT = "paramcrop.git_commit"
TAG_FAILURE = "paramcrop.failure_reason"
TAG_PRUNED = "paramcrop.pruned"
TAG_OBJECTIVE = "paramcrop.objective"  # metric name of the study objective
TAG_EVAL_SKIPPED = "paramcrop.eval_skipped"  # + ".<dataset name>": what a downstream evaluation could not compute
MODEL_BACKBONE = "backbone"    # the run's model: the pretrained backbone (mlflow.pytorch), runs:/<id>/backbone
ARTIFACT_GENERATOR = "generator"  # a learned crop's generator: generator.pt (state_dict) + crop.yaml
PARENT_RUN_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"       # the experiment's and the parent run's description (the spec's)
SOURCE_NAME_TAG = "mlflow.source.name"  # the command that made the run: "paramcrop study run"
SOURCE_TYPE_TAG = "mlflow.source.type"  # "LOCAL"
SOURCE_COMMIT_TAG = "mlflow.source.git.commit"

# --- the study's parent run: its summary, updated as trials end --------------------------
STUDY_BEST_VALUE = "study/best_value"  # single objective: the best complete trial's value
STUDY_BEST_TRIAL = "study/best_trial"  # ... and its trial number
STUDY_TRIALS = "study/trials_{state}"  # trials per state: complete, pruned, fail, running, waiting

# --- dataset inputs (``MetricsSink.log_dataset``) -------------------------------------------
DATASET_TRAINING = "training"  # context of the training split
DATASET_EVALUATION = "evaluation"  # context of the split evaluated on (the test split)
DATASET_VALIDATION = "validation"  # context of the validation split (carved from the training videos)
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the dataset input's tag holding the context


@runtime_checkable
class MetricsSink(Protocol):
    """Receives what a training run measures. All methods must be cheap or batched."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def flush(self, block: bool = True) -> None:
        """Send what is queued. The trainer calls ``flush(block=False)`` before each checkpoint (so a
        killed run loses no step it logged): one attempt that never stalls training, what fails
        stays queued."""

    def log_dataset(self, name: str, source: str, digest: str, context: str, n_videos: int) -> None:
        """A dataset the run used: ``name`` its data source string, ``source`` its folder, ``digest``
        (:func:`paramcrop.data.sources.dataset_digest`), ``context`` :data:`DATASET_TRAINING`,
        :data:`DATASET_EVALUATION` or :data:`DATASET_VALIDATION`, ``n_videos`` its size."""

    def log_model(self, name: str, module: "nn.Module", input_example: "Tensor") -> None:
        """Keep ``module`` (on the CPU, in eval mode; the caller hands over a copy it no longer
        changes) as the run's model ``name``; ``input_example`` is one input, e.g. a clip
        ``(1, 3, T, H, W)``, from which the sink may infer a signature."""
        ...


class MemorySink:
    """Keeps everything in memory; used by tests and by runs that track nothing.

    ``history`` holds ``(step, name, value)`` triples in logging order.
    """

    def __init__(self) -> None:
        self.history: list[tuple[int, str, float]] = []
        self.params: dict[str, object] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.datasets: list[dict[str, object]] = []  # log_dataset's arguments, by name
        self.models: dict[str, tuple["nn.Module", "Tensor"]] = {}  # name -> (module, input example)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.history.extend((step, k, float(v)) for k, v in metrics.items())

    def log_params(self, params: Mapping[str, object]) -> None:
        self.params.update(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def flush(self, block: bool = True) -> None:
        """Nothing is queued: a no-op."""

    def log_dataset(self, name: str, source: str, digest: str, context: str, n_videos: int) -> None:
        self.datasets.append(dict(name=name, source=source, digest=digest, context=context, n_videos=n_videos))

    def log_model(self, name: str, module: "nn.Module", input_example: "Tensor") -> None:
        self.models[name] = (module, input_example)

    def series(self, name: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric."""
        return [(s, v) for s, k, v in self.history if k == name]
