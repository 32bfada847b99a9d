"""Degrees of freedom of a crop: which of the cube's parameters a method controls.

One definition shared by the learned crop (:class:`~paramcrop.crops.paramcrop.ParamCrop`) and its
random counterpart (:class:`~paramcrop.crops.random.RandomCubicCrop`), so every learned variant has a
like-for-like random baseline. The parameters:

- ``extent_xy``: the spatial half-extents; without ``aspect`` the box is square (``hx == hy``).
- ``aspect``: a free aspect ratio (``hx != hy``); needs ``extent_xy``.
- ``position_xy``: the spatial centre.
- ``extent_t``: the temporal half-extent.
- ``position_t``: the temporal centre.

Presets (``crop.dof: NAME``) or an explicit list (``crop.dof: [extent_xy, aspect, position_xy]``):
``spatiotemporal`` (all five; the default), ``spatial``, ``temporal``, ``scale`` (extents only: views centred) and
``position`` (centres only: extents fixed).

**What an uncontrolled parameter does** (the decision): by default (``uncontrolled: fixed``) it is
fixed, identically for both views and every sample, so an ablation removes a degree of freedom
rather than replacing it by noise. An uncontrolled position is the centre (0). An uncontrolled
extent is the whole clip (1) on an axis group whose position is uncontrolled too (e.g.
``spatial``: every view spans the whole clip in time), and the half-extents ``fixed_extent_xy``
(spatial, default 0.8) / ``fixed_extent_t`` (temporal, default 0.75) on an axis group whose
position is controlled (``position``: boxes of fixed size that move; a whole-clip box could not
move). An uncontrolled aspect is a square box.

ParamCrop also offers ``uncontrolled: random``: uncontrolled extents and positions are drawn per
view and sample as the random crop draws them with its default ranges (area 0.3-1, aspect 0.5-2,
duration 0.5-1, uniform placement), so e.g. ``spatial`` learns the box while time stays random.
An uncontrolled aspect is still a square box of the learned size. (For the random crop itself
``random`` would just be ``spatiotemporal``, so it has no such switch.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

PARAMETERS = ("extent_xy", "aspect", "position_xy", "extent_t", "position_t")
PRESETS: dict[str, tuple[str, ...]] = {
    "spatiotemporal": PARAMETERS,
    "spatial": ("extent_xy", "aspect", "position_xy"),
    "temporal": ("extent_t", "position_t"),
    "scale": ("extent_xy", "aspect", "extent_t"),
    "position": ("position_xy", "position_t"),
}
DEFAULT_DOF = "spatiotemporal"
DEFAULT_FIXED_EXTENT = (0.8, 0.75)
UNCONTROLLED = ("fixed", "random")


@dataclass(frozen=True)
class DegreesOfFreedom:
    """The controlled parameters and the fixed extents of uncontrolled ones (see the module doc)."""

    controlled: frozenset[str]
    fixed_extent: tuple[float, float] = DEFAULT_FIXED_EXTENT

    def __contains__(self, name: str) -> bool:
        return name in self.controlled

    @property
    def name(self) -> str:
        """The preset's name, or the controlled parameters joined by ``+`` in canonical order."""
        for preset, params in PRESETS.items():
            if self.controlled == frozenset(params):
                return preset
        return "+".join(p for p in PARAMETERS if p in self.controlled)

    def fixed_half(self, axis: str) -> float:
        """The half-extent of an uncontrolled extent on ``axis`` (``"xy"`` or ``"t"``)."""
        if f"position_{axis}" not in self.controlled:
            return 1.0
        return self.fixed_extent[0 if axis == "xy" else 1]

    def compose(self, hxy: Tensor | None, ht: Tensor | None, uxy: Tensor | None, ut: Tensor | None,
                batch: int, device: torch.device, dtype: torch.dtype = torch.float32,
                fill: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """Cubes ``(batch, 6)`` from the controlled parts, the uncontrolled ones filled in.

        ``hxy (B, 2)`` spatial half-extents (``hy`` is ignored and set to ``hx`` without
        ``aspect``), ``ht (B, 1)``, unit positions ``uxy (B, 2)``, ``ut (B, 1)`` in [-1, 1]; the
        centre is ``(1 - h) * u`` so the cube stays inside the clip. A part is read only when its
        parameter is controlled (pass ``None`` otherwise). Uncontrolled parts are the fixed values
        of the module doc, or the parts ``fill = (hxy, ht, uxy, ut)`` when given (random draws).
        """
        def const(value: float, k: int) -> Tensor:
            return torch.full((batch, k), value, device=device, dtype=dtype)

        fixed = fill or (const(self.fixed_half("xy"), 2), const(self.fixed_half("t"), 1), const(0.0, 2), const(0.0, 1))
        if "extent_xy" in self.controlled:
            hxy = hxy if "aspect" in self.controlled else hxy[:, :1].expand(-1, 2)
        else:
            hxy = fixed[0]
        ht = ht if "extent_t" in self.controlled else fixed[1]
        half = torch.cat([hxy, ht], -1)
        uxy = uxy if "position_xy" in self.controlled else fixed[2]
        ut = ut if "position_t" in self.controlled else fixed[3]
        return torch.cat([(1 - half) * torch.cat([uxy, ut], -1), half], -1)


def parse_dof(value: str | Sequence[str], fixed_extent_xy: float = DEFAULT_FIXED_EXTENT[0],
              fixed_extent_t: float = DEFAULT_FIXED_EXTENT[1]) -> DegreesOfFreedom:
    """A preset name or a list of parameter names -> :class:`DegreesOfFreedom`.

    ``ValueError`` (naming ``dof`` and listing the valid presets and parameters) for an unknown
    preset or parameter, an empty list, or ``aspect`` without ``extent_xy``; for a fixed extent outside (0, 1].
    """
    valid = f"valid presets: {', '.join(PRESETS)}; or a list of parameters from: {', '.join(PARAMETERS)}"
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown dof preset {value!r}; {valid}")
        controlled = frozenset(PRESETS[value])
    else:
        names = list(value)
        unknown = [n for n in names if n not in PARAMETERS]
        if unknown or not names:
            problem = f"unknown parameter(s) {', '.join(map(repr, unknown))}" if unknown else "empty"
            raise ValueError(f"dof {names!r}: {problem}; {valid}")
        controlled = frozenset(names)
    if "aspect" in controlled and "extent_xy" not in controlled:
        raise ValueError("dof: 'aspect' needs 'extent_xy' (a free aspect ratio of a box whose size is learned); "
                         f"{valid}")
    for name, extent in (("fixed_extent_xy", fixed_extent_xy), ("fixed_extent_t", fixed_extent_t)):
        if not 0 < extent <= 1:
            raise ValueError(f"{name} must be a half-extent in (0, 1], got {extent}")
    return DegreesOfFreedom(controlled, (float(fixed_extent_xy), float(fixed_extent_t)))


def dof_name(value: str | Sequence[str] | None) -> str:
    """The display name of a ``crop.dof`` value (a preset or a list, possibly as logged text)."""
    if value is None:
        return DEFAULT_DOF
    if isinstance(value, str) and value.startswith("["):  # a list logged as an MLflow param
        import ast

        value = ast.literal_eval(value)
    return parse_dof(value).name


def parameterisation_name(dof=None, generator_input=None, coupling=None, uncontrolled=None, budget=None,
                          budget_schedule=None, optimizer=None, grad_fraction=None) -> str:
    """A crop parameterisation in words: ``"spatial"``, ``"spatiotemporal, input none"``,
    ``"temporal, coupling relative"``, ``"spatial, uncontrolled random"``, ``"spatiotemporal, budget
    0.6"``, ``"spatiotemporal, budget 0.6 linear, optimizer sgd"``, ``"spatiotemporal, grad fraction
    0.25"`` (a learned crop's ``grad_fraction``); defaults (``noise``, ``joint``, ``fixed``, no budget,
    ``constant``, ``adam``, 1) and missing values are left out. Values may be config values or their
    MLflow param text."""
    def given(value) -> bool:
        return value is not None and value == value and str(value) not in ("", "None", "nan")

    parts = [dof_name(dof if given(dof) else None)]
    if given(generator_input) and generator_input != "noise":
        parts.append(f"input {generator_input}")
    if given(coupling) and coupling != "joint":
        parts.append(f"coupling {coupling}")
    if given(uncontrolled) and uncontrolled != "fixed":
        parts.append(f"uncontrolled {uncontrolled}")
    if given(budget):
        parts.append(f"budget {budget}" + (f" {budget_schedule}" if given(budget_schedule)
                                            and budget_schedule != "constant" else ""))
    if given(optimizer) and optimizer != "adam":
        parts.append(f"optimizer {optimizer}")
    if given(grad_fraction) and float(grad_fraction) != 1:
        parts.append(f"grad fraction {float(grad_fraction):g}")
    return ", ".join(parts)


def parameterisation_tag(config_flat) -> str:
    """The ``paramcrop.crop_parameterisation`` tag of a flattened (resolved) config: the
    :func:`parameterisation_name` of its ``crop.*`` keys and, for a crop with an adversary (a
    ``crop.strength``), of ``optim.generator_optimizer``; empty for a crop without ``crop.dof``."""
    if "crop.dof" not in config_flat:
        return ""
    optimizer = config_flat.get("optim.generator_optimizer") if "crop.strength" in config_flat else None
    return parameterisation_name(config_flat["crop.dof"], config_flat.get("crop.generator_input"),
                                 config_flat.get("crop.coupling"), config_flat.get("crop.uncontrolled"),
                                 config_flat.get("crop.budget"), config_flat.get("crop.budget_schedule"), optimizer,
                                 config_flat.get("crop.grad_fraction"))
