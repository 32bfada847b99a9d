"""Projection heads: what sits between a framework's pooled backbone features and its loss.

Every head is an ``nn.Module`` built by name from the ``HEADS`` registry as
``create_head(name, in_dim, hidden_dim, out_dim, **params)`` (a framework supplies the three
dimensions, the ``head`` config section the rest) with
``forward(features (N, in_dim), aug (N, AUG_DIM) | None) -> (N, out_dim)`` and
``augmentation_inputs(cubes1, cubes2, flip1, flip2)``, the ``aug`` of each view it wants (the
trainer passes them on). Only the backbone
transfers: evaluation never sees a head, so a head changes what the backbone learns and nothing else.

- ``mlp``: Linear -> BatchNorm1d -> ReLU -> Linear, the standard SimCLR/MoCo/BYOL projector; it
  ignores ``aug``.
- ``cate``: CATE (Sun et al., ICCV 2021, "Composable Augmentation Encoding for Video
  Representation Learning"). The backbone feature is one token and each group of a view's
  augmentation parameters (``AUG_TOKENS``) is another, each embedded by its own linear layer (so
  its bias doubles as a type embedding); a pre-norm transformer encoder (``depth`` layers of
  ``width`` channels, ``heads`` attention heads, feed-forward ``4 * width``, no dropout) mixes
  them, and the feature token's output goes through LayerNorm and ``mlp(width, hidden_dim,
  out_dim)``. A view's tokens only ever meet that view's feature (attention is within a sample).

The augmentation vector of a view (:func:`augmentation_vectors`, ``AUG_DIM = 13``) is
``[cube (6), flip (1), shift (6)]``: its cube ``(cx, cy, ct, hx, hy, ht)``, 1.0 if it was flipped
horizontally, and for the second view its shift relative to the first, ``cube2 - cube1`` (center
offsets in time and space and half-extent differences); the first view's shift is zero.

Reference view (``reference = True``, the default, as in the paper, where the second view's head
"predicts the features knowing the augmentation relative to the first view"): the first view is
the reference and its vector is all zeros, so its projection depends on its pixels only; the second
view's vector is complete. With ``reference = False`` each view encodes its own cube and flip as
well. That variant has a shortcut, measured: the second view's shift and cube give the first
view's cube, which the first view's own tokens also carry, so the head can match a positive pair
through the parameters alone. With random crops (distinct cubes per clip) SimCLR's loss fell to
0.21 in 200 steps (1.56 with the MLP head) while kNN top-1 fell to chance (0.19 vs 0.27; CVRL crop
0.08 vs 0.20). ``tests/test_cate.py`` shows the same on features that carry no information.
Changing the second view's cube changes only the second view's vector in both variants; changing
the first view's cube changes the second view's (through the shift) and, without a reference,
its own.

Gradients: the cubes are *detached* before they are encoded. With a learned crop (ParamCrop) the
generator is trained only through the pixels of its views, so the gradient-reversal layer keeps
its meaning (the generator makes the views harder to match) instead of also learning to emit
parameters that confuse the head. The head still sees the learned parameters' values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")

AUG_TOKENS: tuple[tuple[str, int], ...] = (("cube", 6), ("flip", 1), ("shift", 6))
"""The groups of a view's augmentation vector, in order: (name, size); one CATE token each."""
AUG_DIM = sum(size for _, size in AUG_TOKENS)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear: ``(N, in_dim) -> (N, out_dim)``."""
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        checks.positive(name, value, integer=True)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def augmentation_vectors(cubes1: Tensor, cubes2: Tensor, flip1: Tensor, flip2: Tensor,
                         reference: bool = True) -> tuple[Tensor, Tensor]:
    """Both views' augmentation vectors (layout and ``reference`` in the module docstring),
    detached, float32.

    ``cubes1, cubes2 (B, 6)``; ``flip1, flip2 (B,)`` bool -> two ``(B, AUG_DIM)``.
    """
    c1, c2 = cubes1.detach().float(), cubes2.detach().float()
    shift = c2 - c1
    a2 = torch.cat([c2, flip2.float()[:, None], shift], 1)
    if reference:
        return torch.zeros_like(a2), a2
    return torch.cat([c1, flip1.float()[:, None], torch.zeros_like(shift)], 1), a2


@HEADS.register("mlp")
class MLPHead(nn.Sequential):
    """The standard projector :func:`mlp` (same layers and state-dict keys); ``aug`` is ignored."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(*mlp(in_dim, hidden_dim, out_dim))

    def forward(self, features: Tensor, aug: Tensor | None = None) -> Tensor:
        """``features (N, in_dim) -> (N, out_dim)``."""
        return super().forward(features)

    def augmentation_inputs(self, cubes1: Tensor, cubes2: Tensor, flip1: Tensor,
                            flip2: Tensor) -> tuple[None, None]:
        """What :meth:`forward` takes as ``aug`` for each view: nothing."""
        return None, None


@HEADS.register("cate")
class CATEHead(nn.Module):
    """CATE's augmentation-aware head (see the module docstring).

    Defaults: ``depth = 2``, ``width = 128``, ``heads = 4``: a small encoder over 1 + 3 tokens,
    negligible next to the backbone; ``reference = True``: the first view is the reference and
    encodes no parameters.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, depth: int = 2, width: int = 128,
                 heads: int = 4, reference: bool = True) -> None:
        super().__init__()
        if not isinstance(reference, bool):
            raise ValueError(f"reference must be true or false, got {reference!r}")
        self.reference = reference
        for name, value in (("in_dim", in_dim), ("depth", depth), ("width", width), ("heads", heads)):
            checks.positive(name, value, integer=True)
        if width % heads:
            raise ValueError(f"heads must divide width, got heads={heads} and width={width}")
        self.feature_token = nn.Linear(in_dim, width)
        self.aug_tokens = nn.ModuleList(nn.Linear(size, width) for _, size in AUG_TOKENS)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = mlp(width, hidden_dim, out_dim)

    def forward(self, features: Tensor, aug: Tensor | None = None) -> Tensor:
        """``features (N, in_dim)``, ``aug (N, AUG_DIM)`` -> ``(N, out_dim)``."""
        if aug is None or aug.shape != (features.shape[0], AUG_DIM):
            shape = None if aug is None else tuple(aug.shape)
            raise ValueError(f"the cate head needs each view's augmentation vector, aug of shape "
                             f"({features.shape[0]}, {AUG_DIM}), got {shape}")
        groups = aug.to(features.dtype).split([size for _, size in AUG_TOKENS], dim=1)
        tokens = [self.feature_token(features), *(embed(g) for embed, g in zip(self.aug_tokens, groups))]
        encoded = self.encoder(torch.stack(tokens, 1))  # (N, 1 + len(AUG_TOKENS), width)
        return self.out(self.norm(encoded[:, 0]))

    def augmentation_inputs(self, cubes1: Tensor, cubes2: Tensor, flip1: Tensor,
                            flip2: Tensor) -> tuple[Tensor, Tensor]:
        """What :meth:`forward` takes as ``aug`` for each view: :func:`augmentation_vectors`."""
        return augmentation_vectors(cubes1, cubes2, flip1, flip2, reference=self.reference)


def create_head(name: str, in_dim: int, hidden_dim: int, out_dim: int, **params: Any) -> nn.Module:
    """Build a registered head (``mlp``, ``cate``) mapping ``(N, in_dim)`` to ``(N, out_dim)``."""
    return HEADS.create(name, in_dim, hidden_dim, out_dim, **params)


@dataclass(frozen=True)
class HeadSpec:
    """Which head a framework puts on its backbone: registry ``name`` and its ``params`` (the
    ``head`` config section); the framework calls :meth:`build` with its own dimensions."""

    name: str = "mlp"
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
        return create_head(self.name, in_dim, hidden_dim, out_dim, **self.params)


MLP_HEAD = HeadSpec()

__all__ = ["AUG_DIM", "AUG_TOKENS", "CATEHead", "HEADS", "HeadSpec", "MLPHead", "MLP_HEAD", "augmentation_vectors",
           "create_head", "mlp"]
