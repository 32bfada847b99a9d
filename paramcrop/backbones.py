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

import functools
import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
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


@functools.lru_cache(maxsize=None)  # a few stems' settings: computed once, not every backward
def _phase_taps(stride: int, kernel: int, padding: int) -> tuple[Tensor, int]:
    """One axis of :func:`polyphase_input_grad`: ``(taps (stride, n), d_lo)``.

    Input position ``x = stride * q + r`` (phase ``r``) receives ``w[j] * g[q + d]`` for every
    output offset ``d = d_lo + t`` with kernel index ``j = r + padding - stride * d`` in
    ``[0, kernel)``; ``taps[r, t]`` is that ``j``, or ``kernel`` (a zero tap) where none is.
    """
    bases = [r + padding for r in range(stride)]
    d_lo = min(-((kernel - 1 - b) // stride) for b in bases)  # ceil((b - kernel + 1) / stride)
    d_hi = max(b // stride for b in bases)
    j = torch.tensor([[b - stride * d for d in range(d_lo, d_hi + 1)] for b in bases])
    return torch.where((j >= 0) & (j < kernel), j, kernel), d_lo


def polyphase_input_grad(grad_out: Tensor, weight: Tensor, input_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """The gradient to the input of ``F.conv3d(x, weight, None, stride, padding)`` (no dilation, one
    group), as one stride-1 convolution with an output channel per (phase, input channel).

    ``grad_out (B, C_out, O_t, O_h, O_w)``, ``weight (C_out, C_in, k_t, k_h, k_w)``,
    ``input_size = (T, H, W)`` -> ``(B, C_in, T, H, W)``, channels-last. Equal to the transposed
    convolution up to float rounding; on CPU it is about twice as fast for few input channels.
    """
    axes = [_phase_taps(s, k, p) for s, k, p in zip(stride, weight.shape[2:], padding)]
    (j_t, _), (j_h, _), (j_w, _) = axes
    n_t, n_h, n_w = (j.shape[1] for j, _ in axes)
    w = F.pad(weight, (0, 1, 0, 1, 0, 1))[:, :, j_t[:, None, None, :, None, None],  # a zero at index k
                                           j_h[None, :, None, None, :, None], j_w[None, None, :, None, None, :]]
    c_out, c_in = weight.shape[:2]
    phases = math.prod(stride)
    # (C_out, C_in, s_t, s_h, s_w, n_t, n_h, n_w) -> (phases * C_in, C_out, n_t, n_h, n_w): input channel fastest
    w = w.permute(2, 3, 4, 1, 0, 5, 6, 7).reshape(phases * c_in, c_out, n_t, n_h, n_w)
    counts = [-(-length // s) for length, s in zip(input_size, stride)]  # positions per phase
    pads = [max(0, -d_lo, q + d_lo + n - 1 - o)
            for (_, d_lo), n, q, o in zip(axes, (n_t, n_h, n_w), counts, grad_out.shape[2:])]
    y = F.conv3d(grad_out, w.contiguous(memory_format=torch.channels_last_3d), padding=pads)
    y = y[(slice(None), slice(None), *(slice(d_lo + p, d_lo + p + q) for (_, d_lo), p, q in zip(axes, pads, counts)))]
    b = grad_out.shape[0]
    y = y.permute(0, 2, 3, 4, 1).reshape(b, *counts, *stride, c_in)  # (B, Q_t, Q_h, Q_w, s_t, s_h, s_w, C_in)
    y = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *(q * s for q, s in zip(counts, stride)), c_in)
    return y[:, :input_size[0], :input_size[1], :input_size[2]].permute(0, 4, 1, 2, 3)


class _InputConv3dFn(torch.autograd.Function):
    """``F.conv3d`` without bias whose backward takes :func:`polyphase_input_grad` for the input."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv3d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = polyphase_input_grad(grad_out, weight, x.shape[2:], ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv3d_weight(x, weight.shape, grad_out, ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


class InputConv3d(nn.Conv3d):
    """The ``nn.Conv3d`` a backbone's input enters (same parameters and state-dict keys), whose
    gradient to that input is :func:`polyphase_input_grad`.

    A learned crop needs the backbone's gradient to its input clips. oneDNN (torch 2.14, CPU)
    computes it for the 3-channel stem of ``tiny3d`` at a fifth of the speed of the weight gradient
    of the same size (40 vs 7 ms, batch 64 of 8x48x48); as one stride-1 convolution over the
    stride's phases it takes 23 ms (``benchmarks/train.py``: the floor). Taken on CPU, in float32,
    for a strided convolution without bias, dilation or groups; otherwise ``nn.Conv3d`` as is.
    """

    @classmethod
    def like(cls, conv: nn.Conv3d) -> "InputConv3d":
        """An ``InputConv3d`` sharing ``conv``'s configuration and parameters."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        if (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and self.bias is None and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and set(self.dilation) == {1} and max(self.stride) > 1):
            return _InputConv3dFn.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


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
        self.features[0][0] = InputConv3d.like(self.features[0][0])

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
        net.stem[0] = InputConv3d.like(net.stem[0])
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
    features = tv_video.s3d(weights=None).features
    features[0][0][0] = InputConv3d.like(features[0][0][0])
    return TorchvisionVideo("s3d", features, 1024, 8, 17)


def create_backbone(name: str, **kwargs) -> Backbone:
    """Build a registered backbone (``tiny3d``, ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``)."""
    return BACKBONES.create(name, **kwargs)


__all__ = ["BACKBONES", "Backbone", "InputConv3d", "Tiny3D", "TorchvisionVideo", "create_backbone"]
