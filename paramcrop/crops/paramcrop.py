"""ParamCrop (Qing et al., IEEE TMM; arXiv 2108.10501; SPEC 3.4): adversarially learned 3D crops.

A small MLP generator maps Gaussian noise (fresh each step, one vector per sample) to the raw
parameters of both views' cubes; squashing keeps every cube valid; the views are cut with the
differentiable :func:`~paramcrop.geometry.crop_video`, and a gradient-reversal layer of strength
lambda between the cubes and the crop makes the generator *maximise* the loss that the backbone
minimises: the trainer runs one backward pass and steps both optimisers.

The paper's exact hyper-parameters are not public; ours are documented defaults, each a
constructor argument.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from paramcrop.crops.base import CROPS, CropMethod


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def grad_reverse(x: Tensor, strength: float) -> Tensor:
    """Identity forward; the gradient is multiplied by ``-strength`` backward.

    ``strength == 0`` detaches ``x``: nothing upstream receives a gradient (so not even weight
    decay moves the generator, since optimisers skip parameters whose ``grad`` is ``None``).
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return x.detach()
    return _GradientReversal.apply(x, strength)


def squash(raw: Tensor, s_min: float, s_max: float, t_min: float) -> Tensor:
    """Raw generator output ``(..., 6)`` -> always-valid cubes ``(..., 6)``.

    Raw layout ``(ux, uy, ut, vx, vy, vt)``: spatial half-extent ``s_min + (s_max - s_min) *
    sigmoid(v)``, temporal half-extent ``t_min + (1 - t_min) * sigmoid(vt)``, center
    ``(1 - h) * tanh(u)``, so the cube stays inside the clip for any finite raw value.
    """
    lo = raw.new_tensor([s_min, s_min, t_min])
    hi = raw.new_tensor([s_max, s_max, 1.0])
    half = lo + (hi - lo) * torch.sigmoid(raw[..., 3:])
    center = (1 - half) * torch.tanh(raw[..., :3])
    return torch.cat([center, half], -1)


@CROPS.register("paramcrop")
class ParamCrop(CropMethod):
    """Learned cubic crops for two views.

    Args:
        size: output ``(t, h, w)``.
        strength: adversarial strength lambda >= 0; 0 = the generator is never trained (a
            noise-driven crop fixed at its initialisation).
        warmup_steps: lambda ramps linearly from 0 to ``strength`` over this many steps (0 = none).
        noise_dim: size of the Gaussian noise vector per sample.
        hidden: width of the generator's hidden layers.
        depth: number of hidden layers (>= 1).
        s_min, s_max: range of the spatial half-extents (fraction of the frame side).
        t_min: minimum temporal half-extent (fraction of the clip length; the maximum is 1).
        init_extent: where in its range each half-extent starts (0-1); 0.9 = nearly whole-clip
            views at first, so training goes "from easy to hard".
        init_std: standard deviation of the last layer's initial weights (small: the views start
            close to each other; the noise still makes them differ).
    """

    def __init__(
        self,
        size: Sequence[int],
        strength: float = 1.0,
        warmup_steps: int = 0,
        noise_dim: int = 16,
        hidden: int = 64,
        depth: int = 2,
        s_min: float = 0.3,
        s_max: float = 1.0,
        t_min: float = 0.5,
        init_extent: float = 0.9,
        init_std: float = 0.05,
    ) -> None:
        super().__init__(size)
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        for name, value in (("noise_dim", noise_dim), ("hidden", hidden), ("depth", depth)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not 0 < s_min <= s_max <= 1:
            raise ValueError(f"s_min and s_max must satisfy 0 < s_min <= s_max <= 1, got s_min={s_min}, s_max={s_max}")
        if not 0 < t_min <= 1:
            raise ValueError(f"t_min must be in (0, 1], got {t_min}")
        if not 0 < init_extent < 1:
            raise ValueError(f"init_extent must be in (0, 1), got {init_extent}")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.strength, self.warmup_steps = float(strength), int(warmup_steps)
        self.noise_dim, self.s_min, self.s_max, self.t_min = int(noise_dim), s_min, s_max, t_min

        layers: list[nn.Module] = []
        width_in = self.noise_dim
        for _ in range(int(depth)):
            layers += [nn.Linear(width_in, hidden), nn.ReLU(inplace=True)]
            width_in = hidden
        last = nn.Linear(width_in, 2 * 6)  # both views at once: the generator controls their relation
        nn.init.normal_(last.weight, std=init_std)
        with torch.no_grad():
            last.bias.view(2, 6)[:, :3] = 0.0
            last.bias.view(2, 6)[:, 3:] = math.log(init_extent / (1 - init_extent))
        self.generator = nn.Sequential(*layers, last)

    def strength_at(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.strength
        return self.strength * min(1.0, step / self.warmup_steps)

    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's parameters, for their own optimiser."""
        return list(self.generator.parameters())

    def generate(self, noise: Tensor) -> Tensor:
        """Noise ``(B, noise_dim)`` -> valid cubes ``(B, 2, 6)`` (no gradient reversal)."""
        raw = self.generator(noise).view(-1, 2, 6)
        return squash(raw, self.s_min, self.s_max, self.t_min)

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        noise = torch.randn(batch, self.noise_dim, device=device)
        cubes = grad_reverse(self.generate(noise), self.strength_at(step))
        return cubes[:, 0], cubes[:, 1]
