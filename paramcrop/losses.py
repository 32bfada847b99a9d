"""Controllable-augmentation auxiliary losses (Qian, Lin, See, Li, 2022, arXiv 2203.16632).

Two extra loss terms that the trainer adds to the framework's loss, each with its weight (config
``losses.region`` and ``losses.order``; 0 = off, and then none of their code runs), and
logs unweighted as ``train/region_loss`` and ``train/order_loss``. Both work with every framework
(they use the *online* branch's backbone) and every crop method (all produce cubes). A learned
crop's generator ascends the whole weighted loss through the pixels of its views; the cubes enter
these terms only as constants (detached soft targets, integer bins).

**Soft spatio-temporal region contrast** (:class:`RegionContrast`). The last feature map of a
view ``(B, D, T', H', W')`` (:attr:`FrameworkOutput.maps`, no extra backbone pass) is a grid of
``N = T' H' W'`` cells. Cell ``(i, j, k)`` stands for the box of the view's own normalised
coordinates that the grid partitions evenly (the nominal cell, not the larger receptive field);
:func:`cell_boxes` maps it into clip coordinates through the view's cube, mirrored in x when the
view was flipped (the flip comes after the crop). The soft targets :func:`soft_targets` are the
volume IoUs of the cells of view 1 with the cells of view 2 of the same clip. Each cell's
feature goes through a per-cell MLP projector (both views' cells in one batch) and is
L2-normalised. :func:`region_contrast_loss`: an anchor cell of one view is contrasted with every
cell of the other view in the batch (its own clip's overlapping cells are the positives, with
weights = IoU normalised per anchor; all other cells, including its clip's non-overlapping ones,
are negatives); cross-entropy with these soft targets; anchors without any overlapping cell have
no positive and are left out of the mean (they remain negatives of others); symmetrised over the
two directions.

**Local-global temporal order** (:class:`TemporalOrder`). The global view is the whole raw clip
resampled to the view size (:func:`global_view`, cube ``FULL_CUBE``), augmented like the other
views and encoded by the online backbone: the one extra backbone pass, made only when the
order loss is on. The two crop views are the local views. Target (:func:`order_targets`): the bin,
among ``bins`` equal bins of the global view's time span, that holds the local view's temporal
center (clamped to the first/last bin if outside). A classifier ``mlp(2 D, hidden_dim, bins)`` on
``[global feature, local feature]`` (pooled backbone features) predicts it; the loss is the
cross-entropy averaged over both local views. Default ``bins = 4``: with the suite's crops
(temporal half-extent >= 0.5) local centers lie in ``[-0.5, 0.5]``, i.e. mostly in the two middle
bins, so the task is "which half of the clip", roughly balanced.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop.frameworks.base import float32_loss
from paramcrop.geometry import FULL_CUBE, crop_video, view_iou
from paramcrop import checks
from paramcrop.heads import mlp
from paramcrop.sinks import ORDER_LOSS, REGION_LOSS  # metric names; re-exported for the trainer


# --- soft spatio-temporal region contrast ------------------------------------------------------
def cell_boxes(cubes: Tensor, grid: Sequence[int], flip: Tensor | None = None) -> Tensor:
    """Clip-coordinate boxes of the cells of a feature grid: ``(B, 6)`` cubes -> ``(B, N, 6)``.

    ``grid = (T', H', W')``; cells in the feature map's row-major ``(t, y, x)`` order (that of
    ``maps.flatten(2)``), ``N = T' H' W'``. ``flip (B,)`` bool: the view was mirrored in x after
    cropping, so its cell ``k`` covers the clip region of cell ``W' - 1 - k``.
    """
    t, h, w = (int(n) for n in grid)
    if min(t, h, w) < 1:
        raise ValueError(f"grid must be (T', H', W') with positive entries, got {tuple(grid)}")

    def centers(n: int) -> Tensor:  # cell centers in the view's normalised coordinates
        return (torch.arange(n, device=cubes.device, dtype=cubes.dtype) * 2 + 1) / n - 1

    ut, uy, ux = torch.meshgrid(centers(t), centers(h), centers(w), indexing="ij")
    u = torch.stack([ux, uy, ut], -1).reshape(1, -1, 3).repeat(cubes.shape[0], 1, 1)  # (B, N, 3): x, y, t
    if flip is not None:
        u[flip.bool(), :, 0] *= -1
    center, half = cubes[:, None, :3], cubes[:, None, 3:]
    cell_half = half / cubes.new_tensor([w, h, t])  # (B, 1, 3): each cell is 1 / n of the view per axis
    return torch.cat([center + half * u, cell_half.expand(-1, u.shape[1], -1)], -1)


def soft_targets(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every cell of view 1 with every cell of view 2 of the same clip:
    ``(B, N1, 6), (B, N2, 6) -> (B, N1, N2)``."""
    return view_iou(boxes1[:, :, None], boxes2[:, None])


def _soft_infonce(logits: Tensor, targets: Tensor) -> Tensor:
    """Rows are anchors: cross-entropy of ``logits (M, K)`` with ``targets (M, K) >= 0`` normalised
    per row, averaged over the rows that have some target mass (0 if none has)."""
    mass = targets.sum(1)
    has_positive = mass > 0
    per_anchor = -(targets / mass.clamp(min=1e-12)[:, None] * logits.log_softmax(1)).sum(1)
    return (per_anchor * has_positive).sum() / has_positive.sum().clamp(min=1)


@float32_loss
def region_contrast_loss(f1: Tensor, f2: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """Soft region-level InfoNCE between the cells of two views (module docstring).

    ``f1 (B, N1, C), f2 (B, N2, C)``: cell embeddings (any norm; L2-normalised in float32 here);
    ``weights (B, N1, N2) >= 0``: positive weights of cell pairs of the same clip (e.g.
    :func:`soft_targets`). Logits are cosine similarities over ``temperature``; anchors of view 1
    are contrasted with all ``B N2`` cells of view 2 and vice versa; returns the mean of the two
    directions (a float32 scalar).
    """
    if f1.ndim != 3 or f2.ndim != 3 or f1.shape[::2] != f2.shape[::2] or \
            weights.shape != (f1.shape[0], f1.shape[1], f2.shape[1]):
        raise ValueError(f"f1 must be (B, N1, C), f2 (B, N2, C) and weights (B, N1, N2), got {tuple(f1.shape)}, "
                         f"{tuple(f2.shape)}, {tuple(weights.shape)}")
    checks.positive("temperature", temperature)
    b, n1, c = f1.shape
    n2 = f2.shape[1]
    a1 = F.normalize(f1.float().reshape(b * n1, c), dim=1)
    a2 = F.normalize(f2.float().reshape(b * n2, c), dim=1)
    logits = a1 @ a2.T / temperature  # (B N1, B N2)
    same_clip = torch.eye(b, device=f1.device)[:, None, :, None]  # (B, 1, B, 1)
    targets = (weights.float()[:, :, None, :] * same_clip).reshape(b * n1, b * n2)
    return 0.5 * (_soft_infonce(logits, targets) + _soft_infonce(logits.T, targets.T))


class RegionContrast(nn.Module):
    """The soft region contrast term: per-cell projector ``mlp(in_dim, hidden_dim, out_dim)`` and
    :func:`region_contrast_loss` at ``temperature`` (defaults 256 / 128 / 0.2, as the MoCo-v2-style heads)."""

    def __init__(self, in_dim: int, temperature: float = 0.2, hidden_dim: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.temperature = checks.positive("temperature", temperature)
        self.projector = mlp(in_dim, hidden_dim, out_dim)

    def forward(self, maps1: Tensor, maps2: Tensor, cubes1: Tensor, cubes2: Tensor, flip1: Tensor,
                flip2: Tensor) -> Tensor:
        """Feature maps ``(B, D, T', H', W')`` (grids may differ), cubes ``(B, 6)``, flips ``(B,)`` -> scalar."""
        n1 = maps1.shape[2:].numel()
        cells = torch.cat([maps1.flatten(2), maps2.flatten(2)], 2).transpose(1, 2)  # (B, N1 + N2, D)
        b, n, d = cells.shape
        f = self.projector(cells.reshape(b * n, d)).view(b, n, -1)
        weights = soft_targets(cell_boxes(cubes1.detach().float(), maps1.shape[2:], flip1),
                               cell_boxes(cubes2.detach().float(), maps2.shape[2:], flip2))
        return region_contrast_loss(f[:, :n1], f[:, n1:], weights, self.temperature)


# --- local-global temporal order ---------------------------------------------------------------
def global_view(clips: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The whole clip as one view: ``(B, C, T, H, W)`` -> (view ``(B, C, t, h, w)`` float on the
    input's scale, cubes ``(B, 6)`` = ``FULL_CUBE``)."""
    cubes = torch.tensor(FULL_CUBE, device=clips.device).expand(clips.shape[0], 6)
    return crop_video(clips, cubes, size), cubes


def order_targets(local_cubes: Tensor, global_cubes: Tensor, bins: int) -> Tensor:
    """Bin of each local view's temporal center in its global view's span:
    ``(..., 6), (..., 6) -> (...)`` long in ``[0, bins)`` (centers outside the span are clamped)."""
    checks.positive("bins", bins, integer=True)
    start = global_cubes[..., 2] - global_cubes[..., 5]
    position = (local_cubes[..., 2] - start) / (2 * global_cubes[..., 5])  # 0 = global start, 1 = end
    return (position * bins).floor().clamp(0, bins - 1).long()


class TemporalOrder(nn.Module):
    """The local-global temporal order term: classifier ``mlp(2 in_dim, hidden_dim, bins)`` and cross-entropy."""

    def __init__(self, in_dim: int, bins: int = 4, hidden_dim: int = 256) -> None:
        super().__init__()
        self.bins = checks.at_least("bins", bins, 2, integer=True)
        self.classifier = mlp(2 * in_dim, hidden_dim, self.bins)

    def forward(self, global_features: Tensor, local_features: Sequence[Tensor], local_cubes: Sequence[Tensor],
                global_cubes: Tensor) -> Tensor:
        """``global_features (B, D)``; per local view ``(B, D)`` features and ``(B, 6)`` cubes;
        ``global_cubes (B, 6)`` -> mean cross-entropy over all local views (a float32 scalar)."""
        k = len(local_features)
        pairs = torch.cat([global_features.repeat(k, 1), torch.cat(list(local_features))], 1)  # (K B, 2 D)
        targets = order_targets(torch.cat(list(local_cubes)).detach(), global_cubes.repeat(k, 1), self.bins)
        return F.cross_entropy(self.classifier(pairs).float(), targets)


__all__ = ["ORDER_LOSS", "REGION_LOSS", "RegionContrast", "TemporalOrder", "cell_boxes", "global_view",
           "order_targets", "region_contrast_loss", "soft_targets"]
