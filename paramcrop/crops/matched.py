"""The matched random crop: a random cubic crop whose ranges give a chosen mean view IoU."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from paramcrop.crops.base import CROPS, CropMethod
from paramcrop.crops.dof import DEFAULT_DOF, DEFAULT_FIXED_EXTENT
from paramcrop.crops.paramcrop import ParamCrop
from paramcrop.crops.random import RandomCubicCrop
from paramcrop.geometry import view_iou

MATCH_SAMPLES, MATCH_SEED = 20_000, 0  # the fixed Monte-Carlo sample that defines a crop's mean view IoU
MATCH_TARGETS = ("paramcrop-init",)


def mean_view_iou(crop: CropMethod, samples: int = MATCH_SAMPLES, seed: int = MATCH_SEED) -> float:
    """Monte-Carlo mean volume IoU of ``crop``'s two views at step 0: ``samples`` pairs drawn on the CPU
    from ``seed`` (on a forked RNG: the caller's random stream is untouched)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        c1, c2 = crop.sample_cubes(samples, torch.device("cpu"), 0)
        return float(view_iou(c1.float(), c2.float()).mean())


def matched_ranges(lower: float, aspect: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """The one-parameter family of :class:`MatchedRandomCrop`: area and duration ``[a, 1]``, aspect
    ``[max(r0, a), min(r1, 1 / a)]`` (the given aspect range at small ``a``, square boxes at ``a = 1``)."""
    return {"area": (lower, 1.0), "duration": (lower, 1.0),
            "aspect": (min(1.0, max(aspect[0], lower)), max(1.0, min(aspect[1], 1.0 / lower)))}


@lru_cache(maxsize=64)
def _match_lower(target: float, size: tuple[int, ...], aspect: tuple[float, float], dof: tuple[str, ...],
                 fixed: tuple[float, float]) -> float:
    def iou(lower: float) -> float:
        return mean_view_iou(RandomCubicCrop(size, **matched_ranges(lower, aspect), dof=list(dof),
                                             fixed_extent_xy=fixed[0], fixed_extent_t=fixed[1]))

    lo, hi = 1e-3, 1.0
    reach = (iou(lo), iou(hi))
    if not reach[0] <= target <= reach[1]:
        raise ValueError(f"iou {target:.4f} is outside the mean view IoU this family reaches "
                         f"({reach[0]:.4f} to {reach[1]:.4f}) with aspect {aspect} and dof {'+'.join(dof)}: choose an "
                         f"iou in that range")
    for _ in range(20):  # 2**-20 on a: far below the Monte-Carlo error (~0.002)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if iou(mid) < target else (lo, mid)
    return (lo + hi) / 2


@CROPS.register("matched")
class MatchedRandomCrop(RandomCubicCrop):
    """A random cubic crop whose ranges are chosen so that its mean view IoU equals ``iou``: the random
    crop matched to a reference disparity, separating "easy views" from "learned views".

    The ranges come from the one-parameter family of :func:`matched_ranges` (area and duration
    ``[a, 1]``, the aspect range narrowing to square as ``a -> 1``); ``a`` is found by bisection on
    :func:`mean_view_iou` (a fixed-seed Monte-Carlo estimate, 20,000 pairs: deterministic, so the same
    ``iou`` always gives the same ranges; the mean IoU rises with ``a``). The chosen ranges are the
    attributes ``area``, ``aspect``, ``duration``.

    Args:
        size: output ``(t, h, w)``.
        iou: the target mean view IoU, a number in (0, 1], or ``paramcrop-init``: the mean IoU of a
            default ParamCrop's initial views with the same ``dof`` (its views before any adversarial
            update, i.e. the lambda = 0 control's).
        aspect: the aspect range at small ``a`` (default CVRL's 0.5-2).
        dof, fixed_extent_xy, fixed_extent_t: as the random crop.
    """

    LABEL = "Matched random crop"

    def __init__(
        self,
        size: Sequence[int],
        iou: float | str = "paramcrop-init",
        aspect: Sequence[float] = (0.5, 2.0),
        dof: str | Sequence[str] = DEFAULT_DOF,
        fixed_extent_xy: float = DEFAULT_FIXED_EXTENT[0],
        fixed_extent_t: float = DEFAULT_FIXED_EXTENT[1],
    ) -> None:
        super().__init__(size, aspect=aspect, dof=dof, fixed_extent_xy=fixed_extent_xy, fixed_extent_t=fixed_extent_t)
        if isinstance(iou, str):
            if iou not in MATCH_TARGETS:
                raise ValueError(f"iou must be a number in (0, 1] or one of {', '.join(MATCH_TARGETS)}, got {iou!r}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(MATCH_SEED)  # the reference generator's initial weights
                reference = ParamCrop(size, dof=sorted(self.dof.controlled), fixed_extent_xy=fixed_extent_xy,
                                      fixed_extent_t=fixed_extent_t)
            target = mean_view_iou(reference)
        elif isinstance(iou, bool) or not 0 < iou <= 1:
            raise ValueError(f"iou must be a number in (0, 1] or one of {', '.join(MATCH_TARGETS)}, got {iou!r}")
        else:
            target = float(iou)
        self.target_iou = target
        self.lower = _match_lower(round(target, 6), tuple(self.size), self.aspect, tuple(sorted(self.dof.controlled)),
                                  self.dof.fixed_extent)
        ranges = matched_ranges(self.lower, self.aspect)
        self.area, self.aspect, self.duration = ranges["area"], ranges["aspect"], ranges["duration"]
