"""Hardest views (Hard View Selection, Ferreira et al., arXiv 2310.03940): a learning-free adversary.

For each clip the crop draws ``candidates`` (K) view pairs exactly as the random cubic crop draws
its pair (:class:`~paramcrop.crops.random.RandomCubicCrop`, the same keys and ranges), scores every
pair by the current model's contrastive loss without gradient, and returns the pair with the
highest loss. The scoring is one batched pass: the ``K x B`` candidate pairs are cut, stacked
candidate-major (candidate ``k`` of clip ``i`` at row ``k B + i``) and handed to the scorer with
``groups = K``, so that candidate set ``k`` is scored as a batch of its own (a pair's negatives are
the other clips' candidate-``k`` views, as in a training batch).

The model reaches the crop through a hook, not through the trainer: the trainer hands every crop a
:data:`~paramcrop.crops.base.PairScorer` (:meth:`CropMethod.bind_scorer`), its framework's per-pair
loss (:meth:`paramcrop.frameworks.base.Framework.pair_losses`) of the unaugmented views, in
evaluation mode (batch-norm running statistics: a view's embedding does not depend on the other
candidates in the pass, and scoring changes no statistic), without gradient. Appearance
augmentation comes after the choice, as for every crop: the crop chooses geometry, and the
appearance draws of a scoring pass would not be the ones trained on.

Cost: one extra forward pass of ``2 K B`` views per step (no backward), about ``2 K / 3`` of a
training step's backbone work, and the chosen pair cut once more (the crop returns cubes, as
every crop, and the views are cut from them by the trainer or :meth:`CropMethod.forward`). Logged: ``view/*`` of the chosen pairs (as every crop) and
``view/candidates_iou``, the mean IoU over all ``K B`` candidate pairs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from paramcrop import checks, sinks
from paramcrop.crops.base import CROPS, PairScorer
from paramcrop.crops.dof import DEFAULT_DOF, DEFAULT_FIXED_EXTENT
from paramcrop.crops.random import RandomCubicCrop
from paramcrop.geometry import view_iou


@CROPS.register("hardest")
class HardestViews(RandomCubicCrop):
    """The highest-loss pair of ``candidates`` random cubic crop pairs per clip (module doc).

    Args:
        size: output ``(t, h, w)``.
        candidates: pairs drawn per clip (K >= 2).
        area, aspect, duration, dof, fixed_extent_xy, fixed_extent_t: as the random crop.
    """

    LABEL = "Hardest views"

    def __init__(
        self,
        size: Sequence[int],
        candidates: int = 4,
        area: Sequence[float] = (0.3, 1.0),
        aspect: Sequence[float] = (0.5, 2.0),
        duration: Sequence[float] = (0.5, 1.0),
        dof: str | Sequence[str] = DEFAULT_DOF,
        fixed_extent_xy: float = DEFAULT_FIXED_EXTENT[0],
        fixed_extent_t: float = DEFAULT_FIXED_EXTENT[1],
    ) -> None:
        super().__init__(size, area, aspect, duration, dof, fixed_extent_xy, fixed_extent_t)
        self.candidates = checks.at_least("candidates", candidates, 2, integer=True)
        self.score: PairScorer | None = None
        self.last_candidates_iou = torch.tensor(float("nan"))

    def bind_scorer(self, score: PairScorer) -> None:
        self.score = score

    def cubes(self, clips: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Clips ``(B, C, T, H, W)`` -> the cubes ``(B, 6)`` of the hardest of K candidate pairs per clip
        (module doc); the views are then cut from them as for every crop."""
        if self.score is None:
            raise ValueError("the hardest crop scores its candidates with the model: hand it a scorer first "
                             "(crop.bind_scorer(score); the trainer does)")
        batch, k = clips.shape[0], self.candidates
        with torch.autocast(clips.device.type, enabled=False), torch.no_grad():
            cubes1, cubes2 = self.sample_cubes(k * batch, clips.device, step)  # candidate-major rows k B + i
            x1, x2 = self.cut(clips.repeat(k, 1, 1, 1, 1), cubes1, cubes2)
            losses = self.score(x1, x2, cubes1, cubes2, k).view(k, batch)
            rows = losses.argmax(0) * batch + torch.arange(batch, device=clips.device)
            self.last_candidates_iou = view_iou(cubes1, cubes2).mean()
        return cubes1[rows], cubes2[rows]

    def metrics(self) -> dict[str, Tensor]:
        """``view/candidates_iou``: the mean IoU of all ``K B`` candidate pairs of the last batch."""
        return {sinks.VIEW_CANDIDATES_IOU: self.last_candidates_iou}
