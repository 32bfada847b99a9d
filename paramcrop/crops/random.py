"""Random cubic crop (SPEC 3.2): RandomResizedCrop extended to video, the baseline."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from paramcrop.crops.base import CROPS, CropMethod, check_range, place_uniformly, sample_spatial_extents


@CROPS.register("random")
class RandomCubicCrop(CropMethod):
    """Per view and per sample: an area fraction, an aspect ratio and a temporal extent, placed
    uniformly inside the clip. The two views are independent.

    Args:
        size: output ``(t, h, w)``.
        area: range of the spatial area fraction (CVRL: 0.3-1).
        aspect: range of width/height (CVRL: 0.5-2), sampled log-uniformly.
        duration: range of the temporal extent as a fraction of the clip (default 0.5-1).
    """

    def __init__(
        self,
        size: Sequence[int],
        area: Sequence[float] = (0.3, 1.0),
        aspect: Sequence[float] = (0.5, 2.0),
        duration: Sequence[float] = (0.5, 1.0),
    ) -> None:
        super().__init__(size)
        self.area = check_range("area", area, 1e-3, 1.0)
        self.aspect = check_range("aspect", aspect, 1e-2, 1e2)
        self.duration = check_range("duration", duration, 1e-3, 1.0)

    def _one_view(self, batch: int, device: torch.device) -> Tensor:
        hxy = sample_spatial_extents(batch, self.area, self.aspect, device)
        ht = torch.empty(batch, 1, device=device).uniform_(*self.duration)
        half = torch.cat([hxy, ht], -1)
        return torch.cat([place_uniformly(half), half], -1)

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        return self._one_view(batch, device), self._one_view(batch, device)
