"""What every crop method shares: the ``Views`` it returns, its base class, and its registry."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from paramcrop.checks import range_pair
from paramcrop.crops.adversary import Adversary
from paramcrop.geometry import _check_size, crop_video, traceable_crop_video_taps
from paramcrop.registry import Registry, constructor_keys
from paramcrop.runtime import Compiled

CROPS: Registry["CropMethod"] = Registry("crop method")


@dataclass
class Views:
    """Two views of a batch of clips and the cubes they were cut from.

    ``x1, x2``: float32 ``(B, C, t, h, w)`` on the input's value scale; ``cubes1, cubes2``: ``(B, 6)``;
    ``metrics``: what the crop measured while making them (:meth:`CropMethod.metrics`), metric name ->
    0-d tensor, logged with the step's metrics.
    """

    x1: Tensor
    x2: Tensor
    cubes1: Tensor
    cubes2: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


PairScorer = Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]
"""``score(x1, x2, cubes1, cubes2, groups) -> (N,)``: the current model's loss of each of ``N`` view
pairs, without gradient; views ``(N, C, t, h, w)`` on the 0-255 scale, cubes ``(N, 6)``; the pairs
form ``groups`` contiguous groups of equal size, each scored as one batch (a pair's negatives are
the other pairs of its group). The trainer hands one to every crop (:meth:`CropMethod.bind_scorer`)."""


class CropMethod(nn.Module):
    """Turns raw clips ``(B, C, T, H, W)`` into two views of size ``(t, h, w)`` plus their cubes.

    Subclasses implement :meth:`sample_cubes` (or :meth:`cubes`, to read the clips); the cutting is
    shared (:func:`crop_video`), so every method is measured the same way. Clips and views are on
    the 0-255 scale (see :mod:`paramcrop.crops.paramcrop` for the conventions); cubes and views are
    float32 even inside an autocast region.

    ``grad_fraction`` (a learned crop's constructor key; 1 for every other crop): the fraction of a
    batch's clips whose views carry the gradient to the cubes (:meth:`grad_subset`, :func:`by_parts`).
    ``LABEL``: the method's name in figures and tables (:func:`method_label`); every registered crop
    sets its own.
    """

    LABEL = "crop"
    _fused: Compiled | None = None  # the compiled crop of both views once fuse() is called
    grad_fraction: float = 1.0

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = _check_size(size)

    @classmethod
    def uses_run_steps(cls, keys: Mapping[str, Any]) -> bool:
        """Whether this crop built with the keys ``keys`` reads the run's total steps: it has a ``steps``
        key left null (the trainer then fills in the run's ``steps``, recorded as ``crop.steps``)."""
        return "steps" in constructor_keys(cls, 1) and keys.get("steps") is None

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        """Two ``(B, 6)`` cube tensors, one per view."""
        raise NotImplementedError

    def cubes(self, clips: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Two ``(B, 6)`` cube tensors for ``clips (B, C, T, H, W)``; by default they ignore the clips."""
        return self.sample_cubes(clips.shape[0], clips.device, step)

    def metrics(self) -> dict[str, Tensor]:
        """What the last :meth:`cubes` call measured, metric name -> 0-d tensor (ParamCrop's
        ``train/generator_saturation``, the ``hardest`` crop's ``view/candidates_iou``); none by default."""
        return {}

    def strength_at(self, step: int) -> float:
        """Adversarial strength (lambda) in force at ``step``; 0 for methods that learn nothing."""
        return 0.0

    def generator_parameters(self) -> list[nn.Parameter]:
        """The learned parameters (a generator's weights, a learned code), for their own optimiser;
        empty for crops that learn nothing."""
        return list(self.parameters())

    def adversary(self, lr: float, **rule) -> Adversary:
        """The update of this crop's learned parameters at rate ``lr`` (at lambda = 1; ``rule``: the
        :class:`~paramcrop.crops.adversary.Adversary`'s optimiser and schedule keys): call its ``step(step)``
        after each ``loss.backward()`` (:mod:`paramcrop.crops.adversary`; a no-op for crops that learn nothing)."""
        return Adversary(self, lr, **rule)

    def bind_scorer(self, score: PairScorer) -> None:
        """Take the current model's per-pair loss (:data:`PairScorer`), for crops that choose views by it
        (``hardest``); the others ignore it."""

    def fuse(self) -> None:
        """Cut the two views on CPU with :func:`~paramcrop.geometry.traceable_crop_video_taps` compiled by
        ``torch.compile`` (:class:`~paramcrop.runtime.Compiled`; one graph for both views, forward and
        backward; eager :func:`crop_video`, with a warning, where compiling fails). CUDA clips keep
        ``grid_sample``."""
        crop = traceable_crop_video_taps()

        def cut_taps(clips: Tensor, cubes1: Tensor, cubes2: Tensor, size: tuple[int, int, int]
                     ) -> tuple[Tensor, Tensor]:
            return crop(clips, cubes1, size), crop(clips, cubes2, size)

        self._fused = Compiled(cut_taps, "the crop", eager=_cut)

    def grad_subset(self, batch: int, device: torch.device) -> Tensor | None:
        """The clips whose views carry the gradient to the cubes this step: ``(n,)`` sorted indices,
        ``n = grad_subset_size(batch, grad_fraction)``, drawn uniformly from the global torch RNG (CPU;
        checkpointed, so a resume draws the same subsets); ``None`` (nothing drawn) when that is the
        whole batch, as at ``grad_fraction`` 1."""
        n = grad_subset_size(batch, self.grad_fraction)
        if n == batch:
            return None
        return torch.randperm(batch)[:n].sort().values.to(device)

    def cut(self, clips: Tensor, cubes1: Tensor, cubes2: Tensor) -> tuple[Tensor, Tensor]:
        """Both views ``(B, C, t, h, w)`` float32 of ``clips (B, C, T, H, W)`` at ``cubes1, cubes2 (B, 6)``:
        compiled (:meth:`fuse`) on CPU, else :func:`crop_video`; autocast off."""
        with torch.autocast(clips.device.type, enabled=False):
            fused = self._fused is not None and self._fused.active and not clips.is_cuda
            return (self._fused if fused else _cut)(clips, cubes1, cubes2, self.size)

    def forward(self, clips: Tensor, step: int = 0) -> Views:
        with torch.autocast(clips.device.type, enabled=False):  # the cube maths in float32 under autocast
            cubes1, cubes2 = self.cubes(clips, step)
            subset = self.grad_subset(clips.shape[0], clips.device)
            if subset is None:
                x1, x2 = self.cut(clips, cubes1, cubes2)
            else:
                x1, x2 = by_parts(lambda rows, c1, c2: self.cut(clips[rows], c1, c2), subset, cubes1, cubes2)
            return Views(x1, x2, cubes1, cubes2, self.metrics())


def _cut(clips: Tensor, cubes1: Tensor, cubes2: Tensor, size: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """The two views ``(B, C, t, h, w)`` of ``clips`` through :func:`crop_video`."""
    if not clips.is_floating_point() and (clips.is_cuda or (torch.is_grad_enabled() and
                                                            (cubes1.requires_grad or cubes2.requires_grad))):
        clips = clips.float()  # the cube gradient (and CUDA's grid_sample) reads float frames: convert once
    return crop_video(clips, cubes1, size), crop_video(clips, cubes2, size)


def grad_subset_size(batch: int, fraction: float) -> int:
    """Clips of a batch of ``batch`` whose views carry the cube gradient: ``round(fraction * batch)``,
    half up, at least 1."""
    return max(1, math.floor(fraction * batch + 0.5))


class _GradientScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.factor * grad, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """Identity forward; the gradient is multiplied by ``factor`` backward."""
    return _GradientScale.apply(x, factor)


def by_parts(fn: Callable[..., Sequence[Tensor]], subset: Tensor, cubes1: Tensor, cubes2: Tensor
             ) -> tuple[Tensor, ...]:
    """A per-clip ``fn(rows, cubes1[rows], cubes2[rows]) -> (n, ...) tensors`` run as two batches and put
    back in the batch's order, ``(B, ...)`` each: the clips ``subset (n,)`` with their cubes' gradient
    scaled by ``B / n`` (the loss is a mean over ``B`` clips, so the subset's gradient then estimates
    the whole batch's without bias), and the other clips under ``no_grad`` (no graph to their cubes:
    their cut, and whatever ``fn`` adds, has no backward)."""
    batch = cubes1.shape[0]
    others = torch.ones(batch, dtype=torch.bool, device=subset.device)
    others[subset] = False
    rest = others.nonzero().view(-1)
    scale = batch / subset.numel()
    first = fn(subset, scale_gradient(cubes1[subset], scale), scale_gradient(cubes2[subset], scale))
    with torch.no_grad():
        second = fn(rest, cubes1[rest], cubes2[rest])
    merged = []
    for a, b in zip(first, second):
        out = b.new_empty((batch, *b.shape[1:]))
        out[rest] = b  # first, without a graph: the backward then only gathers the subset's rows
        out[subset] = a
        merged.append(out)
    return tuple(merged)


def create_crop(name: str, size: Sequence[int], **params) -> CropMethod:
    """Build a registered crop method (``random``, ``cvrl``, ``paramcrop``, ``hardest``, ...) for views of ``size``."""
    return CROPS.create(name, size, **params)


def method_label(name: str) -> str:
    """The registered crop ``name``'s ``LABEL`` (``"ParamCrop"``, ``"Random crop"``); an unknown name as given."""
    return CROPS.get(name).LABEL if name in CROPS else name


check_range = range_pair  # the crops' name for :func:`paramcrop.checks.range_pair`


def sample_spatial_extents(
    n: int, area: tuple[float, float], aspect: tuple[float, float], device: torch.device, free_aspect: bool = True
) -> Tensor:
    """RandomResizedCrop's box size as half-extents ``(n, 2) = (hx, hy)`` in normalised units.

    Area fraction ~ U(area), aspect ratio (width / height) log-uniform in ``aspect`` (drawn, then
    set to 1 when not ``free_aspect``: the same random stream either way). A side that
    would exceed the frame is clamped to the full frame (instead of torchvision's retry loop), so
    such boxes are slightly smaller than their sampled area.
    """
    a = torch.empty(n, device=device).uniform_(*area)
    log_r = torch.empty(n, device=device).uniform_(math.log(aspect[0]), math.log(aspect[1]))
    r = log_r.exp() if free_aspect else torch.ones_like(log_r)
    # half-extent in [-1, 1] coordinates equals the fraction of the full side
    return torch.stack([(a * r).sqrt(), (a / r).sqrt()], -1).clamp(max=1.0)


def place_uniformly(half: Tensor) -> Tensor:
    """Centers ``(..., k)`` drawn uniformly so that boxes of half-extent ``half`` stay inside [-1, 1]."""
    return (torch.rand_like(half) * 2 - 1) * (1 - half)
