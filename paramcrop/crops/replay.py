"""Replay crop: a finished learned-crop run's generator snapshots, replayed without adversarial updates.

The control that separates "the schedule of views helps" from "the adversary reacting to this
backbone helps": the views follow the reference run's generator along training, but nothing here
learns (no optimiser, lambda 0, the cubes are detached).

**Snapshots** (written by :class:`~paramcrop.train.Trainer` for a crop with learned parameters every
``snapshot_every`` steps, and at step 0): ``<run>/generator-snapshots/step_<s:06d>.pt``, each
``{"step": s, "crop": {"method": ..., <its resolved constructor keys>}, "state": crop.state_dict()}``
taken *before* step ``s`` (the generator that cut step ``s``'s views). They are logged as the run's
MLflow artifacts under ``generator-snapshots/``.

**Replay**: at step ``s`` the crop uses the latest snapshot at or before ``s``. Its inner crop is
built from the snapshot's ``crop`` keys exactly as the reference built it (so building it consumes the
random stream as the reference's did) and draws its noise the same way: a replay run with the
reference's seed and config draws the same noise, and with ``snapshot_every: 1`` it reproduces the
reference's cubes at every step.

``source``: a local folder (a run folder holding ``generator-snapshots/``, or that folder itself). A
reference (``runs:/<run id>``: an MLflow run's snapshots; ``trial:<variant>``: this study's trial of
that variant with the same other params, seed included) is resolved into a folder by ``studies/``
before the trainer is built (:mod:`studies.replay`); this module reads files only.
"""
from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from paramcrop.crops.base import CROPS, CropMethod, create_crop

SNAPSHOT_DIR = "generator-snapshots"
REFERENCE_SCHEMES = ("runs:/", "trial:")


def snapshot_path(run_dir: Path, step: int) -> Path:
    """Where the snapshot taken before step ``step`` goes: ``<run_dir>/generator-snapshots/step_<s:06d>.pt``."""
    return Path(run_dir) / SNAPSHOT_DIR / f"step_{step:06d}.pt"


def save_snapshot(run_dir: Path, step: int, crop_config: Mapping[str, Any], crop: nn.Module) -> Path:
    """Write the snapshot of ``crop`` before ``step`` atomically; ``crop_config``: its resolved
    ``{"method": ..., **keys}``. Returns the path."""
    from paramcrop.checkpoint import save_atomic

    return save_atomic({"step": int(step), "crop": dict(crop_config),
                        "state": {k: v.detach().cpu() for k, v in crop.state_dict().items()}}, snapshot_path(run_dir, step))


def is_reference(source: str) -> bool:
    """Whether ``source`` names a run or trial (resolved by ``studies/``) rather than a folder."""
    return str(source).startswith(REFERENCE_SCHEMES)


def load_snapshots(source: str | Path) -> list[dict]:
    """The snapshots in ``source`` (a run folder or its ``generator-snapshots/``), by step; ``ValueError``
    naming the folder when there are none."""
    folder = Path(source)
    if (folder / SNAPSHOT_DIR).is_dir():
        folder = folder / SNAPSHOT_DIR
    files = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"crop.source {str(source)!r} holds no generator snapshots (step_*.pt): point it at a "
                         f"finished learned-crop run's folder (or its {SNAPSHOT_DIR}/), or runs:/<run id> in a study")
    snapshots = sorted((torch.load(f, map_location="cpu", weights_only=True) for f in files), key=lambda s: s["step"])
    methods = {s["crop"]["method"] for s in snapshots}
    if len(methods) != 1 or methods == {"replay"}:
        raise ValueError(f"crop.source {str(source)!r}: the snapshots must come from one learned crop, got {methods}")
    return snapshots


@CROPS.register("replay")
class ReplayCrop(CropMethod):
    """Replays a learned crop's generator snapshots (module doc). Args: ``size`` output ``(t, h, w)``;
    ``source`` the snapshots' folder, or a reference that ``studies/`` resolves (``runs:/<id>``,
    ``trial:<variant>``)."""

    LABEL = "Replayed crop"

    def __init__(self, size: Sequence[int], source: str = "") -> None:
        super().__init__(size)
        if not isinstance(source, str) or not source:
            raise ValueError("the replay crop needs crop.source: a finished learned-crop run's folder, runs:/<run id> "
                             "or trial:<variant> (in a study)")
        self.source = source
        self.snapshots: list[dict] = []
        self.inner: CropMethod | None = None
        self.loaded_step: int | None = None
        if not is_reference(source):
            self.snapshots = load_snapshots(source)
            config = dict(self.snapshots[0]["crop"])
            self.inner = create_crop(config.pop("method"), size, **config)
            self.inner.requires_grad_(False)
        self.steps_saved = [s["step"] for s in self.snapshots]

    def generator_parameters(self) -> list[nn.Parameter]:
        return []  # nothing learns: no optimiser

    def snapshot_step(self, step: int) -> int:
        """The step of the snapshot in force at ``step``: the latest at or before it."""
        k = bisect.bisect_right(self.steps_saved, step) - 1
        if k < 0:
            raise ValueError(f"crop.source {self.source!r} has no snapshot at or before step {step} (its first is at "
                             f"step {self.steps_saved[0]})")
        return self.steps_saved[k]

    def _use(self, step: int) -> CropMethod:
        if self.inner is None:
            raise ValueError(f"crop.source {self.source!r} is a reference: `paramcrop study run` resolves it into a "
                             f"folder before training; elsewhere give the folder of the run's snapshots")
        wanted = self.snapshot_step(step)
        if wanted != self.loaded_step:
            self.inner.load_state_dict(self.snapshots[self.steps_saved.index(wanted)]["state"])
            self.loaded_step = wanted
        return self.inner

    def cubes(self, clips: Tensor, step: int) -> tuple[Tensor, Tensor]:
        inner = self._use(step)
        with torch.no_grad():
            c1, c2 = inner.cubes(clips, step)
        return c1, c2

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        inner = self._use(step)
        with torch.no_grad():
            c1, c2 = inner.sample_cubes(batch, device, step)
        return c1, c2

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.loaded_step = None  # a checkpoint's weights: the next step loads its snapshot again
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
