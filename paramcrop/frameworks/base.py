"""What every self-supervised framework shares: its output, base classes, EMA and registry.

A framework is an ``nn.Module`` taking two batches of views ``x1, x2 (B, 3, T, H, W)`` (already
normalised) and, optionally, their augmentation vectors ``aug1, aug2 (B, AUG_DIM)``
(:func:`paramcrop.heads.augmentation_vectors`, for heads that use them), and returning a
:class:`FrameworkOutput`. It does not know where the views come from: random, CVRL and learned
crops all reach it the same way, and the gradient of ``loss`` with respect to ``x1, x2`` is what
a learned crop receives. Its projection head comes from :mod:`paramcrop.heads` (a
:class:`~paramcrop.heads.HeadSpec`, MLP by default); the online branch runs the backbone's
feature map, pools it, and hands the (online) maps of both views back in the output, so that
auxiliary losses (:mod:`paramcrop.losses`) need no second backbone pass.

Losses are computed in float32 even under bf16 autocast (:func:`float32_loss`).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.registry import Registry

FRAMEWORKS: Registry["Framework"] = Registry("framework")

from paramcrop.sinks import POS_SIM  # mean cosine of the two views' online embeddings (every framework logs it)

LossFn = TypeVar("LossFn", bound=Callable[..., Tensor])
REDUCTIONS = ("mean", "none")
"""A loss function's ``reduction``: ``mean`` (the scalar it minimises) or ``none`` (one value per pair, ``(N,)``)."""


@dataclass
class FrameworkOutput:
    """``loss``: scalar tensor to minimise; ``metrics``: extra scalars to log (name -> value);
    ``maps``: the online backbone's last feature maps of view 1 and view 2, ``(B, D, T', H', W')``
    each (the tensors the forward pass computed anyway)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    maps: tuple[Tensor, Tensor] | None = None


def float32_loss(fn: LossFn) -> LossFn:
    """Run a loss with autocast disabled on its inputs' device (the loss casts inputs to float32)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = next(a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def feature_dim_of(backbone: nn.Module) -> int:
    """``backbone.feature_dim``; ``ValueError`` unless ``backbone`` is a module that has one."""
    dim = getattr(backbone, "feature_dim", None)
    if not isinstance(backbone, nn.Module) or isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"backbone must be an nn.Module with an integer feature_dim, got {type(backbone).__name__}")
    return dim


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters have ``requires_grad = False`` (a target network)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """In place: every target parameter ``<- tau * target + (1 - tau) * online``; buffers are copied.

    ``target`` and ``online`` must have the same structure (``target`` made by :func:`frozen_copy`).
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, 1.0 - tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def pool(maps: Tensor) -> Tensor:
    """Global average pooling of feature maps ``(B, D, T', H', W') -> (B, D)`` (as ``Backbone.forward``)."""
    return maps.mean(dim=(2, 3, 4))


def encode_pair(encoder: Callable[[Tensor, Tensor | None], Any], x1: Tensor, x2: Tensor,
                aug1: Tensor | None = None, aug2: Tensor | None = None) -> tuple[Any, Any]:
    """``encoder(x (B, ...), aug (B, A) | None)`` applied to both views -> (output of view 1, of view 2).

    Views of equal shape go through in one batch of ``2B`` (one forward pass; batch-norm
    statistics over both views, as in SimCLR) and the output (a tensor, or a tuple of tensors,
    batch first) is split in halves; views of different shapes go separately.
    """
    if (aug1 is None) != (aug2 is None):
        raise ValueError("aug1 and aug2 must be given together or not at all")
    if x1.shape != x2.shape:
        return encoder(x1, aug1), encoder(x2, aug2)
    both = encoder(torch.cat([x1, x2]), None if aug1 is None else torch.cat([aug1, aug2]))
    if isinstance(both, Tensor):
        return both.chunk(2)
    halves = [t.chunk(2) for t in both]
    return tuple(h[0] for h in halves), tuple(h[1] for h in halves)


def group_size(n: int, groups: int) -> int:
    """The size of each of ``groups`` equal groups of ``n`` pairs; ``ValueError`` unless they divide ``n``."""
    checks.positive("groups", groups, integer=True)
    if n % groups:
        raise ValueError(f"groups must divide the {n} pairs, got {groups}")
    return n // groups


@torch.no_grad()
def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine similarity of matching rows of ``a, b (N, D)``."""
    return F.cosine_similarity(a.float(), b.float(), dim=1).mean().item()


class Framework(nn.Module):
    """Base of every framework: an online ``backbone -> pool -> projector``; ``backbone`` is what transfers.

    ``forward(x1, x2, aug1=None, aug2=None) -> FrameworkOutput``; :meth:`update_targets` after each
    optimiser step.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        feature_dim_of(backbone)
        self.backbone = backbone
        self.projector = projector

    def online(self, x: Tensor, aug: Tensor | None = None) -> Tensor:
        """``x (B, 3, T, H, W)`` and ``aug (B, AUG_DIM)`` or None -> ``(B, out_dim)`` through backbone and projector."""
        return self.online_with_maps(x, aug)[0]

    def online_with_maps(self, x: Tensor, aug: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Like :meth:`online`, also returning the backbone's last feature map ``(B, D, T', H', W')``."""
        maps = self.backbone.forward_features(x)
        return self.projector(pool(maps), aug), maps

    def augmentation_inputs(self, cubes1: Tensor, cubes2: Tensor, flip1: Tensor, flip2: Tensor
                            ) -> tuple[Tensor | None, Tensor | None]:
        """The two views' augmentation vectors ``(aug1, aug2)``, each ``(B, AUG_DIM)`` or None when the
        head takes none, from their cubes ``(B, 6)`` and flip flags ``(B,)`` (bool): the ``aug1, aug2``
        of :meth:`forward` and :meth:`pair_losses`."""
        return self.projector.augmentation_inputs(cubes1, cubes2, flip1, flip2)

    def update_targets(self) -> None:
        """Called by the trainer after each optimiser step (momentum / EMA updates). No-op here."""

    def forward(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None,
                aug2: Tensor | None = None) -> FrameworkOutput:
        """Two views ``(B, 3, T, H, W)`` of the same ``B`` clips (and their augmentation vectors
        ``(B, AUG_DIM)``, which the head may use) -> loss, metrics and the online feature maps."""
        raise NotImplementedError

    def pair_losses(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None, aug2: Tensor | None = None,
                    groups: int = 1) -> Tensor:
        """The loss of each of ``N`` view pairs ``x1, x2 (N, 3, T, H, W)`` -> ``(N,)``, as :meth:`forward`
        computes it, each of ``groups`` contiguous equal groups of pairs taken as one batch (the
        negatives of a batch-contrastive loss come from the pair's group), all encoded in one pass; no
        side effect (no queue update, no target update). Batch-norm statistics are the caller's: the
        ``hardest`` crop's scorer calls it in evaluation mode, without gradient."""
        raise NotImplementedError


class MomentumFramework(Framework):
    """A framework whose online networks have a momentum (EMA) target copy.

    The target networks (``target_backbone``, ``target_projector``) have ``requires_grad = False``
    and change only in :meth:`update_targets`: ``target <- tau * target + (1 - tau) * online``
    (their batch-norm buffers are copied from the online networks).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, tau: float, tau_name: str) -> None:
        super().__init__(backbone, projector)
        self.tau = checks.in_range(tau_name, tau, 0, 1)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(projector)

    @torch.no_grad()
    def target(self, x: Tensor, aug: Tensor | None = None) -> Tensor:
        """``x (B, 3, T, H, W)`` and ``aug (B, AUG_DIM)`` or None -> ``(B, out_dim)`` through the target
        networks, without gradient."""
        return self.target_projector(self.target_backbone(x), aug)

    def update_targets(self) -> None:
        ema_update_(self.target_backbone, self.backbone, self.tau)
        ema_update_(self.target_projector, self.projector, self.tau)
