"""Random cubic crop: RandomResizedCrop extended to video, the baseline."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from paramcrop.crops.base import CROPS, CropMethod, check_range, sample_spatial_extents
from paramcrop.crops.dof import DEFAULT_DOF, DEFAULT_FIXED_EXTENT, parse_dof


@CROPS.register("random")
class RandomCubicCrop(CropMethod):
    """Per view and per sample: an area fraction, an aspect ratio and a temporal extent, placed
    uniformly inside the clip. The two views are independent.

    The documented distributions (each view, each sample): area ``a ~ U(area)``, aspect
    ``r = exp(U(log aspect))`` (``r = 1`` when ``aspect`` is not controlled), ``hx = sqrt(a r)``,
    ``hy = sqrt(a / r)`` clamped to 1; ``ht ~ U(duration)``; centre ``(1 - h) * U(-1, 1)`` per axis.
    ``dof`` (:mod:`paramcrop.crops.dof`) chooses which of them are drawn; the others are fixed as
    documented there (``spatiotemporal``, the default, draws all).

    Args:
        size: output ``(t, h, w)``.
        area: range of the spatial area fraction (CVRL: 0.3-1).
        aspect: range of width/height (CVRL: 0.5-2), sampled log-uniformly.
        duration: range of the temporal extent as a fraction of the clip (default 0.5-1).
        dof: degrees of freedom: a preset name or a list of parameters.
        fixed_extent_xy, fixed_extent_t: spatial and temporal half-extents of an uncontrolled extent whose position
            is controlled (e.g. ``dof=position``).
    """

    LABEL = "Random crop"

    def __init__(
        self,
        size: Sequence[int],
        area: Sequence[float] = (0.3, 1.0),
        aspect: Sequence[float] = (0.5, 2.0),
        duration: Sequence[float] = (0.5, 1.0),
        dof: str | Sequence[str] = DEFAULT_DOF,
        fixed_extent_xy: float = DEFAULT_FIXED_EXTENT[0],
        fixed_extent_t: float = DEFAULT_FIXED_EXTENT[1],
    ) -> None:
        super().__init__(size)
        self.area = check_range("area", area, 1e-3, 1.0)
        self.aspect = check_range("aspect", aspect, 1e-2, 1e2)
        self.duration = check_range("duration", duration, 1e-3, 1.0)
        self.dof = parse_dof(dof, fixed_extent_xy, fixed_extent_t)

    def draw_parts(self, batch: int, device: torch.device, free_aspect: bool = True) -> tuple[Tensor, ...]:
        """One view's draws ``(hxy (B, 2), ht (B, 1), uxy (B, 2), ut (B, 1))``: half-extents and unit
        positions in [-1, 1] (the centre is ``(1 - h) * u``), as :meth:`DegreesOfFreedom.compose` takes them."""
        hxy = sample_spatial_extents(batch, self.area, self.aspect, device, free_aspect=free_aspect)
        ht = torch.empty(batch, 1, device=device).uniform_(*self.duration)
        u = torch.rand(batch, 3, device=device) * 2 - 1
        return hxy, ht, u[:, :2], u[:, 2:]

    def _one_view(self, batch: int, device: torch.device) -> Tensor:
        # every draw is made whatever the dof (one random stream for every preset); unused ones are dropped
        return self.dof.compose(*self.draw_parts(batch, device, "aspect" in self.dof), batch, device)

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        return self._one_view(batch, device), self._one_view(batch, device)
