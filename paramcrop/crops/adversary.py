"""The adversary's update, owned by the crop: one call after ``loss.backward()``.

A learned crop's generator maximises the loss the backbone minimises: its cubes pass a
gradient-reversal layer of strength lambda (:func:`~paramcrop.crops.paramcrop.grad_reverse`), so
one backward pass gives the generator gradients that are already negated and scaled by lambda.
:class:`Adversary` owns the generator's optimiser (``optim.generator_optimizer``: ``adam``, the
default, or ``sgd``, SGD with momentum 0.9) and applies the rules every training loop needs:

- Adam divides out a gradient's scale, so the reversal layer's lambda alone would leave the
  generator's steps unchanged (lambda 0.1 and 3 trained it identically): with Adam lambda also
  scales the learning rate, ``lr * lambda(step)``, so the adversary's step size is ~ lambda. SGD
  keeps the gradient's scale, lambda included, so its rate is ``lr`` (times the schedule) and its
  step is ~ lambda too (and ~ the gradient's size, which Adam's is not). Adam's first step is
  ``-lr * g / (|g| + eps)`` per parameter, SGD's ``-lr * g`` (its momentum buffer starts at ``g``):
  the same sign everywhere, different magnitudes;
- at lambda 0 nothing is stepped (the reversal layer detached the cubes: no gradient, no decay);
- under torchrun the generator's gradients are averaged across ranks first
  (:func:`paramcrop.distributed.average_gradients`; the generator is not inside DDP);
- afterwards the gradients are cleared, so the caller needs no ``zero_grad`` for the generator;
- :meth:`Adversary.step` returns the step's diagnostics as 0-d tensors (no device sync):
  ``train/generator_grad_norm``, the L2 norm of all the generator's gradients the optimiser read
  (after the averaging across ranks; 0 where there is none, as at lambda 0), and
  ``train/generator_update_norm``, the L2 norm of the change of all its parameters;
- the rate follows a schedule (``optim.generator_schedule``), a factor on top of lr x lambda:
  ``constant`` (1), ``follow`` (the backbone's own
  warm-up + cosine factor at that step, passed in by the trainer) or ``warmup_cosine`` (its own:
  linear warm-up over ``optim.generator_warmup_steps``, then a cosine to ``optim.min_lr_ratio`` at
  the last step; :func:`warmup_cosine`, the backbone's formula with the generator's warm-up).

For a crop that learns nothing, every method is a no-op.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from paramcrop import checks, sinks
from paramcrop.distributed import average_gradients
from paramcrop.schedules import warmup_cosine

SCHEDULES = ("constant", "follow", "warmup_cosine")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9


class LearnedCrop(Protocol):
    """What the adversary reads of a crop (:class:`~paramcrop.crops.base.CropMethod` provides both)."""

    def generator_parameters(self) -> list[nn.Parameter]: ...

    def strength_at(self, step: int) -> float: ...


class Adversary:
    """The generator's optimiser and update rule for ``crop`` (``lr``: the rate at lambda = 1 and
    schedule factor 1); ``optimizer``: ``adam`` or ``sgd``; ``schedule``, ``warmup_steps``,
    ``total_steps``, ``min_lr_ratio``: the module doc."""

    def __init__(self, crop: LearnedCrop, lr: float, optimizer: str = "adam", schedule: str = "constant",
                 warmup_steps: int = 0, total_steps: int = 1, min_lr_ratio: float = 0.0) -> None:
        self.lr = checks.positive("the generator's lr", lr)
        self.schedule = checks.one_of("generator schedule", schedule, SCHEDULES)
        self.optimizer_name = checks.one_of("optimizer", optimizer, OPTIMIZERS)
        self.crop, self.warmup_steps, self.total_steps = crop, int(warmup_steps), int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.params = crop.generator_parameters()
        self.optimizer = None
        if self.params:
            self.optimizer = (torch.optim.Adam(self.params, lr=self.lr) if optimizer == "adam"
                              else torch.optim.SGD(self.params, lr=self.lr, momentum=SGD_MOMENTUM))

    def lr_at(self, step: int, backbone_factor: float = 1.0) -> float:
        """The generator's rate at ``step``: ``lr * lambda(step) * schedule factor`` (SGD: ``lr * schedule
        factor``, lambda being in its gradient); ``backbone_factor`` is the backbone's warm-up + cosine
        factor at ``step`` (read by ``follow``)."""
        factor = {"constant": 1.0, "follow": backbone_factor}.get(self.schedule)
        if factor is None:
            factor = warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)
        return self.lr * (self.crop.strength_at(step) if self.optimizer_name == "adam" else 1.0) * factor

    def step(self, step: int, backbone_factor: float = 1.0) -> dict[str, torch.Tensor]:
        """Update the generator from the gradients of the last backward pass, then clear them; returns
        the diagnostics of the module doc (empty for a crop that learns nothing)."""
        if self.optimizer is None:
            return {}
        average_gradients(self.params)
        grads = [p.grad.detach().flatten() for p in self.params if p.grad is not None]
        diagnostics = {sinks.GENERATOR_GRAD_NORM: torch.linalg.vector_norm(torch.cat(grads)) if grads
                       else self.params[0].new_zeros(())}
        before = [p.detach().clone() for p in self.params]
        lr = self.lr_at(step, backbone_factor)
        if lr > 0 and self.crop.strength_at(step) > 0:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        diagnostics[sinks.GENERATOR_UPDATE_NORM] = torch.linalg.vector_norm(
            torch.cat([(p.detach() - b).flatten() for p, b in zip(self.params, before)]))
        return diagnostics
