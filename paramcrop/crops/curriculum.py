"""Curriculum crop: a random cubic crop whose ranges move from easy to hard along training.

The hand-made schedule a reviewer asks for first: does ParamCrop help because its views go "from
easy to hard", which a fixed schedule could do too? At step ``s`` of ``steps`` the progress is
``p = s / (steps - 1)`` (0 at the first step, 1 at the last; clamped to [0, 1]) and each range's
ends are interpolated, ``low(s) = start_low + w(p) * (end_low - start_low)`` (and ``high`` alike),
with the schedule's weight:

- ``linear`` (default): ``w(p) = p``;
- ``cosine``: ``w(p) = (1 - cos(pi p)) / 2`` (slow at both ends);
- ``step``: ``stages`` equal stages, ``w(p) = min(1, floor(p * stages) / (stages - 1))`` (the start
  ranges in the first stage, the end ranges in the last).

The cube is then drawn as :class:`~paramcrop.crops.random.RandomCubicCrop` draws it with the
ranges in force. The total ``steps`` is a constructor key; left unset (``null``), the trainer fills
it with the run's ``steps`` (a crop with a ``steps`` key gets the run's, recorded in its config).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from paramcrop.crops.base import CROPS, check_range
from paramcrop.crops.dof import DEFAULT_DOF, DEFAULT_FIXED_EXTENT
from paramcrop.crops.random import RandomCubicCrop

SCHEDULES = ("linear", "cosine", "step")


def schedule_weight(schedule: str, progress: float, stages: int = 4) -> float:
    """The weight ``w(p)`` in [0, 1] of the end ranges at training progress ``p`` in [0, 1] (module doc)."""
    p = min(1.0, max(0.0, progress))
    if schedule == "linear":
        return p
    if schedule == "cosine":
        return (1 - math.cos(math.pi * p)) / 2
    if schedule == "step":
        return min(1.0, math.floor(p * stages) / (stages - 1))
    raise ValueError(f"unknown curriculum schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


@CROPS.register("curriculum")
class CurriculumCrop(RandomCubicCrop):
    """A random cubic crop with ranges scheduled from ``start_*`` to ``area``/``duration``/``aspect``.

    Args:
        size: output ``(t, h, w)``.
        area, aspect, duration: the end (hard) ranges; default the random crop's (CVRL's) ranges.
        start_area, start_duration: the start (easy) ranges (default 0.9-1: nearly whole views).
        start_aspect: the start aspect range; ``null`` = the end's aspect range throughout.
        schedule: ``linear``, ``cosine`` or ``step`` (module doc).
        stages: the number of stages of ``step`` (>= 2).
        steps: the training steps the schedule spans; ``null`` = the run's ``steps`` (filled in by the trainer).
        dof, fixed_extent_xy, fixed_extent_t: as the random crop.
    """

    LABEL = "Curriculum crop"

    def __init__(
        self,
        size: Sequence[int],
        area: Sequence[float] = (0.3, 1.0),
        aspect: Sequence[float] = (0.5, 2.0),
        duration: Sequence[float] = (0.5, 1.0),
        start_area: Sequence[float] = (0.9, 1.0),
        start_duration: Sequence[float] = (0.9, 1.0),
        start_aspect: Sequence[float] | None = None,
        schedule: str = "linear",
        stages: int = 4,
        steps: int | None = None,
        dof: str | Sequence[str] = DEFAULT_DOF,
        fixed_extent_xy: float = DEFAULT_FIXED_EXTENT[0],
        fixed_extent_t: float = DEFAULT_FIXED_EXTENT[1],
    ) -> None:
        super().__init__(size, area, aspect, duration, dof, fixed_extent_xy, fixed_extent_t)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown curriculum schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        if isinstance(stages, bool) or int(stages) != stages or stages < 2:
            raise ValueError(f"stages must be an integer >= 2, got {stages}")
        if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
            raise ValueError(f"steps must be a positive integer (or null: the run's steps), got {steps}")
        self.end = {"area": self.area, "aspect": self.aspect, "duration": self.duration}
        self.start = {"area": check_range("start_area", start_area, 1e-3, 1.0),
                      "aspect": self.aspect if start_aspect is None else check_range("start_aspect", start_aspect,
                                                                                     1e-2, 1e2),
                      "duration": check_range("start_duration", start_duration, 1e-3, 1.0)}
        self.schedule, self.stages, self.steps = schedule, int(stages), None if steps is None else int(steps)

    def ranges_at(self, step: int) -> dict[str, tuple[float, float]]:
        """The ``area``, ``aspect`` and ``duration`` ranges in force at ``step`` (module doc)."""
        if self.steps is None:
            raise ValueError("the curriculum crop needs its total `steps` (crop.steps; the trainer fills it with "
                             "the run's steps)")
        w = schedule_weight(self.schedule, step / max(1, self.steps - 1), self.stages)
        return {k: (s[0] + w * (self.end[k][0] - s[0]), s[1] + w * (self.end[k][1] - s[1]))
                for k, s in self.start.items()}

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        ranges = self.ranges_at(step)
        self.area, self.aspect, self.duration = ranges["area"], ranges["aspect"], ranges["duration"]
        return super().sample_cubes(batch, device, step)
