"""Clip-consistent appearance augmentation, batched on tensors (SPEC 3.3, issue 2).

Applied after cropping to each view ``(B, C, T, H, W)`` float in [0, 1]: one parameter set per
clip, shared by all its frames (CVRL's temporally consistent augmentation). In order: colour
jitter with probability ``jitter_p`` (brightness, contrast, saturation, hue, in that fixed
order), grayscale with ``grayscale_p``, horizontal flip with ``flip_p``, Gaussian blur with
``blur_p``. Defaults are CVRL's (jitter strengths 0.8/0.8/0.8/0.2 times ``strength``, p = 0.8;
grayscale p = 0.2; flip p = 0.5; blur p = 0.5 with sigma 0.1-2.0 px at 224 px, scaled to the
frame size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def _per_clip(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """Luma ``(B, 1, T, H, W)`` of RGB ``(B, 3, T, H, W)``."""
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1, 1)
    return (x * w).sum(1, keepdim=True)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift the HSV hue of each clip by ``shift`` turns: ``(B, 3, T, H, W), (B,) -> same``.

    The same arithmetic as ``torchvision.transforms.functional.adjust_hue``, one shift per clip.
    """
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    sat = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    hue = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.view(-1, 1, 1, 1), 1.0)
    # HSV -> RGB
    i = torch.floor(hue * 6.0)
    f = hue * 6.0 - i
    i = i.to(torch.int64) % 6
    v = maxc
    p = (v * (1.0 - sat)).clamp(0.0, 1.0)
    q = (v * (1.0 - sat * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - sat * (1.0 - f))).clamp(0.0, 1.0)
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1)
    return table.gather(1, i[:, None, None].expand(-1, 1, 3, *i.shape[1:])).squeeze(1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable spatial Gaussian blur with one sigma (pixels) per clip; sigma 0 = unchanged."""
    B, C, T, H, W = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.clamp(min=1e-6)[:, None]
    kernel = torch.exp(-0.5 * (offsets / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(B, -1)
    kernel = torch.where(sigma[:, None] > 0, kernel, identity)  # (B, K)
    k = kernel.repeat_interleave(C, 0)  # one kernel per (clip, channel) group
    y = x.reshape(1, B * C, T, H, W)
    y = F.conv3d(F.pad(y, (radius, radius, 0, 0, 0, 0), mode="replicate"), k.view(B * C, 1, 1, 1, -1), groups=B * C)
    y = F.conv3d(F.pad(y, (0, 0, radius, radius, 0, 0), mode="replicate"), k.view(B * C, 1, 1, -1, 1), groups=B * C)
    return y.view(B, C, T, H, W)


class ClipAugment(nn.Module):
    """Appearance augmentation with one parameter set per clip (see module docstring).

    ``forward(x (B, 3, T, H, W) float in [0, 1]) -> (same shape in [0, 1], AugmentParams)``.
    """

    def __init__(
        self,
        strength: float = 1.0,
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
        for name, value in (("strength", strength), ("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 <= hue * strength <= 0.5:
            raise ValueError(f"hue * strength must be in [0, 0.5], got {hue * strength}")
        for name, value in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("flip_p", flip_p),
                            ("blur_p", blur_p)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if len(blur_sigma) != 2 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be a (min, max) pair with 0 < min <= max, got {blur_sigma}")
        self.brightness, self.contrast = brightness * strength, contrast * strength
        self.saturation, self.hue = saturation * strength, hue * strength
        self.jitter_p, self.grayscale_p, self.flip_p, self.blur_p = jitter_p, grayscale_p, flip_p, blur_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))

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

    def apply(self, x: Tensor, p: AugmentParams) -> Tensor:
        """Apply given parameters to ``x (B, 3, T, H, W)`` in [0, 1]."""
        x = (x * _per_clip(p.brightness)).clamp(0, 1)
        mean = _gray(x).mean(dim=(2, 3, 4), keepdim=True)  # one gray level per clip
        x = (mean + (x - mean) * _per_clip(p.contrast)).clamp(0, 1)
        gray = _gray(x)
        x = (gray + (x - gray) * _per_clip(p.saturation)).clamp(0, 1)
        if bool((p.hue != 0).any()):
            x = adjust_hue(x, p.hue).clamp(0, 1)
        x = torch.where(_per_clip(p.grayscale), _gray(x).expand_as(x), x)
        x = torch.where(_per_clip(p.flip), x.flip(-1), x)
        if bool((p.blur_sigma > 0).any()):
            x = gaussian_blur(x, p.blur_sigma)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, AugmentParams]:
        params = self.sample(x.shape[0], x.shape[-2], x.device)
        return self.apply(x, params), params
