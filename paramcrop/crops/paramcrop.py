"""ParamCrop (Qing et al., IEEE TMM; arXiv 2108.10501): adversarially learned 3D crops.

A small MLP generator maps Gaussian noise (fresh each step, one vector per sample) to the raw
parameters of both views' cubes; squashing keeps every cube valid; the views are cut with the
differentiable :func:`~paramcrop.geometry.crop_video`, and a gradient-reversal layer of strength
lambda between the cubes and the crop makes the generator *maximise* the loss that the backbone
minimises: one backward pass, then the backbone's optimiser and :meth:`CropMethod.adversary`'s
``step`` (:mod:`paramcrop.crops.adversary`).

Value conventions (the one place they are stated): the crop takes raw clips ``(B, 3, T, H, W)``
on the 0-255 scale (uint8 or float) and returns views on the same scale (float32); the caller
divides by 255 (augmentations work on 0-1) and normalises for the backbone (e.g.
:func:`paramcrop.data.batches.to_input`). The ``clip`` generator input reads the clips as 0-255. The
generator and the cube maths run in float32 even inside an autocast region.

Parameterisation (each a constructor argument, so a config key ``crop.*`` and a study dimension):
``dof`` which cube parameters are learned (:mod:`paramcrop.crops.dof`); ``generator_input`` what
the generator sees; ``coupling`` how the two views relate. Their costs, measured against the
backbone's forward-backward, are negligible: ``noise`` draws ``B x noise_dim`` normals, ``none``
draws nothing, ``clip`` adds one pooling pass over the raw clip (``B x 3 x T x H x W`` reads, no
gradient) and 27 input features; ``independent`` doubles the generator (two MLPs of 6 outputs).

**Disparity budget** (``budget``, null = none): the smallest volume IoU a pair of views may reach,
enforced for every pair by construction, not by a penalty. After squashing, view 2 is moved along
the straight segment (in cube parameters) from its generated cube ``c2`` toward view 1's ``c1``:
``c2' = lerp(c1, c2, t)``, with ``t`` the largest weight in [0, 1] at which
``IoU(c1, c2') >= bound`` holds (``t = 1``, the generated pair untouched, when it already does).
``t`` is found per pair by bisection (20 halvings, without gradient) that keeps the invariant at
its lower end (``t = 0``: the two views coincide, as they do at a bound of 1), so the bound holds
whatever the IoU does along the segment. The cubes of the segment are valid (inside the clip,
extents in range, the degrees of freedom kept: the valid cubes form a convex set that every such
constraint keeps), and ``c2'`` is differentiable in both generated cubes at the fixed ``t``
(``(1 - t)`` to ``c1``, ``t`` to ``c2``); ``t`` itself carries no gradient. ``budget_schedule``:
``constant`` (the bound is ``budget``) or ``linear`` (it moves from 1 at the first step to ``budget``
at the last, ``p = step / (steps - 1)``; ``steps`` is filled in by the trainer with the run's, as
for the curriculum crop).

Diagnostics (:data:`Views.metrics <paramcrop.crops.base.Views>`): ``train/generator_saturation``,
the fraction of the squashed outputs that a controlled parameter reads lying within 1 % of a bound
of their range (:func:`saturation`).

The paper's exact hyper-parameters are not public; ours are documented defaults, each a
constructor argument.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks, sinks
from paramcrop.crops.base import CROPS, CropMethod, scale_gradient
from paramcrop.crops.curriculum import schedule_weight
from paramcrop.crops.dof import DEFAULT_DOF, DEFAULT_FIXED_EXTENT, UNCONTROLLED, DegreesOfFreedom, parse_dof
from paramcrop.crops.random import RandomCubicCrop
from paramcrop.geometry import view_iou


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


SATURATION_MARGIN = 0.01


def saturation(raw: Tensor, used: Sequence[int]) -> Tensor:
    """Fraction (0-d tensor) of the squashed outputs within :data:`SATURATION_MARGIN` (1 %) of a bound of
    their range, over the raw parameters ``raw (..., 6)`` (:func:`squash`'s layout) at positions ``used``.

    Each squashing mapped onto [0, 1]: a centre's ``(tanh(u) + 1) / 2 = sigmoid(2u)``, an extent's
    ``sigmoid(v)``; an output is saturated when that is below 0.01 or above 0.99 (the squashing's slope
    is then below 4 % of its largest)."""
    unit = torch.sigmoid(raw[..., list(used)].detach() * raw.new_tensor([2.0, 2, 2, 1, 1, 1])[list(used)])
    return ((unit < SATURATION_MARGIN) | (unit > 1 - SATURATION_MARGIN)).float().mean()


def used_outputs(dof: DegreesOfFreedom) -> tuple[int, ...]:
    """The raw outputs ``(ux, uy, ut, vx, vy, vt)`` of a view that ``dof``'s controlled parameters read."""
    reads = {"position_xy": (0, 1), "position_t": (2,), "extent_xy": (3,), "aspect": (4,), "extent_t": (5,)}
    return tuple(sorted(i for name in dof.controlled for i in reads[name]))


BUDGET_SCHEDULES = ("constant", "linear")
BISECTION_STEPS = 20


@torch.no_grad()
def budget_weight(cubes1: Tensor, cubes2: Tensor, bound: float, iterations: int = BISECTION_STEPS) -> Tensor:
    """Per pair of cubes ``(B, 6)``, the weight ``t (B,)`` in [0, 1] of the module doc: 1 where
    ``IoU(cubes1, cubes2) >= bound``, else the largest ``t`` found by ``iterations`` bisection steps
    with ``IoU(cubes1, lerp(cubes1, cubes2, t)) >= bound`` (0 when none, and for ``bound >= 1``: the
    cubes coincide)."""
    lo, hi = cubes1.new_zeros(cubes1.shape[0]), cubes1.new_ones(cubes1.shape[0])
    if bound >= 1:
        return lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        holds = view_iou(cubes1, torch.lerp(cubes1, cubes2, mid[:, None])) >= bound
        lo, hi = torch.where(holds, mid, lo), torch.where(holds, hi, mid)
    return torch.where(view_iou(cubes1, cubes2) >= bound, torch.ones_like(lo), lo)


def hold_budget(cubes1: Tensor, cubes2: Tensor, bound: float) -> Tensor:
    """View 2's cubes ``(B, 6)`` moved toward view 1's until their IoU is at least ``bound``
    (:func:`budget_weight`); differentiable in both at the fixed weight."""
    return torch.lerp(cubes1, cubes2, budget_weight(cubes1.detach(), cubes2.detach(), bound)[:, None])


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
        budget: the smallest view IoU of a pair, in (0, 1], held by construction (module doc); null = none.
        budget_schedule: ``constant`` or ``linear`` (the bound from 1 at the first step to ``budget``).
        steps: the training steps ``linear`` spans; null = the run's ``steps`` (filled in by the trainer).
        grad_fraction: the fraction of each batch's clips whose views carry the gradient to the cubes,
            in (0, 1]: a uniform random subset of ``round(grad_fraction * B)`` clips (half up, at least
            1) per step, their cubes' gradient scaled by ``B / n`` (an unbiased estimate of the whole
            batch's); the other clips' views are cut (and, in the trainer, augmented) without a graph to
            the cubes, which is cheaper (:func:`~paramcrop.crops.base.by_parts`). 1 (default): every
            clip, the exact gradient.
    """

    LABEL = "ParamCrop"

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
        budget: float | None = None,
        budget_schedule: str = "constant",
        steps: int | None = None,
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
        self.budget = None if budget is None else checks.in_range("budget", budget, 0, 1, low_open=True)
        self.budget_schedule = checks.one_of("budget_schedule", budget_schedule, BUDGET_SCHEDULES)
        self.steps = None if steps is None else checks.positive("steps", steps, integer=True)
        self.grad_fraction = checks.in_range("grad_fraction", grad_fraction, 0, 1, low_open=True)
        self.dof = parse_dof(dof, fixed_extent_xy, fixed_extent_t)
        self.used = used_outputs(self.dof)
        self.last_saturation: Tensor | None = None  # of the last generated batch, read by forward
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

    @classmethod
    def uses_run_steps(cls, keys) -> bool:
        """Only the ``linear`` budget schedule reads the run's steps."""
        return (super().uses_run_steps(keys) and keys.get("budget") is not None
                and keys.get("budget_schedule") == "linear")

    def strength_at(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.strength
        return self.strength * min(1.0, step / self.warmup_steps)

    def budget_at(self, step: int) -> float | None:
        """The smallest view IoU allowed at ``step`` (module doc); None without a budget."""
        if self.budget is None or self.budget_schedule == "constant":
            return self.budget
        if self.steps is None:
            raise ValueError("budget_schedule 'linear' needs the total `steps` (crop.steps; the trainer fills it "
                             "with the run's steps)")
        return 1 + schedule_weight("linear", step / max(1, self.steps - 1)) * (self.budget - 1)

    def within_budget(self, cubes: Tensor, step: int) -> Tensor:
        """Cubes ``(B, 2, 6)`` with view 2 held within the budget in force at ``step`` (:func:`hold_budget`)."""
        bound = self.budget_at(step)
        if bound is None:
            return cubes
        return torch.stack([cubes[:, 0], hold_budget(cubes[:, 0], cubes[:, 1], bound)], 1)

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
        batch = inputs.shape[0]
        if self.generator_input == "none":  # every clip's input is the code: one pair for the batch,
            inputs = inputs[:1]  # exactly (a batched matmul may round identical rows apart on some CPUs)
        if self.coupling == "independent":
            raw = torch.stack([g(inputs[:, k]) for k, g in enumerate(self.generator)], 1)
        else:
            raw = self.generator(inputs[:, 0]).view(-1, 2, 6)
        return raw.expand(batch, -1, -1)

    def cubes_from_raw(self, raw: Tensor) -> Tensor:
        """Raw outputs ``(B, 2, 6)`` -> valid cubes ``(B, 2, 6)``; the uncontrolled parameters
        are filled in as :mod:`paramcrop.crops.dof` documents."""
        raw = self.view_raw(raw)
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

    def view_raw(self, raw: Tensor) -> Tensor:
        """The generator's raw outputs ``(B, 2, 6)`` -> each view's raw parameters ``(B, 2, 6)``, what
        :func:`squash` reads (``relative``: view 2's are view 1's plus the offset)."""
        if self.coupling == "relative":
            return torch.stack([raw[:, 0], raw[:, 0] + raw[:, 1]], 1)
        return raw

    def generate(self, inputs: Tensor) -> Tensor:
        """Generator inputs (e.g. noise ``(B, noise_dim)``) -> valid cubes ``(B, 2, 6)`` (no gradient
        reversal, no budget)."""
        return self.cubes_from_raw(self.raw_outputs(inputs))

    def metrics(self) -> dict[str, Tensor]:
        """``train/generator_saturation`` of the last generated batch's raw outputs."""
        return {} if self.last_saturation is None else {sinks.GENERATOR_SATURATION: self.last_saturation}

    def cubes(self, clips: Tensor, step: int) -> tuple[Tensor, Tensor]:
        return self._reversed(self.inputs(clips.shape[0], clips.device, clips), step)

    def sample_cubes(self, batch: int, device: torch.device, step: int) -> tuple[Tensor, Tensor]:
        return self._reversed(self.inputs(batch, device), step)

    def _reversed(self, inputs: Tensor, step: int) -> tuple[Tensor, Tensor]:
        with torch.autocast(inputs.device.type, enabled=False):  # the generator and the cubes in float32
            raw = self.raw_outputs(inputs)
            self.last_saturation = saturation(self.view_raw(raw), self.used)
            cubes = grad_reverse(self.within_budget(self.cubes_from_raw(raw), step), self.strength_at(step))
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
