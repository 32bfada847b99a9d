"""BYOL (Grill et al., NeurIPS 2020): predictor on the online branch, EMA target, no negatives.

Symmetrised: the prediction of view 1 regresses the target projection of view 2 and vice
versa; the loss is the mean of the two :func:`byol_loss` terms (so it lies in ``[0, 4]``). The
target backbone and projector run under ``torch.no_grad`` and follow the online ones by EMA in
:meth:`update_targets`.

How views reach a learned crop: each view goes through the online branch once and the target
branch once. The target branch is stop-gradient, as in BYOL, so the gradient to a view's crop
flows only through its online branch; the crop generator thus maximises exactly the loss that
the online network minimises.

Defaults and why: ``tau = 0.99`` (BYOL starts at 0.996 and anneals to 1 over long runs; the few
thousand steps of this suite need a target that keeps up), projector and predictor
``hidden_dim = 1024``, ``out_dim = 256`` (BYOL's 4096/256 scaled to 512-d backbones: hidden =
2 x ResNet-18 features, as BYOL's 4096 is 2 x ResNet-50's 2048).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.frameworks.base import (
    FRAMEWORKS, POS_SIM, REDUCTIONS, FrameworkOutput, MomentumFramework, encode_pair, feature_dim_of, float32_loss,
    group_size, mean_cosine,
)
from paramcrop.heads import MLP_HEAD, HeadSpec, mlp


@float32_loss
def byol_loss(p: Tensor, z: Tensor, reduction: str = "mean") -> Tensor:
    """Normalised MSE: ``mean_i (2 - 2 cos(p_i, z_i))``.

    ``p (N, D)``: online predictions; ``z (N, D)``: target projections (the caller detaches them);
    any norm and dtype (L2-normalised in float32 here). Returns a float32 scalar in ``[0, 4]``;
    ``reduction="none"``: each row's ``(N,)``.
    """
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(f"p and z must both be (N, D), got {tuple(p.shape)} and {tuple(z.shape)}")
    checks.one_of("reduction", reduction, REDUCTIONS)
    cos = (F.normalize(p.float(), dim=1) * F.normalize(z.float(), dim=1)).sum(dim=1)  # (N,)
    return (2 - 2 * cos).mean() if reduction == "mean" else 2 - 2 * cos


@FRAMEWORKS.register("byol")
class BYOL(MomentumFramework):
    """BYOL on ``backbone`` (see the module docstring for the defaults); ``predictor`` maps
    ``out_dim -> hidden_dim -> out_dim`` (an MLP whatever the projection ``head``)."""

    def __init__(self, backbone: nn.Module, head: HeadSpec = MLP_HEAD, tau: float = 0.99, hidden_dim: int = 1024,
                 out_dim: int = 256) -> None:
        super().__init__(backbone, head.build(feature_dim_of(backbone), hidden_dim, out_dim), tau, "tau")
        self.predictor = mlp(out_dim, hidden_dim, out_dim)

    def forward(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None,
                aug2: Tensor | None = None) -> FrameworkOutput:
        """Views ``x1, x2 (B, 3, T, H, W)`` (augmentation vectors ``aug1, aug2``) -> symmetrised BYOL loss."""
        (z1, maps1), (z2, maps2) = encode_pair(self.online_with_maps, x1, x2, aug1, aug2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = encode_pair(self.target, x1, x2, aug1, aug2)
        loss = 0.5 * (byol_loss(p1, t2) + byol_loss(p2, t1))
        return FrameworkOutput(loss, {POS_SIM: mean_cosine(z1, z2)}, (maps1, maps2))

    def pair_losses(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None, aug2: Tensor | None = None,
                    groups: int = 1) -> Tensor:
        """Each pair's symmetrised BYOL loss ``(N,)`` (no negatives: ``groups`` changes nothing)."""
        group_size(x1.shape[0], groups)
        z1, z2 = encode_pair(self.online, x1, x2, aug1, aug2)
        t1, t2 = encode_pair(self.target, x1, x2, aug1, aug2)
        return 0.5 * (byol_loss(self.predictor(z1), t2, reduction="none")
                      + byol_loss(self.predictor(z2), t1, reduction="none"))
