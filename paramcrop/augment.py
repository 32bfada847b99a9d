"""Clip-consistent appearance augmentation, batched on tensors.

Applied after cropping to each view ``(B, C, T, H, W)`` float in [0, 1]: one parameter set per
clip, shared by all its frames (CVRL's temporally consistent augmentation). In order: colour
jitter with probability ``jitter_p`` (brightness, contrast, saturation, hue, in that fixed
order), grayscale with ``grayscale_p``, horizontal flip with ``flip_p``, Gaussian blur with
``blur_p``. Defaults are CVRL's (jitter strengths 0.8/0.8/0.8/0.2 times ``jitter_scale``, p = 0.8;
grayscale p = 0.2; flip p = 0.5; blur p = 0.5 with sigma 0.1-2.0 px at 224 px, scaled to the
frame size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from paramcrop import checks
from paramcrop.runtime import Compiled

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass
class AugmentParams:
    """Per-clip parameters actually applied, each ``(B,)``; ``flip`` is bool."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    grayscale: Tensor
    flip: Tensor
    blur_sigma: Tensor  # 0 where no blur

    def rows(self, index: Tensor) -> "AugmentParams":
        """The parameters of the clips ``index (n,)``."""
        return AugmentParams(*(getattr(self, f.name)[index] for f in fields(self)))


def _per_clip(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """Luma ``(B, 1, T, H, W)`` of RGB ``(B, 3, T, H, W)``."""
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_parts(x: Tensor, shift: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The closed-form hue shift (see :func:`adjust_hue`) of ``x (B, 3, T, H, W)`` by ``shift (B,)``
    turns, and its intermediates ``(k, w, rel, chroma, is_r, is_g)``. Differentiable as written, with
    the gradient through the hue 0 where the chroma is 0 (as :class:`_AdjustHue`'s backward)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)  # amax/amin: no argmax indices (max(dim) is ~10x slower)
    cr = maxc - minc
    # hue in sixths of a turn: offset + rel, torchvision's case order (red max, then green, then blue)
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    rel = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    rel = torch.where(cr > 0, rel / torch.where(cr > 0, cr, torch.ones_like(cr)), torch.zeros_like(cr))
    offset = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0)).to(x.dtype)
    # wrapped into [0, 6] by adding or subtracting 6 (the ranges are known: rel in [-1, 1], the shift
    # reduced per clip): a per-pixel remainder is ~10 vector ops, the most costly part of the formula
    h6 = offset + rel + torch.remainder(6.0 * shift.to(x.dtype), 6.0).view(-1, 1, 1, 1)  # [-1, 11)
    h6 = torch.where(h6 >= 6.0, h6 - 6.0, torch.where(h6 < 0.0, h6 + 6.0, h6))
    k = x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1, 1) + h6[:, None]  # [1, 11]
    k = torch.where(k > 6.0, k - 6.0, k)  # [0, 6]: w is the same at 0 and 6
    w = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return maxc[:, None] - cr[:, None] * w, (k, w, rel, cr, is_r, is_g)


class _AdjustHue(torch.autograd.Function):
    """Closed-form hue shift with a hand-written backward (a fraction of autograd's cost through
    the ~20 elementwise ops and ``max``/``min``); the gradient is autograd's of the same formula,
    taken as 0 through the hue where the chroma is 0 (gray pixels: the hue is undefined there)."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor) -> Tensor:
        out, (k, w, rel, cr, is_r, is_g) = _hue_parts(x, shift)
        ctx.save_for_backward(x, k, w, rel, cr, is_r, is_g)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, k, w, rel, cr, is_r, is_g = ctx.saved_tensors
        dw = (k < 1).to(grad.dtype) - ((k > 3) & (k < 4)).to(grad.dtype)  # W'(k): +1 on (0, 1), -1 on (3, 4)
        g_h = -(cr * (grad * dw).sum(1))  # dL / d hue (sixths)
        inv = torch.where(cr > 0, 1 / torch.where(cr > 0, cr, torch.ones_like(cr)), torch.zeros_like(cr))
        g_h = g_h * inv  # dL / d numerator of rel
        g_cr = -(grad * w).sum(1) - g_h * rel
        g_max = grad.sum(1) + g_cr
        r, g, b = x.unbind(1)
        minc = x.amin(1)
        min_r = minc == r
        min_g = (minc == g) & ~min_r
        is_b = ~(is_r | is_g)
        min_b = ~(min_r | min_g)
        zero = torch.zeros_like(g_h)
        # rel's numerator: red max: g - b; green max: b - r; blue max: r - g
        gr = torch.where(is_r, g_max, torch.where(is_g, -g_h, g_h)) - torch.where(min_r, g_cr, zero)
        gg = torch.where(is_g, g_max, torch.where(is_r, g_h, -g_h)) - torch.where(min_g, g_cr, zero)
        gb = torch.where(is_b, g_max, torch.where(is_r, -g_h, g_h)) - torch.where(min_b, g_cr, zero)
        return torch.stack([gr, gg, gb], 1), None


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift the HSV hue of each clip by ``shift`` turns: ``(B, 3, T, H, W), (B,) -> same``.

    The same function as ``torchvision.transforms.functional.adjust_hue`` (equal to float
    rounding; ``tests/test_augment.py``), one shift per clip, in closed form: with ``v`` the
    channel max and ``c = max - min`` (chroma), HSV -> RGB is ``v - c * w_n(h)`` for channel
    offsets ``n = 5, 3, 1`` and ``w_n(h) = clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 h) mod 6``
    (torchvision's ``p, q, t`` are ``v - c``, ``v - c f``, ``v - c (1 - f)``). Several times
    faster, forward and backward, than building and gathering torchvision's 6x3 table.
    """
    return _AdjustHue.apply(x, shift.detach())


def _blur_matrix(kernel: Tensor, n: int) -> Tensor:
    """Per-clip ``(B, n, n)`` matrices applying ``kernel (B, K)`` along an axis of length ``n``
    with replicate padding folded in: ``M[o, i] = sum_j kernel[j] * [clamp(o + j - r, 0, n - 1) == i]``."""
    radius = (kernel.shape[1] - 1) // 2
    src = (torch.arange(n, device=kernel.device)[:, None] + torch.arange(-radius, radius + 1, device=kernel.device))
    src = src.clamp(0, n - 1).expand(kernel.shape[0], n, kernel.shape[1])
    m = kernel.new_zeros(kernel.shape[0], n, n)
    return m.scatter_add(2, src, kernel[:, None, :].expand(-1, n, -1))


# a clip whose off-center blur weights are all below this is left as it is: the change would
# be under 1e-7 of the pixel range (sigma below ~0.17 px)
_BLUR_NEGLIGIBLE = 1e-8


def blur_radius(sigma: Tensor) -> int:
    """The blur kernel's radius for clips of blur ``sigma (B,)``: ``ceil(3 * max(sigma))``, at least 1."""
    return max(1, int(math.ceil(3 * float(sigma.max()))))


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int | None = None) -> Tensor:
    """Separable spatial Gaussian blur with one sigma (pixels) per clip; sigma 0 = unchanged.

    Replicate padding, kernel radius :func:`blur_radius` of ``sigma`` (or ``radius``: a whole batch's,
    for a part of it), as torchvision's ``gaussian_blur`` per image. Only the clips whose kernel moves
    a pixel by more than float rounding are computed, each axis as one batched matrix product with a
    banded per-clip matrix (faster on CPU, forward and backward, than grouped ``conv3d``).
    """
    B, C, T, H, W = x.shape
    radius = blur_radius(sigma) if radius is None else radius
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.dtype).clamp(min=1e-6)[:, None]
    kernel = torch.exp(-0.5 * (offsets / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    off_center = torch.cat([kernel[:, :radius], kernel[:, radius + 1:]], 1).amax(1)
    blurred = (sigma > 0) & (off_center > _BLUR_NEGLIGIBLE)
    idx = blurred.nonzero().view(-1)
    if idx.numel() == 0:
        return x
    # with a gradient to x, every clip goes through the products (the others with the one-hot kernel:
    # exactly themselves), as the backward of gathering and putting back a subset costs more (6.2 vs
    # 4.4 ms forward+backward for the quickstart's view batch); without one, only the blurred clips
    whole = idx.numel() == B or (x.requires_grad and torch.is_grad_enabled())
    if whole:
        kernel, y, n = torch.where(blurred[:, None], kernel, (offsets == 0).to(x.dtype)), x, B
    else:
        kernel, y, n = kernel[idx], x[idx], idx.numel()
    y = torch.bmm(y.reshape(n, C * T * H, W), _blur_matrix(kernel, W).transpose(1, 2))
    y = torch.matmul(_blur_matrix(kernel, H)[:, None], y.view(n, C * T, H, W)).view(n, C, T, H, W).to(x.dtype)
    return y if whole else x.index_put((idx,), y)  # .to: under autocast the products are bf16


def _on_subset(x: Tensor, mask: Tensor, fn) -> Tensor:
    """``fn(x[i], i)`` for the clips ``i`` where ``mask (B,)`` is set, the other clips unchanged.

    The whole batch goes straight through ``fn`` when every clip is selected, and ``x`` itself is
    returned when none is; otherwise the subset is gathered by advanced indexing and put back with
    ``index_put`` (``index_select`` / ``index_copy`` of 5-D tensors take a slow path on CPU, forward
    and backward).
    """
    idx = mask.nonzero().view(-1)
    n = idx.numel()
    if n == 0:
        return x
    if n == x.shape[0]:
        return fn(x, slice(None))
    return x.index_put((idx,), fn(x[idx], idx).to(x.dtype))


def _brightness_contrast_saturation(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """torchvision's three adjustments in order, per clip (factors ``(B,)``, 1 = unchanged, exactly):
    contrast and saturation blend towards a gray with ``torch.lerp`` (one pass each)."""
    x = (x * _per_clip(brightness.to(x.dtype))).clamp(0, 1)
    mean = _gray(x).mean(dim=(2, 3, 4), keepdim=True)  # one gray level per clip
    x = torch.lerp(mean.expand_as(x), x, _per_clip(contrast.to(x.dtype))).clamp(0, 1)
    return torch.lerp(_gray(x).expand_as(x), x, _per_clip(saturation.to(x.dtype))).clamp(0, 1)


def _color_flip(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor,
                grayscale: Tensor, flip: Tensor) -> Tensor:
    """Colour jitter, grayscale, then the horizontal flip on the whole batch, in the form
    ``torch.compile`` fuses (no per-clip subsets, whose sizes vary; the flip is an index in the fused
    loop, forward and backward): ``(B, 3, T, H, W)`` and per-clip ``(B,)`` factors (1 = unchanged),
    hue shift (0 = unchanged), grayscale and flip (0. or 1.) -> same shape. The same values as
    :meth:`ClipAugment.apply`'s eager path to float rounding, and the same gradients."""
    x = _brightness_contrast_saturation(x, brightness, contrast, saturation)
    x = torch.where(_per_clip(hue != 0), _hue_parts(x, hue)[0].clamp(0, 1), x)
    x = _grayscale(x, grayscale)
    return torch.where(_per_clip(flip != 0), x.flip(-1), x)


def _color_flip_recomputed(*args: Tensor) -> Tensor:
    """:func:`_color_flip` as one checkpointed region, the form :meth:`ClipAugment.fuse` compiles: the
    partitioner then recomputes the forward inside the backward's fused loops instead of saving ~10
    intermediates of the batch's size (identical values; forward+backward of the quickstart's view
    batch 23 -> 14 ms, ``benchmarks/README.md``)."""
    return checkpoint(_color_flip, *args, use_reentrant=False)


def _grayscale(x: Tensor, grayscale: Tensor) -> Tensor:
    """Each clip its luma where ``grayscale (B,)`` is 1, itself where 0 (``torch.lerp``: exactly either)."""
    return torch.lerp(x, _gray(x).expand_as(x), _per_clip(grayscale.to(x.dtype)))


class ClipAugment(nn.Module):
    """Appearance augmentation with one parameter set per clip (see module docstring).

    ``forward(x (B, 3, T, H, W) float in [0, 1]) -> (same shape in [0, 1], AugmentParams)``.
    """

    _fused: Compiled | None = None  # the torch.compile'd _color_flip once fuse() is called

    def __init__(
        self,
        jitter_scale: float = 1.0,
        brightness: float = 0.8,
        contrast: float = 0.8,
        saturation: float = 0.8,
        hue: float = 0.2,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        flip_p: float = 0.5,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        super().__init__()
        for name, value in (("jitter_scale", jitter_scale), ("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):
            checks.at_least(name, value, 0)
        checks.in_range("hue * jitter_scale", checks.at_least("hue", hue, 0) * jitter_scale, 0, 0.5)
        for name, value in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("flip_p", flip_p),
                            ("blur_p", blur_p)):
            checks.in_range(name, value, 0, 1)
        self.brightness, self.contrast = brightness * jitter_scale, contrast * jitter_scale
        self.saturation, self.hue = saturation * jitter_scale, hue * jitter_scale
        self.jitter_p, self.grayscale_p, self.flip_p, self.blur_p = jitter_p, grayscale_p, flip_p, blur_p
        self.blur_sigma = checks.range_pair("blur_sigma", blur_sigma, 0, math.inf, low_open=True)

    def sample(self, batch: int, frame_size: int, device: torch.device) -> AugmentParams:
        """Draw the per-clip parameters; factors of 1 (shift 0) where jitter is not applied."""
        def factor(s: float) -> Tensor:
            return torch.empty(batch, device=device).uniform_(max(0.0, 1 - s), 1 + s)

        jitter = torch.rand(batch, device=device) < self.jitter_p
        one = torch.ones(batch, device=device)
        blur = torch.rand(batch, device=device) < self.blur_p
        sigma = torch.empty(batch, device=device).uniform_(*self.blur_sigma) * frame_size / 224
        return AugmentParams(
            brightness=torch.where(jitter, factor(self.brightness), one),
            contrast=torch.where(jitter, factor(self.contrast), one),
            saturation=torch.where(jitter, factor(self.saturation), one),
            hue=torch.where(jitter, torch.empty(batch, device=device).uniform_(-self.hue, self.hue), 0 * one),
            grayscale=torch.rand(batch, device=device) < self.grayscale_p,
            flip=torch.rand(batch, device=device) < self.flip_p,
            blur_sigma=torch.where(blur, sigma, 0 * one),
        )

    def apply(self, x: Tensor, p: AugmentParams, rows: Tensor | None = None) -> Tensor:
        """Apply given parameters to ``x (B, 3, T, H, W)`` in [0, 1]; with ``rows (n,)``, ``x (n, ...)`` holds
        those clips of the batch ``p`` was drawn for, augmented as in the whole batch (the blur's radius
        is the batch's).

        Colour jitter, grayscale and flip run compiled (:meth:`fuse`, :func:`_color_flip`) or eagerly. A
        clip an operation does not change passes through it bit for bit on the eager path:
        brightness, contrast and saturation run on the whole batch with factor 1 there (``x * 1`` and
        ``torch.lerp(a, x, 1)`` are exactly ``x``), grayscale is ``torch.lerp(x, gray, 0 or 1)``
        (exactly ``x`` or ``gray``); the hue shift (costly), flip and blur are computed only for the
        clips they change and put back (``_on_subset``), so gradients flow to every clip.
        """
        radius = blur_radius(p.blur_sigma)
        if rows is not None:
            p = p.rows(rows)
        if self._fused is not None and self._fused.active:
            x = self._fused(x, *(v.to(x.dtype) for v in (p.brightness, p.contrast, p.saturation, p.hue,
                                                          p.grayscale, p.flip)))
        else:
            if bool(((p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0)).any()):
                x = self._jitter(x, p.brightness, p.contrast, p.saturation, p.hue)
            if bool(p.grayscale.any()):
                x = _grayscale(x, p.grayscale)
            x = _on_subset(x, p.flip, lambda y, i: y.flip(-1))
        if bool((p.blur_sigma > 0).any()):
            x = gaussian_blur(x, p.blur_sigma, radius)
        return x

    @staticmethod
    def _jitter(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor) -> Tensor:
        """Brightness, contrast, saturation on the whole batch, then the hue shift only where it is
        not 0 (eagerly, a subset is cheaper than the closed form on every clip)."""
        x = _brightness_contrast_saturation(x, brightness, contrast, saturation)
        return _on_subset(x, hue != 0, lambda y, i: adjust_hue(y, hue[i]).clamp(0, 1))

    def fuse(self) -> None:
        """Run colour jitter, grayscale and flip compiled by ``torch.compile``
        (:func:`_color_flip_recomputed` through :class:`~paramcrop.runtime.Compiled`: a few fused loops,
        forward and backward, instead of ~40 passes over the batch; eager :func:`_color_flip`, with a
        warning, where compiling fails). The blur stays eager (two batched matrix products: compiled,
        as products or as shifted taps, it was no faster)."""
        self._fused = Compiled(_color_flip_recomputed, "the colour augmentation", eager=_color_flip)

    def forward(self, x: Tensor) -> tuple[Tensor, AugmentParams]:
        params = self.sample(x.shape[0], x.shape[-2], x.device)
        return self.apply(x, params), params
