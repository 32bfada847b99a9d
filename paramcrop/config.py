"""The training configuration: nested dataclasses that reject unknown keys.

One schema serves ``paramcrop train`` (YAML + ``--set key=value``) and every study trial (the
spec's fixed config + the sampled params, dotted keys alike). The sections ``crop``,
``framework``, ``backbone``, ``head`` and ``augment`` are open dicts: their keys are the
constructor arguments of the chosen component, checked against its registry in
:meth:`TrainConfig.validate`. ``losses`` holds the weights of the auxiliary loss terms (0 = off),
plain numbers so that a study can switch or tune them like any other key. Old key names
(:data:`paramcrop.keys.RENAMED_KEYS`: the section ``objectives``, now ``losses``; ``augment.strength``, now
``augment.jitter_scale``) are still read, with a :class:`~paramcrop.keys.RenamedKeyWarning`, in
:meth:`TrainConfig.from_dict` and :meth:`TrainConfig.with_overrides`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from paramcrop.dataset_names import dataset_name
from paramcrop.keys import ConfigError, current_names, current_key, flatten, set_dotted
from paramcrop.registry import constructor_defaults, constructor_keys


AUTO = "auto"
AUTO_KEYS = ("data.workers",)
"""Integer leaves that also accept the string ``"auto"`` (resolved where the run starts)."""


BOOKKEEPING = {"bookkeeping": True}
"""Field metadata of a run's bookkeeping: a key that cannot change a training result beyond float
rounding (workers, caches, device, compilation, logging, checkpoints, snapshots, visualisations), so
runs that differ only in it are one configuration (:func:`bookkeeping_keys`)."""
GENERATOR = {"selector": "crop.method"}
"""Field metadata of a learned crop's generator settings outside the ``crop`` section: they act only
on a crop with a generator, so analyses read them as part of the crop component, like ``crop.area``
(:func:`component_selectors`): a label names ``optim.generator_lr`` only for a ``crop.method`` whose
runs differ in it."""


@dataclass
class DataConfig:
    """Where clips come from: ``source`` (a data source string, :mod:`paramcrop.data.sources`), the raw clip cut from each video.

    ``val_fraction`` of each class's training videos form the validation split
    (:meth:`paramcrop.data.DatasetSpec.with_validation`: stable, by a hash of class and file name).
    They are held out of everything else: the self-supervised pretraining, the labelled memory bank
    of the kNN / linear / retrieval evaluations and fine-tuning, so ``eval/val/*`` is a clean proxy
    for the test split's ``eval/*``. 0 = no validation split (and no ``eval/val/*`` metrics)."""

    source: str = "synthetic"
    frames: int = 16  # raw clip length in frames (the views are cut from it)
    stride: int = 2  # temporal stride between decoded frames
    size: int = 64  # raw clip side (short side resized to it, then center-cropped square)
    workers: int | str = field(default=0, metadata=BOOKKEEPING)  # DataLoader worker processes, or "auto" (paramcrop.train.resolve_workers)
    val_fraction: float = 0.2  # of each class's training videos, held out for validation (0 = none)
    cache_mb: float = field(default=1024, metadata=BOOKKEEPING)  # a split whose decoded videos fit in this (MiB, per process) is decoded once, 0 = off


@dataclass
class ViewConfig:
    """Size of each view fed to the backbone: ``frames x size x size``."""

    frames: int = 8
    size: int = 48


@dataclass
class OptimConfig:
    """AdamW for the backbone and heads (warm-up + cosine); Adam (or SGD) for a learned crop's generator."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05  # the cosine ends at lr * min_lr_ratio
    # scaled by lambda at each step (Adam would cancel the reversal scale)
    generator_lr: float = field(default=2.5e-4, metadata=GENERATOR)
    # constant, follow (the backbone's) or warmup_cosine (crops/adversary.py)
    generator_schedule: str = field(default="constant", metadata=GENERATOR)
    # the warm-up of generator_schedule=warmup_cosine
    generator_warmup_steps: int = field(default=0, metadata=GENERATOR)
    # adam (lr x lambda) or sgd (momentum 0.9; lambda in the gradient)
    generator_optimizer: str = field(default="adam", metadata=GENERATOR)
    grad_clip: float = 0.0  # max global grad norm of the backbone side (0 = off)


@dataclass
class EvalConfig:
    """Evaluation (:mod:`paramcrop.evaluation`): on frozen features after training and every
    ``every`` steps (0 = end only; the online kNN learning curve), which never changes the training
    itself; fine-tuning of a copy of the backbone for ``finetune_steps`` steps at the end (0 = off).

    On a ``synthetic`` source the validation and test queries are fresh draws of the benchmark's
    design, ``draw_per_class`` videos per class each (docs/DESIGN.md "Evaluation draws"); the online
    evaluations use the first :data:`ONLINE_DRAW_PER_CLASS` of them per class."""

    every: int = 0
    # synthetic sources: validation and test query fresh draws of this many videos per class (0 = the
    # benchmark's own validation and test videos, the evaluation of runs logged before draws existed)
    draw_per_class: int = 320
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear: bool = True
    retrieval: bool = True
    clips_per_video: int = 1
    batch_size: int = 64
    finetune_steps: int = 0
    finetune_lr: float = 1e-3
    # downstream (transfer) datasets, source strings evaluated at the end (and at `every` when
    # online_datasets) besides the pretraining dataset; metrics eval/<name>/... (paramcrop.transfer)
    datasets: list = field(default_factory=list)
    online_datasets: bool = False


ONLINE_DRAW_PER_CLASS = 40
"""Queries per class of each evaluation draw that an online evaluation (``eval.every``) uses: a fixed
subsample (the lowest indices), so the learning curve costs an eighth of the final evaluation."""


@dataclass
class LossesConfig:
    """Auxiliary loss terms added to the framework's loss (:mod:`paramcrop.losses`):
    each name is the term's weight, 0 = off; the other keys are the terms' settings."""

    region: float = 0.0  # soft spatio-temporal region contrast
    order: float = 0.0  # local-global temporal order
    region_temperature: float = 0.2
    order_bins: int = 4  # temporal position bins of a local view within the global view


LOSS_NAMES = ("region", "order")
"""The weight keys of :class:`LossesConfig`, i.e. the losses ``paramcrop train --loss`` knows."""


@dataclass
class TrainConfig:
    """One self-supervised pretraining run. See ``paramcrop train --help`` and docs/DESIGN.md."""

    data: DataConfig = field(default_factory=DataConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    crop: dict = field(default_factory=lambda: {"method": "paramcrop"})
    augment: dict = field(default_factory=dict)
    framework: dict = field(default_factory=lambda: {"name": "simclr"})
    backbone: dict = field(default_factory=lambda: {"name": "tiny3d"})
    head: dict = field(default_factory=lambda: {"name": "mlp"})  # projection head (paramcrop.heads)
    losses: LossesConfig = field(default_factory=LossesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 300
    batch_size: int = 32
    seed: int = 0
    device: str = field(default="auto", metadata=BOOKKEEPING)  # auto = cuda when available, else cpu
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    compile: bool = field(default=True, metadata=BOOKKEEPING)  # torch.compile crop, colour jitter, flip (the fuse() methods); PARAMCROP_COMPILE=0 = off
    log_every: int = field(default=10, metadata=BOOKKEEPING)
    checkpoint_every: int = field(default=0, metadata=BOOKKEEPING)  # 0 = only at the end
    snapshot_every: int = field(default=25, metadata=BOOKKEEPING)  # a learned crop's generator snapshots every N steps, for `replay` (0 = none)
    visualize_at: int = field(default=3, metadata=BOOKKEEPING)  # crop visualisations at this many points of training (0 = none)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrainConfig":
        """Build from a (possibly partial) nested dict; unknown keys raise :class:`ConfigError`."""
        cfg = _from_dict(cls, current_names(data or {}), prefix="")
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, text: str) -> "TrainConfig":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"the config is not valid YAML: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"the config must be a YAML mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, resolved: bool = False) -> str:
        """The config as YAML (:meth:`from_yaml` reads it back); ``resolved`` fills in every
        component's defaults (:meth:`resolved`), as a run records it."""
        return yaml.safe_dump(self.resolved() if resolved else self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "TrainConfig":
        """A copy with dotted keys set (``{"crop.strength": 0.5}``).

        Component names (``crop.method``, ``framework.name``, ``backbone.name``, ``head.name``) are
        applied first; a changed name starts its section afresh, so ``crop.method=random`` drops
        ParamCrop-only keys such as ``crop.strength``.
        """
        data = self.to_dict()
        names = {f"{section}.{key}" for section, key in _COMPONENT_KEYS.items()}
        both = sorted(key for key in overrides if current_key(key) != key and current_key(key) in overrides)
        if both:
            raise ConfigError(f"{both[0]!r} and {current_key(both[0])!r} both set: keep only {current_key(both[0])!r}")
        overrides = {current_key(key, warn=True): value for key, value in overrides.items()}
        for key, value in sorted(overrides.items(), key=lambda kv: kv[0] not in names):
            if key in names:
                section, name_key = key.split(".")
                if data[section].get(name_key) != value:
                    data[section] = {}
            set_dotted(data, key, value)
        return TrainConfig.from_dict(data)

    def with_losses(self, names: list[str]) -> "TrainConfig":
        """A copy with the named auxiliary losses switched on: weight 1.0 unless they already have one.

        ``names`` entries may be comma lists (``["region,order"]``); an unknown name raises
        :class:`ConfigError` listing the valid ones.
        """
        requested = [n.strip() for entry in names for n in entry.split(",") if n.strip()]
        unknown = sorted(set(requested) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(f"unknown loss(es) {', '.join(unknown)}; valid losses: {', '.join(LOSS_NAMES)}")
        return self.with_overrides({f"losses.{n}": 1.0 for n in requested if getattr(self.losses, n) == 0})

    def resolved(self) -> dict[str, Any]:
        """The config as a dict with every component's constructor defaults filled in, so that a
        run records e.g. ``crop.strength`` even when it was left at its default."""
        from paramcrop.augment import ClipAugment
        from paramcrop.backbones import BACKBONES
        from paramcrop.crops import CROPS
        from paramcrop.frameworks import FRAMEWORKS
        from paramcrop.heads import HEADS

        data = self.to_dict()
        for section, registry, n_positional in (("crop", CROPS, 1), ("framework", FRAMEWORKS, 2),
                                                 ("backbone", BACKBONES, 0), ("head", HEADS, 3)):
            name, params = self.component(section)
            data[section] = {_COMPONENT_KEYS[section]: name, **registry.defaults(name, n_positional), **params}
        data["augment"] = {**constructor_defaults(ClipAugment), **self.augment}
        return data

    def flatten(self) -> dict[str, Any]:
        """Dotted key -> value for every leaf, component defaults included (MLflow params, tables)."""
        return flatten(self.resolved())

    # --- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Check ranges and component keys before anything expensive starts."""
        from paramcrop.augment import ClipAugment
        from paramcrop.backbones import BACKBONES
        from paramcrop.crops import CROPS
        from paramcrop.frameworks import FRAMEWORKS
        from paramcrop.heads import HEADS, create_head

        positive = {
            "data.frames": self.data.frames, "data.stride": self.data.stride, "data.size": self.data.size,
            "view.frames": self.view.frames, "view.size": self.view.size, "steps": self.steps,
            "batch_size": self.batch_size, "log_every": self.log_every, "eval.knn_k": self.eval.knn_k,
            "eval.clips_per_video": self.eval.clips_per_video, "eval.batch_size": self.eval.batch_size,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        non_negative = {
            "data.workers": 0 if self.data.workers == AUTO else self.data.workers, "eval.every": self.eval.every,
            "eval.draw_per_class": self.eval.draw_per_class, "eval.finetune_steps": self.eval.finetune_steps, "optim.warmup_steps":
            self.optim.warmup_steps, "optim.weight_decay": self.optim.weight_decay,
            "optim.grad_clip": self.optim.grad_clip, "checkpoint_every": self.checkpoint_every,
            "optim.generator_warmup_steps": self.optim.generator_warmup_steps, "snapshot_every": self.snapshot_every,
            "visualize_at": self.visualize_at, "losses.region": self.losses.region,
            "losses.order": self.losses.order, "data.cache_mb": self.data.cache_mb,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        for key, value in (("optim.lr", self.optim.lr), ("optim.generator_lr", self.optim.generator_lr),
                           ("eval.knn_temperature", self.eval.knn_temperature),
                           ("eval.finetune_lr", self.eval.finetune_lr),
                           ("losses.region_temperature", self.losses.region_temperature)):
            if not value > 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1) (0 = no validation split), got "
                              f"{self.data.val_fraction}")
        for source in self.eval.datasets:
            try:
                dataset_name(source)
            except ValueError as exc:
                raise ConfigError(f"eval.datasets: {exc}") from None
        if self.losses.order_bins < 2:
            raise ConfigError(f"losses.order_bins must be >= 2, got {self.losses.order_bins}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 for contrastive learning, got {self.batch_size}")
        if self.view.size > self.data.size or self.view.frames > self.data.frames:
            raise ConfigError(
                f"the view ({self.view.frames}x{self.view.size}) cannot be larger than the raw clip "
                f"({self.data.frames}x{self.data.size}): lower view.* or raise data.*"
            )
        from paramcrop.crops.adversary import OPTIMIZERS, SCHEDULES

        if self.optim.generator_schedule not in SCHEDULES:
            raise ConfigError(f"optim.generator_schedule must be one of {', '.join(SCHEDULES)}, got "
                              f"{self.optim.generator_schedule!r}")
        if self.optim.generator_optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.generator_optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                              f"{self.optim.generator_optimizer!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for section, registry, name_key, n_positional in (
            ("crop", CROPS, "method", 1), ("framework", FRAMEWORKS, "name", 2), ("backbone", BACKBONES, "name", 0),
            ("head", HEADS, "name", 3),
        ):
            params = dict(getattr(self, section))
            name = params.pop(name_key, None)
            if name is None:
                raise ConfigError(f"{section}.{name_key} is required; choose one of {', '.join(registry.names())}")
            try:
                registry.get(name)
            except ValueError as exc:
                raise ConfigError(f"{section}.{name_key}: {exc}") from None
            _check_keys(section, params, registry.valid_keys(name, n_positional), f" for {section} {name!r}")
        _check_keys("augment", self.augment, constructor_keys(ClipAugment))
        # the crop, the augmentation and the head are cheap to build: build them to check their values too
        from paramcrop.crops import create_crop

        name, params = self.component("crop")
        head_name, head_params = self.component("head")
        for section, build in (("crop", lambda: create_crop(name, (self.view.frames, self.view.size, self.view.size),
                                                            **params)),
                               ("augment", lambda: ClipAugment(**self.augment)),
                               ("head", lambda: create_head(head_name, 1, 1, 1, **head_params))):
            try:
                build()
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{section}: {exc}") from None

    def component(self, section: str) -> tuple[str, dict[str, Any]]:
        """``(name, constructor kwargs)`` of the ``crop``, ``framework``, ``backbone`` or ``head`` section."""
        params = dict(getattr(self, section))
        return params.pop(_COMPONENT_KEYS[section]), params


def _marked(cls: type, prefix: str, flag: str) -> dict[str, object]:
    """``{dotted key: metadata[flag]}`` of the fields of ``cls`` and its sections that carry ``flag``."""
    keys: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if flag in f.metadata:
            keys[prefix + f.name] = f.metadata[flag]
        elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            keys |= _marked(f.default_factory, f"{prefix}{f.name}.", flag)
    return keys


def bookkeeping_keys(cls: type | None = None, prefix: str = "") -> frozenset[str]:
    """The dotted keys of the fields marked :data:`BOOKKEEPING` in ``cls`` (default :class:`TrainConfig`)
    and its sections: ``{"data.workers", ..., "snapshot_every", "visualize_at"}``."""
    return frozenset(_marked(cls or TrainConfig, prefix, "bookkeeping"))


def component_selectors() -> dict[str, str]:
    """``{dotted key: the key that selects its component}`` of the fields marked :data:`GENERATOR`:
    ``{"optim.generator_lr": "crop.method", ...}``."""
    return {key: str(selector) for key, selector in _marked(TrainConfig, "", "selector").items()}


# --- helpers ------------------------------------------------------------------------------
_COMPONENT_KEYS = {"crop": "method", "framework": "name", "backbone": "name", "head": "name"}
def _check_keys(section: str, params: Mapping[str, Any], valid: list[str], what: str = "") -> None:
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}{what}; "
            f"valid keys: {', '.join(f'{section}.{k}' for k in valid) or '(none)'}"
        )


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}{where}; "
            f"valid keys: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} must be a mapping, got {value!r}")
            kwargs[name] = _from_dict(type(default), dict(value), f"{prefix}{name}.")
        elif isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} must be a mapping, got {value!r}")
            kwargs[name] = _merge_component(name, default, dict(value))
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, default)
    return cls(**kwargs)


def _merge_component(section: str, default: dict, value: dict) -> dict:
    """A new component name starts from its own defaults; the same name keeps the given keys."""
    if _COMPONENT_KEYS.get(section) in value or not default:
        return value
    return {**default, **value}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Type-check a leaf against its default's type (ints accepted for floats; ``"auto"`` for the
    integer leaves in :data:`AUTO_KEYS`)."""
    if value == AUTO and key in AUTO_KEYS:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer{' or auto' if key in AUTO_KEYS else ''}, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    elif isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return value
