"""CVRL crop (Qian et al., CVPR 2021): power-law temporal interval sampling and a
temporally consistent spatial crop per view.

Each view spans a fixed fraction ``duration`` of the raw clip (CVRL's fixed-length clips cut
from a longer video). With ``M`` the room left for the start points, the gap between the two
starts, ``delta in [0, M]``, has density proportional to ``1 - (delta / M) ** power``; then
``start1 ~ U[0, M - delta)``, ``start2 = start1 + delta`` and the order is shuffled. The spatial
box (area and aspect as in the random crop) is one per view, shared by all its frames; the
clip-consistent flip is applied afterwards by :mod:`paramcrop.augment`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from paramcrop.crops.base import CROPS, CropMethod, check_range, place_uniformly, sample_spatial_extents


def power_law_cdf(x: Tensor, power: float) -> Tensor:
    """CDF on [0, 1] of the density ``(p + 1) / p * (1 - x ** p)``."""
    return (x - x.pow(power + 1) / (power + 1)) * (power + 1) / power


def sample_power_law_interval(n: int, power: float, device: torch.device | str = "cpu") -> Tensor:
    """``n`` draws of ``delta / M`` in [0, 1] with density proportional to ``1 - x ** power``.

    Inverse-CDF sampling by bisection (the CDF has no closed-form inverse for general p):
    one uniform draw per sample, so a fixed seed gives a fixed sample.
    """
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    u = torch.rand(n, dtype=torch.float64, device=device)
    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(48):  # 2**-48: far below float32 resolution
        mid = (lo + hi) / 2
        below = power_law_cdf(mid, power) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2).float()


@CROPS.register("cvrl")
class CVRLCrop(CropMethod):
    """CVRL views. Args: ``size`` output ``(t, h, w)``; ``area``, ``aspect`` as the random crop;
    ``duration`` each view's temporal extent as a fraction of the clip (default 0.5);
    ``power`` the exponent p of the interval density (default 1: linearly decreasing)."""

    LABEL = "CVRL crop"

    def __init__(
        self,
        size: Sequence[int],
        area: Sequence[float] = (0.3, 1.0),
        aspect: Sequence[float] = (0.5, 2.0),
        duration: float = 0.5,
        power: float = 1.0,
    ) -> None:
        super().__init__(size)
        self.area = check_range("area", area, 1e-3, 1.0)
        self.aspect = check_range("aspect", aspect, 1e-2, 1e2)
        if not 0 < duration <= 1:
            raise ValueError(f"duration must be in (0, 1], got {duration}")
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.duration = float(duration)
        self.power = float(power)

    def temporal_centers(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Centers ``(B,), (B,)`` of the two views in time (normalised coordinates)."""
        room = 2.0 - 2.0 * self.duration  # M: range of valid start points in [-1, 1 - 2 * duration]
        delta = sample_power_law_interval(batch, self.power, device) * room
        start1 = -1.0 + torch.rand(batch, device=device) * (room - delta)
        start2 = start1 + delta
        swap = torch.rand(batch, device=device) < 0.5
        start1, start2 = torch.where(swap, start2, start1), torch.where(swap, start1, start2)
        return start1 + self.duration, start2 + self.duration

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        ct1, ct2 = self.temporal_centers(batch, device)
        ht = torch.full((batch, 1), self.duration, device=device)
        cubes = []
        for ct in (ct1, ct2):
            hxy = sample_spatial_extents(batch, self.area, self.aspect, device)
            cxy = place_uniformly(hxy)
            cubes.append(torch.cat([cxy, ct[:, None], hxy, ht], -1))
        return cubes[0], cubes[1]
