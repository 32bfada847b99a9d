"""Video backbones, created by name through :func:`create_backbone`.

Every backbone maps normalised clips ``float (B, 3, T, H, W)`` to features ``(B, feature_dim)``
by global average pooling of its last feature map (:meth:`Backbone.forward_features`,
``(B, D, T', H', W')``). Nothing is ever downloaded: the torchvision models are built with
``weights=None`` (random initialisation) and their classifiers are dropped.

Minimum inputs (:meth:`Backbone.check_input`):

- ``s3d``: 8 frames of 17x17, measured (torch 2.14.1, torchvision 0.29.1). Below 5 frames or
  17x17 the unpadded 2x2x2 max-pool before its last inception blocks gets an input smaller than
  its kernel and the forward pass fails. From 5 to 7 frames the forward pass works, but on CPU the
  backward pass of the stem's 7x1x1 stride-2 temporal conv (oneDNN) is broken: at 5 frames it
  corrupts the heap and crashes the process, at 6 and 7 its weight gradient is garbage that
  changes from run to run (1e33 to inf, NaN after the next step), reading memory it never wrote.
  From 8 frames on it is the same in every run (``tests/test_backbones.py``), hence 8.
- The ResNets and ``tiny3d`` accept any size (every stride is padded), so their minimum is a
  sensible one: the total stride along each axis, i.e. the smallest input that the network
  reduces to a single cell without any strided stage working on a single cell of padding.
  ``r3d_18`` and ``r2plus1d_18``: 8 frames, 16x16; ``mc3_18`` (no temporal stride after its
  stem): 1 frame, 16x16; ``tiny3d``: 4 frames, 16x16. At every minimum the last feature map is
  1x1x1.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models import video as tv_video

from paramcrop import checks
from paramcrop.registry import Registry

BACKBONES: Registry["Backbone"] = Registry("backbone")


class Backbone(nn.Module):
    """A video encoder: ``forward(x (B, 3, T, H, W)) -> (B, feature_dim)``.

    Subclasses set ``features`` (a module returning the last feature map), ``feature_dim``,
    ``min_frames`` and ``min_size``.
    """

    name: str
    feature_dim: int
    min_frames: int
    min_size: int
    features: nn.Module

    def forward_features(self, x: Tensor) -> Tensor:
        """``x (B, 3, T, H, W)`` -> last feature map before pooling ``(B, feature_dim, T', H', W')``."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, 3, T, H, W)`` -> globally average-pooled features ``(B, feature_dim)``."""
        return self.forward_features(x).mean(dim=(2, 3, 4))

    def check_input(self, frames: int, size: int) -> None:
        """Raise ``ValueError`` unless clips of ``frames`` x ``size`` x ``size`` are large enough."""
        if frames < self.min_frames or size < self.min_size:
            raise ValueError(
                f"backbone {self.name!r} needs clips of at least {self.min_frames} frames and "
                f"{self.min_size}x{self.min_size} pixels, got {frames} frames of {size}x{size}"
            )


def _conv_bn_relu(c_in: int, c_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> nn.Sequential:
    """Conv3d ('same' padding for odd kernels) -> BatchNorm3d -> ReLU."""
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


@BACKBONES.register("tiny3d")
class Tiny3D(Backbone):
    """A small 3D CNN that learns on a CPU in minutes; ``feature_dim = 8 * width``.

    Stem conv 3x3x3 (spatial stride 2) and 1x3x3 max-pool (spatial stride 2), then three
    conv 3x3x3 blocks of widths ``2w, 4w, 8w``, the first two with stride 2 on every axis.
    Total stride: 4 in time, 16 in space, so ``8x48x48`` clips end as a ``2x3x3`` map. Inputs
    are run channels-last (``torch.channels_last_3d``): a training step on CPU then takes about
    30% less time (measured, batch 32 of 8x48x48 with SimCLR).
    """

    name = "tiny3d"
    min_frames = 4
    min_size = 16

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        checks.positive("width", width, integer=True)
        self.feature_dim = 8 * width
        self.features = nn.Sequential(
            _conv_bn_relu(3, width, (3, 3, 3), (1, 2, 2)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            _conv_bn_relu(width, 2 * width, (3, 3, 3), (2, 2, 2)),
            _conv_bn_relu(2 * width, 4 * width, (3, 3, 3), (2, 2, 2)),
            _conv_bn_relu(4 * width, 8 * width, (3, 3, 3), (1, 1, 1)),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """``x (B, 3, T, H, W)`` -> ``(B, 8 * width, T', H', W')`` (a channels-last tensor)."""
        return self.features(x.contiguous(memory_format=torch.channels_last_3d))


class TorchvisionVideo(Backbone):
    """A ``torchvision.models.video`` network, randomly initialised, without its classifier."""

    def __init__(self, name: str, features: nn.Module, feature_dim: int, min_frames: int, min_size: int) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.feature_dim = feature_dim
        self.min_frames = min_frames
        self.min_size = min_size


def _register_resnet(name: str, build: Callable[..., tv_video.VideoResNet], min_frames: int) -> None:
    def create() -> TorchvisionVideo:
        net = build(weights=None)
        features = nn.Sequential(net.stem, net.layer1, net.layer2, net.layer3, net.layer4)
        return TorchvisionVideo(name, features, 512, min_frames, 16)

    create.__doc__ = f"torchvision ``{name}`` (random init, 512-d features)."
    BACKBONES.register(name)(create)


_register_resnet("r3d_18", tv_video.r3d_18, min_frames=8)
_register_resnet("mc3_18", tv_video.mc3_18, min_frames=1)
_register_resnet("r2plus1d_18", tv_video.r2plus1d_18, min_frames=8)


@BACKBONES.register("s3d")
def s3d() -> TorchvisionVideo:
    """torchvision ``s3d`` (random init, 1024-d features); its fixed 2x7x7 average pool is replaced
    by global average pooling, so inputs smaller than 16x224x224 work."""
    return TorchvisionVideo("s3d", tv_video.s3d(weights=None).features, 1024, 8, 17)


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build a registered backbone (``tiny3d``, ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``)."""
    return BACKBONES.create(name, **kwargs)


__all__ = ["BACKBONES", "Backbone", "Tiny3D", "TorchvisionVideo", "create_backbone"]
