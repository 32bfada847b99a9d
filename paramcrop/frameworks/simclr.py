"""SimCLR (Chen et al., ICML 2020): a projection head and the NT-Xent loss over both views.

Both views go through the same backbone and head (in one batch of ``2B``); every other sample of
the batch is a negative. There is no target network, so :meth:`Framework.update_targets` is a
no-op, and the gradient reaches both views' crops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.frameworks.base import (
    FRAMEWORKS, POS_SIM, REDUCTIONS, Framework, FrameworkOutput, encode_pair, feature_dim_of, float32_loss,
    group_size, mean_cosine,
)
from paramcrop.distributed import gather_with_grad
from paramcrop.heads import MLP_HEAD, HeadSpec


@float32_loss
def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """NT-Xent: mean over all ``2N`` anchors of the SimCLR cross-entropy.

    ``z1, z2 (N, D)``: embeddings of the two views (row ``i`` of each from the same clip), any
    norm and dtype (L2-normalised in float32 here). For anchor ``i`` the positive is the other
    view of clip ``i`` and the negatives are the other ``2N - 2`` embeddings; the anchor itself is
    excluded. Returns a float32 scalar; ``reduction="none"``: each pair's loss ``(N,)``, the mean of
    its two anchors' cross-entropies (their mean over the pairs is the scalar).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    checks.positive("temperature", temperature)
    checks.one_of("reduction", reduction, REDUCTIONS)
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.arange(2 * n, device=z.device).roll(n)  # anchor i <-> i + N (mod 2N)
    if reduction == "mean":
        return F.cross_entropy(logits, positives)
    return F.cross_entropy(logits, positives, reduction="none").view(2, n).mean(0)


@FRAMEWORKS.register("simclr")
class SimCLR(Framework):
    """SimCLR on ``backbone``: projection ``head`` (``feature_dim -> hidden_dim -> out_dim``), NT-Xent at
    ``temperature``.

    Defaults: ``temperature = 0.1`` (SimCLR's ImageNet value), ``hidden_dim = 512`` (= the
    ResNets' ``feature_dim``: SimCLR's hidden layer is as wide as the backbone output),
    ``out_dim = 128`` (SimCLR's).
    """

    def __init__(
        self, backbone: nn.Module, head: HeadSpec = MLP_HEAD, temperature: float = 0.1, hidden_dim: int = 512,
        out_dim: int = 128,
    ) -> None:
        checks.positive("temperature", temperature)
        super().__init__(backbone, head.build(feature_dim_of(backbone), hidden_dim, out_dim))
        self.temperature = float(temperature)

    def forward(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None,
                aug2: Tensor | None = None) -> FrameworkOutput:
        """Views ``x1, x2 (B, 3, T, H, W)`` (augmentation vectors ``aug1, aug2``) -> NT-Xent of their projections."""
        (z1, maps1), (z2, maps2) = encode_pair(self.online_with_maps, x1, x2, aug1, aug2)
        # under torchrun, negatives come from every rank (a gather that keeps gradients)
        loss = nt_xent_loss(gather_with_grad(z1), gather_with_grad(z2), self.temperature)
        return FrameworkOutput(loss, {POS_SIM: mean_cosine(z1, z2)}, (maps1, maps2))

    def pair_losses(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None, aug2: Tensor | None = None,
                    groups: int = 1) -> Tensor:
        """Each pair's NT-Xent ``(N,)`` within its group (this process's pairs only: no gather)."""
        z1, z2 = encode_pair(self.online, x1, x2, aug1, aug2)
        n = group_size(z1.shape[0], groups)
        return torch.cat([nt_xent_loss(a, b, self.temperature, reduction="none")
                          for a, b in zip(z1.split(n), z2.split(n))])
