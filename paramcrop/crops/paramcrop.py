"""ParamCrop (Qing et al., IEEE TMM; arXiv 2108.10501; SPEC 3.4): adversarially learned 3D crops.

A small MLP generator maps Gaussian noise (fresh each step, one vector per sample) to the raw
parameters of both views' cubes; squashing keeps every cube valid; the views are cut with the
differentiable :func:`~paramcrop.geometry.crop_video`, and a gradient-reversal layer of strength
lambda between the cubes and the crop makes the generator *maximise* the loss that the backbone
minimises: one backward pass, then the backbone's optimiser and :meth:`CropMethod.adversary`'s
``step`` (:mod:`paramcrop.crops.adversary`).

Value conventions (the one place they are stated): the crop takes raw clips ``(B, 3, T, H, W)``
on the 0-255 scale (uint8 or float) and returns views on the same scale (float32); the caller
divides by 255 (augmentations work on 0-1) and normalises for the backbone (e.g.
:func:`paramcrop.train.to_input`). The ``clip`` generator input reads the clips as 0-255. The
generator and the cube maths run in float32 even inside an autocast region.

Parameterisation (each a constructor argument, so a config key ``crop.*`` and a study dimension):
``dof`` which cube parameters are learned (:mod:`paramcrop.crops.dof`); ``generator_input`` what
the generator sees; ``coupling`` how the two views relate. Their costs, measured against the
backbone's forward-backward, are negligible: ``noise`` draws ``B x noise_dim`` normals, ``none``
draws nothing, ``clip`` adds one pooling pass over the raw clip (``B x 3 x T x H x W`` reads, no
gradient) and 27 input features; ``independent`` doubles the generator (two MLPs of 6 outputs).

The paper's exact hyper-parameters are not public; ours are documented defaults, each a
constructor argument.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.crops.base import CROPS, CropMethod, scale_gradient
from paramcrop.crops.dof import DEFAULT_DOF, DEFAULT_FIXED_EXTENT, UNCONTROLLED, parse_dof
from paramcrop.crops.random import RandomCubicCrop


def grad_reverse(x: Tensor, strength: float) -> Tensor:
    """Identity forward; the gradient is multiplied by ``-strength`` backward.

    ``strength == 0`` detaches ``x``: nothing upstream receives a gradient (so not even weight
    decay moves the generator, since optimisers skip parameters whose ``grad`` is ``None``).
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return x.detach()
    return scale_gradient(x, -strength)


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
        noise_dim: size of the Gaussian noise vector per sample (of the learned code for ``none``).
        hidden: width of the generator's hidden layers.
        depth: number of hidden layers (>= 1).
        s_min, s_max: range of the spatial half-extents (fraction of the frame side).
        t_min: minimum temporal half-extent (fraction of the clip length; the maximum is 1).
        init_extent: where in its range each half-extent starts (0-1); 0.9 = nearly whole-clip
            views at first, so training goes "from easy to hard".
        init_std: standard deviation of the last layer's initial weights (small: the views start
            close to each other; the noise still makes them differ).
        dof: the learned degrees of freedom, a preset or a list (:mod:`paramcrop.crops.dof`);
            the raw outputs of uncontrolled parameters are unused (they receive no gradient).
        fixed_extent_xy, fixed_extent_t: spatial and temporal half-extents of an uncontrolled extent whose
            position is learned (e.g. ``dof=position``).
        uncontrolled: ``fixed`` (the uncontrolled parameters are fixed) or ``random`` (drawn as the
            random crop draws them, its default ranges); see :mod:`paramcrop.crops.dof`.
        generator_input: ``noise`` (fresh Gaussian noise per sample), ``none`` (a learned code:
            one deterministic pair of cubes shared by the batch) or ``clip`` (noise plus a detached
            summary of each raw clip, :func:`clip_summary`, so the adversary can pick a hard crop
            per video).
        coupling: ``joint`` (one generator emits both views), ``independent`` (one generator, with
            its own input, per view) or ``relative`` (the generator emits view 1 and a raw offset
            ``delta``; view 2 is ``squash(raw1 + delta)``: its centre shifted and its extents scaled
            relative to view 1's in the squashing's coordinates, inside the clip by construction).
        grad_fraction: the fraction of each batch's clips whose views carry the gradient to the cubes,
            in (0, 1]: a uniform random subset of ``round(grad_fraction * B)`` clips (half up, at least
            1) per step, their cubes' gradient scaled by ``B / n`` (an unbiased estimate of the whole
            batch's); the other clips' views are cut (and, in the trainer, augmented) without a graph to
            the cubes, which is cheaper (:func:`~paramcrop.crops.base.by_parts`). 1 (default): every
            clip, the exact gradient.
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
        dof: str | Sequence[str] = DEFAULT_DOF,
        fixed_extent_xy: float = DEFAULT_FIXED_EXTENT[0],
        fixed_extent_t: float = DEFAULT_FIXED_EXTENT[1],
        uncontrolled: str = "fixed",
        generator_input: str = "noise",
        coupling: str = "joint",
        grad_fraction: float = 1.0,
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
        for name, value, valid in (("uncontrolled", uncontrolled, UNCONTROLLED),
                                   ("generator_input", generator_input, GENERATOR_INPUTS),
                                   ("coupling", coupling, COUPLINGS)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        self.grad_fraction = checks.in_range("grad_fraction", grad_fraction, 0, 1, low_open=True)
        self.dof = parse_dof(dof, fixed_extent_xy, fixed_extent_t)
        self.strength, self.warmup_steps = float(strength), int(warmup_steps)
        self.noise_dim, self.s_min, self.s_max, self.t_min = int(noise_dim), s_min, s_max, t_min
        self.generator_input, self.coupling, self.uncontrolled = generator_input, coupling, uncontrolled
        # the random crop that draws the uncontrolled parameters (no parameters, no state)
        self.uncontrolled_draws = RandomCubicCrop(size) if uncontrolled == "random" else None

        width_in = self.noise_dim + (SUMMARY_DIM if generator_input == "clip" else 0)
        logit = math.log(init_extent / (1 - init_extent))
        if coupling == "independent":  # one generator per view, 6 raw outputs each
            self.generator = nn.ModuleList([_mlp(width_in, hidden, int(depth), 1, init_std, logit) for _ in range(2)])
        else:  # both views at once: the generator controls their relation
            self.generator = _mlp(width_in, hidden, int(depth), 2, init_std, logit)
            if coupling == "relative":
                with torch.no_grad():
                    self.generator[-1].bias[6:] = 0.0  # delta starts at zero: view 2 near view 1
        self.n_inputs = 2 if coupling == "independent" else 1
        if generator_input == "none":
            self.code = nn.Parameter(torch.randn(self.n_inputs, self.noise_dim))

    def strength_at(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.strength
        return self.strength * min(1.0, step / self.warmup_steps)

    def inputs(self, batch: int, device: torch.device, clips: Tensor | None = None) -> Tensor:
        """The generators' inputs ``(B, G, width_in)``, ``G`` = 1 or 2 (``independent``)."""
        if self.generator_input == "none":
            return self.code.unsqueeze(0).expand(batch, -1, -1)
        noise = torch.randn(batch, self.n_inputs, self.noise_dim, device=device)
        if self.generator_input == "noise":
            return noise
        if clips is None:
            raise ValueError("generator_input='clip' needs the clips: call crop(clips, step), not sample_cubes")
        return torch.cat([noise, clip_summary(clips).unsqueeze(1).expand(-1, self.n_inputs, -1)], -1)

    def raw_outputs(self, inputs: Tensor) -> Tensor:
        """Inputs ``(B, G, width_in)`` (or ``(B, width_in)``) -> the generator's raw outputs ``(B, 2, 6)``:
        per view ``(ux, uy, ut, vx, vy, vt)`` (:func:`squash`); with ``relative`` the second row is
        view 2's offset ``delta`` from view 1."""
        inputs = inputs.float()
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(1)
        if self.coupling == "independent":
            return torch.stack([g(inputs[:, k]) for k, g in enumerate(self.generator)], 1)
        return self.generator(inputs[:, 0]).view(-1, 2, 6)

    def cubes_from_raw(self, raw: Tensor) -> Tensor:
        """Raw outputs ``(B, 2, 6)`` -> valid cubes ``(B, 2, 6)``; the uncontrolled parameters
        are filled in as :mod:`paramcrop.crops.dof` documents."""
        if self.coupling == "relative":
            raw = torch.stack([raw[:, 0], raw[:, 0] + raw[:, 1]], 1)
        squashed = squash(raw, self.s_min, self.s_max, self.t_min)
        half = squashed[..., 3:]
        unit = torch.tanh(raw[..., :3])
        batch = raw.shape[0]
        views = []
        for k in range(2):
            fill = None if self.uncontrolled_draws is None else self.uncontrolled_draws.draw_parts(batch, raw.device)
            views.append(self.dof.compose(half[:, k, :2], half[:, k, 2:], unit[:, k, :2], unit[:, k, 2:], batch,
                                          raw.device, raw.dtype, fill=fill))
        return torch.stack(views, 1)

    def generate(self, inputs: Tensor) -> Tensor:
        """Generator inputs (e.g. noise ``(B, noise_dim)``) -> valid cubes ``(B, 2, 6)`` (no gradient reversal)."""
        return self.cubes_from_raw(self.raw_outputs(inputs))

    def cubes(self, clips: Tensor, step: int) -> tuple[Tensor, Tensor]:
        return self._reversed(self.inputs(clips.shape[0], clips.device, clips), step)

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        return self._reversed(self.inputs(batch, device), step)

    def _reversed(self, inputs: Tensor, step: int) -> tuple[Tensor, Tensor]:
        with torch.autocast(inputs.device.type, enabled=False):  # the generator and the cubes in float32
            cubes = grad_reverse(self.generate(inputs), self.strength_at(step))
        return cubes[:, 0], cubes[:, 1]


GENERATOR_INPUTS = ("noise", "none", "clip")
COUPLINGS = ("joint", "independent", "relative")
SUMMARY_GRID = (2, 2, 2)
SUMMARY_DIM = 3 * (math.prod(SUMMARY_GRID) + 1)


@torch.no_grad()
def clip_summary(clips: Tensor) -> Tensor:
    """A cheap, detached summary of raw RGB clips ``(B, 3, T, H, W)`` on the 0-255 scale:
    per-channel means over a 2x2x2 grid and per-channel standard deviations, on the 0-1 scale ->
    ``(B, 27)`` float32."""
    if clips.dim() != 5 or clips.shape[1] != 3:
        raise ValueError(f"generator_input='clip' needs RGB clips (B, 3, T, H, W), got shape {tuple(clips.shape)}")
    x = clips.float() / 255.0
    means = F.adaptive_avg_pool3d(x, SUMMARY_GRID).flatten(1)
    return torch.cat([means, x.flatten(2).std(-1)], 1)


def _mlp(width_in: int, hidden: int, depth: int, views: int, init_std: float, logit: float) -> nn.Sequential:
    """``depth`` ReLU layers of ``hidden`` and a last layer of ``6 * views`` raw outputs, initialised
    so that every view starts centred with its half-extents at ``sigmoid(logit)`` of their range."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width_in, hidden), nn.ReLU(inplace=True)]
        width_in = hidden
    last = nn.Linear(width_in, 6 * views)
    nn.init.normal_(last.weight, std=init_std)
    with torch.no_grad():
        last.bias.view(views, 6)[:, :3] = 0.0
        last.bias.view(views, 6)[:, 3:] = logit
    return nn.Sequential(*layers, last)
