"""Study specs: a validated YAML description of an Optuna study over training configs.

The search space lives here, apart from the training code (optuna-examples style). Each
dimension is keyed by a dotted config key (``crop.strength``) or, for ``variants``, by any name::

    name: my-study
    data: synthetic                      # optional: overrides config.data.source
    config: {steps: 150, batch_size: 32} # the fixed training config (TrainConfig keys)
    search_space:
      crop:                              # named variants: each sets several keys at once
        type: variants
        choices:
          random: {crop.method: random}
          paramcrop: {crop.method: paramcrop, crop.strength: 1.0}
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      framework.name: {type: categorical, choices: [simclr, moco, byol]}
      crop.warmup_steps: {type: int, low: 0, high: 100, step: 50, when: {crop.method: paramcrop}}
    seeds: [0, 1, 2]                     # repeats: a `seed` dimension of the grid
    sampler: grid                        # grid (ablations), tpe, random
    pruner: none                         # none, median, hyperband (fed by eval.every)
    n_trials: null                       # total finished trials; default: the grid size
    timeout: null                        # seconds for this invocation
    objective: {metric: eval/val/knn_top1, direction: maximize}   # or a list: multi-objective
    compare:                             # optional: the comparisons the study is read by
      - {baseline: random, against: [paramcrop]}

The default objective, and so the pruner's metric, is the validation split's kNN top-1
(``eval/val/knn_top1``, see ``data.val_fraction``): model selection never sees test labels. The test
split's ``eval/knn_top1`` is still measured and logged in every run, for the record; an objective on
it selects on test labels.

``compare`` declares the study's comparisons (``analyze compare --study NAME`` makes them, Holm
adjustment with ``--adjust holm`` over them): each entry compares every ``against`` label with its
``baseline`` label, paired by seed. A **label** names one value of one search-space dimension, as the
trial run names spell it: a variant name of a ``variants`` dimension (``paramcrop``), or
``DIMENSION=VALUE`` for a variants or categorical dimension (``crop=paramcrop``,
``backbone.name=r3d_18``); baseline and against labels of one entry name values of the same
dimension, and a comparison is made within each combination of the other dimensions' values
(:func:`analysis.family.declared_pairs`). Analysis-only: it is no part of a study's identity
(:meth:`StudySpec.identity`), so declaring comparisons does not stop a study from resuming.

Every config the space can produce is validated when the spec is loaded, so a bad key, range
or component name fails before any study or MLflow experiment is created.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError, flatten

SPEC_DIR = Path(__file__).parent / "specs"
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
DIMENSION_TYPES = ("categorical", "int", "float", "variants")
DEFAULT_STUDY_OBJECTIVE = sinks.EVAL_VAL_KNN_TOP1
"""What a study optimises unless its spec says otherwise: the validation split's kNN top-1 (the test
split stays out of model selection)."""
VARIANT_PREFIX = "variant:"  # Optuna param name of a variants dimension: "variant:<name>"


class SpecError(ValueError):
    """A study spec that cannot run; the message names the key and the fix."""


@dataclass
class Dimension:
    """One axis of the search space."""

    key: str  # dotted config key, or the name of a variants dimension
    type: str
    choices: Any = None  # list (categorical) or {name: {dotted key: value}} (variants)
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, Any] = field(default_factory=dict)

    @property
    def param_name(self) -> str:
        """The Optuna parameter name."""
        return VARIANT_PREFIX + self.key if self.type == "variants" else self.key

    def grid_values(self) -> list[Any]:
        if self.type in ("categorical", "variants"):
            return list(self.choices)
        if self.step is None:
            raise SpecError(f"search_space.{self.key}: a grid needs discrete values; give `step` or use a "
                            f"categorical dimension")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(n)]
        return [int(round(v)) for v in values] if self.type == "int" else values

    def overrides(self, value: Any) -> dict[str, Any]:
        """Dotted config overrides for a sampled ``value``."""
        return dict(self.choices[value]) if self.type == "variants" else {self.key: value}

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.param_name, list(self.choices))
        if self.type == "variants":
            return trial.suggest_categorical(self.param_name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Objective:
    metric: str = DEFAULT_STUDY_OBJECTIVE
    direction: str = "maximize"


@dataclass
class Comparison:
    """A declared comparison: each ``against`` label against the ``baseline`` label (module doc)."""

    baseline: str
    against: list[str]


@dataclass
class StudySpec:
    name: str
    description: str = ""
    data: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    search_space: list[Dimension] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    sampler: str = "grid"
    sampler_seed: int = 0
    pruner: str = "none"
    n_trials: int | None = None
    timeout: float | None = None
    objectives: list[Objective] = field(default_factory=lambda: [Objective()])
    heartbeat: int = 30  # seconds between a running trial's heartbeats; stale after 3 missed
    compare: list[Comparison] = field(default_factory=list)

    # --- the space ---------------------------------------------------------------------------
    @property
    def dimensions(self) -> list[Dimension]:
        """The search space including the ``seed`` dimension of ``seeds``."""
        dims = list(self.search_space)
        if self.seeds:
            dims.append(Dimension(key="seed", type="categorical", choices=list(self.seeds)))
        return dims

    def grid(self) -> dict[str, list[Any]]:
        """Optuna ``GridSampler`` search space: param name -> values."""
        return {d.param_name: d.grid_values() for d in self.dimensions}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values()) if self.dimensions else 1

    def base_config(self) -> TrainConfig:
        overrides = flatten(self.config)
        if self.data is not None:
            overrides["data.source"] = self.data
        return TrainConfig().with_overrides(overrides)

    def config_for(self, values: Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        """The trial config for Optuna param values (param name -> value) and the dotted overrides."""
        overrides: dict[str, Any] = {}
        for dim in self.dimensions:
            if dim.param_name in values:
                overrides.update(dim.overrides(values[dim.param_name]))
        return self.base_config().with_overrides(overrides), overrides

    def sample(self, trial) -> tuple[TrainConfig, dict[str, Any]]:
        """Sample every dimension whose ``when`` condition holds; returns (config, overrides)."""
        values: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for dim in self.dimensions:
            current = {**flatten(self.base_config().to_dict()), **overrides}
            if all(current.get(k) == v for k, v in dim.when.items()):
                values[dim.param_name] = dim.suggest(trial)
                overrides.update(dim.overrides(values[dim.param_name]))
        return self.config_for(values)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    # --- loading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudySpec":
        data = dict(data)
        allowed = ["name", "description", "data", "config", "search_space", "seeds", "sampler", "pruner",
                   "n_trials", "timeout", "objective", "heartbeat", "compare"]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise SpecError(f"unknown key(s) {', '.join(unknown)} in the study spec; valid keys: {', '.join(allowed)}")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SpecError("the study spec needs a `name` (a non-empty string)")
        sampler = data.get("sampler", "grid")
        sampler_seed = 0
        if isinstance(sampler, Mapping):
            sampler, sampler_seed = sampler.get("type", "grid"), int(sampler.get("seed", 0))
        if sampler not in SAMPLERS:
            raise SpecError(f"sampler {sampler!r} is unknown; valid samplers: {', '.join(SAMPLERS)}")
        pruner = data.get("pruner", "none") or "none"
        if pruner not in PRUNERS:
            raise SpecError(f"pruner {pruner!r} is unknown; valid pruners: {', '.join(PRUNERS)}")
        spec = cls(
            name=name.strip(),
            description=str(data.get("description", "")),
            data=data.get("data"),
            config=_mapping("config", data.get("config") or {}),
            search_space=[_dimension(k, v) for k, v in _mapping("search_space", data.get("search_space") or {}).items()],
            seeds=_int_list("seeds", data.get("seeds") or []),
            sampler=sampler,
            sampler_seed=sampler_seed,
            pruner=pruner,
            n_trials=_optional_positive("n_trials", data.get("n_trials"), int),
            timeout=_optional_positive("timeout", data.get("timeout"), float),
            objectives=_objectives(data.get("objective")),
            heartbeat=int(_optional_positive("heartbeat", data.get("heartbeat"), int) or 30),
            compare=_comparisons(data.get("compare")),
        )
        spec.validate()
        return spec

    @classmethod
    def from_yaml(cls, text: str, source: str = "the spec") -> "StudySpec":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{source} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise SpecError(f"{source} must be a YAML mapping with at least a `name`")
        return cls.from_dict(data)

    def validate(self) -> None:
        """Build every config the space can produce (ranges at their ends); raise :class:`SpecError`."""
        try:
            self.base_config()
        except ConfigError as exc:
            raise SpecError(f"config: {exc}") from None
        if len(self.objectives) > 1 and self.pruner != "none":
            raise SpecError("pruning is not supported with several objectives: set pruner: none")
        if self.sampler == "grid" and any(d.when for d in self.search_space):
            raise SpecError("`when` conditions do not combine with the grid sampler: use a `variants` dimension")
        if self.pruner != "none" and self.base_config().eval.every == 0:
            raise SpecError("a pruner needs periodic evaluation: set config.eval.every (steps between evaluations)")
        if self.sampler == "grid":
            self.grid()  # every dimension must be discrete
        self.check_comparisons()
        base = flatten(self.base_config().to_dict())
        for values in itertools.islice(self._points(self.dimensions, base, {}), 512):
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            try:
                cfg, _ = self.config_for(values)
            except ConfigError as exc:
                raise SpecError(f"search_space: the point ({shown}) gives an invalid config: {exc}") from None
            self.check_measured(cfg, f"the point ({shown})" if values else "config")

    # --- declared comparisons --------------------------------------------------------------------
    def labels(self) -> dict[str, tuple[str, str] | None]:
        """Every label a declared comparison may use -> ``(dimension, value as the run names spell
        it)``; None for a bare variant name that two variants dimensions share (ambiguous)."""
        out: dict[str, tuple[str, str] | None] = {}
        for dim in self.search_space:
            if dim.type not in ("variants", "categorical"):
                continue
            for choice in dim.choices:
                value = format_value(choice)
                out[f"{dim.key}={value}"] = (dim.key, value)
                if dim.type == "variants":
                    out[value] = None if value in out else (dim.key, value)
        return out

    def label(self, label: str, where: str = "compare") -> tuple[str, str]:
        """``(dimension, value)`` of a declared label; :class:`SpecError` naming it and the valid ones."""
        labels = self.labels()
        if label not in labels:
            valid = ", ".join(k for k, v in labels.items() if v is not None) or "none (no variants or categorical dimension)"
            raise SpecError(f"{where}: unknown label {label!r}; valid labels: {valid}")
        if labels[label] is None:
            dims = [d.key for d in self.search_space if d.type == "variants" and label in d.choices]
            raise SpecError(f"{where}: label {label!r} is a variant of {' and '.join(dims)}: write "
                            + " or ".join(f"{d}={label}" for d in dims))
        return labels[label]

    def keep_only(self, labels: list[str]) -> None:
        """Keep only the named values of their dimensions (labels as in ``compare``; ``--only``): a block
        of the grid. Declared comparisons that name a dropped value are dropped with it."""
        if not labels:
            raise SpecError("--only needs at least one label, e.g. --only paramcrop,paramcrop-l0")
        chosen: dict[str, set[str]] = {}
        for label in labels:
            dim, value = self.label(label, "--only")
            chosen.setdefault(dim, set()).add(value)
        for dim in self.search_space:
            if dim.key in chosen:
                kept = [c for c in dim.choices if format_value(c) in chosen[dim.key]]
                dim.choices = {c: dim.choices[c] for c in kept} if dim.type == "variants" else kept
        left = self.labels()
        compare = [Comparison(c.baseline, [a for a in c.against if a in left]) for c in self.compare]
        self.compare = [c for c in compare if c.baseline in left and c.against]

    def holds_block(self, block: "StudySpec") -> bool:
        """Whether ``block``'s grid is part of this spec's: the same dimensions, each of its values one of
        this spec's with the same definition (a block of seeds or values, ``study run --seeds/--only``)."""
        if [(d.key, d.type) for d in block.search_space] != [(d.key, d.type) for d in self.search_space]:
            return False
        for mine, theirs in zip(self.search_space, block.search_space):
            if theirs.type == "variants":
                if any(mine.choices.get(k) != v for k, v in theirs.choices.items()):
                    return False
            elif theirs.type == "categorical":
                if not set(map(format_value, theirs.choices)) <= set(map(format_value, mine.choices)):
                    return False
            elif theirs != mine:
                return False
        return True

    def check_comparisons(self) -> None:
        """Each declared comparison names known labels, all of one dimension (:class:`SpecError`)."""
        for i, c in enumerate(self.compare):
            where = f"compare[{i}]"
            dim, _ = self.label(c.baseline, f"{where}.baseline")
            for label in c.against:
                other, _ = self.label(label, f"{where}.against")
                if other != dim:
                    raise SpecError(f"{where}: {label!r} is a value of {other}, the baseline {c.baseline!r} one of "
                                    f"{dim}: a comparison contrasts values of one dimension")
                if self.label(label) == self.label(c.baseline):
                    raise SpecError(f"{where}: {label!r} is the baseline itself")

    @staticmethod
    def identity(text: str) -> str:
        """A spec's YAML (:meth:`to_yaml`) without what only analyses read (``compare``): what must
        match for a study to resume."""
        data = yaml.safe_load(text) or {}
        data.pop("compare", None)
        return yaml.safe_dump(data, sort_keys=False)

    def check_measured(self, cfg: TrainConfig, where: str = "config") -> None:
        """Refuse an objective on the validation split (``eval/val/...``) for a config without one
        (``data.val_fraction: 0``): every trial would fail when it looks for the metric."""
        needs = [o.metric for o in self.objectives if o.metric.startswith(sinks.val_metric(""))]
        if needs and cfg.data.val_fraction == 0:
            raise SpecError(f"objective {needs[0]} is measured on the validation split, but {where} leaves "
                            f"none (data.val_fraction=0): raise data.val_fraction, or choose a "
                            f"test-split objective such as {sinks.EVAL_KNN_TOP1} (it selects on test labels)")

    def _points(self, dims: list[Dimension], current: dict[str, Any], values: dict[str, Any]):
        """Every combination of :func:`dim_points`, skipping dimensions whose ``when`` fails."""
        if not dims:
            yield dict(values)
            return
        dim, rest = dims[0], dims[1:]
        if not all(current.get(k) == v for k, v in dim.when.items()):
            yield from self._points(rest, current, values)
            return
        for point in dim_points(dim):
            yield from self._points(rest, {**current, **dim.overrides(point)}, {**values, dim.param_name: point})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)

    def as_dict(self) -> dict[str, Any]:
        space = {}
        for d in self.search_space:
            entry = {k: v for k, v in dataclasses.asdict(d).items() if k != "key" and v not in (None, False, {})}
            space[d.key] = entry
        objective = [dataclasses.asdict(o) for o in self.objectives]
        return {
            "name": self.name, "description": self.description, "data": self.data, "config": self.config,
            "search_space": space, "seeds": self.seeds,
            "sampler": {"type": self.sampler, "seed": self.sampler_seed}, "pruner": self.pruner,
            "n_trials": self.n_trials, "timeout": self.timeout,
            "objective": objective[0] if len(objective) == 1 else objective, "heartbeat": self.heartbeat,
            **({"compare": [dataclasses.asdict(c) for c in self.compare]} if self.compare else {}),
        }


def format_value(value: Any) -> str:
    """A parameter value for a run name: floats in at most 4 significant digits (``0.5``, ``1e-04``),
    everything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def dim_points(d: Dimension) -> list[Any]:
    """Values that exercise a dimension: all choices, or the two ends of a range."""
    if d.type in ("categorical", "variants"):
        return list(d.choices)
    ends = [d.low, d.high]
    return [int(v) for v in ends] if d.type == "int" else ends


def parse_seeds(text: str) -> list[int]:
    """``"5-9"`` -> ``[5, 6, 7, 8, 9]``, ``"0-2,7"`` -> ``[0, 1, 2, 7]``: the seeds of a block
    (``study run --seeds``); :class:`SpecError` for anything else, a repeat or a negative seed."""
    seeds: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise SpecError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range like 5-9") from None
        if first < 0 or last < first:
            raise SpecError(f"--seeds {text!r}: {part.strip()!r} is not a range of non-negative seeds, low-high")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"--seeds {text!r} names a seed twice")
    return seeds


def seeds_label(seeds: list[int]) -> str:
    """``[5, 6, 7, 9]`` -> ``"5-7,9"``: the block's part of its default study name."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


# --- parsing helpers ---------------------------------------------------------------------------
def _mapping(key: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be a mapping, got {value!r}")
    return dict(value)


def _int_list(key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SpecError(f"{key} must be a list of integers, got {value!r}")
    return list(value)


def _optional_positive(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SpecError(f"{key} must be a positive number (or null), got {value!r}")
    return kind(value)


def _objectives(value: Any) -> list[Objective]:
    if value is None:
        return [Objective()]
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            item = {"metric": item}
        if not isinstance(item, Mapping) or set(item) - {"metric", "direction"}:
            raise SpecError(f"objective entries are {{metric: NAME, direction: maximize|minimize}}, got {item!r}")
        direction = item.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise SpecError(f"objective direction must be maximize or minimize, got {direction!r}")
        out.append(Objective(str(item.get("metric", DEFAULT_STUDY_OBJECTIVE)), direction))
    return out


def _comparisons(value: Any) -> list[Comparison]:
    """``compare``: a list of ``{baseline: LABEL, against: LABEL | [LABEL, ...]}``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"compare must be a list of {{baseline: LABEL, against: [LABEL, ...]}}, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or set(item) != {"baseline", "against"}:
            raise SpecError(f"compare[{i}] must be {{baseline: LABEL, against: [LABEL, ...]}}, got {item!r}")
        against = item["against"] if isinstance(item["against"], list) else [item["against"]]
        if not against or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                  for x in [item["baseline"], *against]):
            raise SpecError(f"compare[{i}]: labels are strings (variant names or DIMENSION=VALUE), got {item!r}")
        out.append(Comparison(str(item["baseline"]), [str(x) for x in against]))
    return out


def _dimension(key: str, value: Any) -> Dimension:
    where = f"search_space.{key}"
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be a mapping with a `type` ({', '.join(DIMENSION_TYPES)})")
    valid = {"type", "choices", "low", "high", "step", "log", "when"}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(sorted(valid))}")
    kind = value.get("type")
    if kind not in DIMENSION_TYPES:
        raise SpecError(f"{where}.type must be one of {', '.join(DIMENSION_TYPES)}, got {kind!r}")
    when = _mapping(f"{where}.when", value.get("when") or {})
    if kind == "categorical":
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.choices must be a non-empty list")
        return Dimension(key, kind, choices=choices, when=when)
    if kind == "variants":
        choices = value.get("choices")
        if not isinstance(choices, Mapping) or not choices:
            raise SpecError(f"{where}.choices must map variant names to {{dotted.key: value}} overrides")
        for name, overrides in choices.items():
            if not isinstance(overrides, Mapping):
                raise SpecError(f"{where}.choices.{name} must be a mapping of dotted config keys to values")
        return Dimension(key, kind, choices={str(k): flatten(v) for k, v in choices.items()}, when=when)
    low, high, step = value.get("low"), value.get("high"), value.get("step")
    number = int if kind == "int" else (int, float)
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, number):
            raise SpecError(f"{where}.{name} must be {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
    if not low < high:
        raise SpecError(f"{where}: low ({low}) must be smaller than high ({high})")
    log = bool(value.get("log", False))
    if log and low <= 0:
        raise SpecError(f"{where}: a log scale needs low > 0, got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise SpecError(f"{where}.step must be a positive number, got {step!r}")
    if log and step is not None:
        raise SpecError(f"{where}: `step` and `log` cannot be combined (Optuna)")
    return Dimension(key, kind, low=float(low), high=float(high), step=step, log=log, when=when)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_spec(spec: str | Path) -> StudySpec:
    """A built-in spec by name, or a YAML file by path."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpecError(f"study spec file {str(path)!r} does not exist; built-in specs: {', '.join(builtin_names())}")
        return StudySpec.from_yaml(path.read_text(), source=str(path))
    builtin = SPEC_DIR / f"{spec}.yaml"
    if not builtin.is_file():
        raise SpecError(f"{spec!r} is neither a built-in study spec nor a YAML file; built-in specs: "
                        f"{', '.join(builtin_names())}")
    return StudySpec.from_yaml(builtin.read_text(), source=f"built-in spec {spec!r}")
