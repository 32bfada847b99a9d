"""The adversary's update, owned by the crop: one call after ``loss.backward()``.

A learned crop's generator maximises the loss the backbone minimises: its cubes pass a
gradient-reversal layer of strength lambda (:func:`~paramcrop.crops.paramcrop.grad_reverse`), so
one backward pass gives the generator gradients that are already negated and scaled by lambda.
:class:`Adversary` owns the generator's Adam and applies the rules every training loop needs:

- Adam divides out a gradient's scale, so the reversal layer's lambda alone would leave the
  generator's steps unchanged (lambda 0.1 and 3 trained it identically): lambda also scales the
  learning rate, ``lr * lambda(step)``, so the adversary's step size is ~ lambda;
- at lambda 0 nothing is stepped (the reversal layer detached the cubes: no gradient, no decay);
- under torchrun the generator's gradients are averaged across ranks first
  (:func:`paramcrop.distributed.average_gradients`; the generator is not inside DDP);
- afterwards the gradients are cleared, so the caller needs no ``zero_grad`` for the generator.

For a crop that learns nothing, every method is a no-op.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from paramcrop.distributed import average_gradients

if TYPE_CHECKING:
    from paramcrop.crops.base import CropMethod


class Adversary:
    """The generator's optimiser and update rule for ``crop`` (``lr``: the rate at lambda = 1)."""

    def __init__(self, crop: "CropMethod", lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"the generator's lr must be > 0, got {lr}")
        self.crop, self.lr = crop, float(lr)
        self.params = crop.generator_parameters()
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr) if self.params else None

    def step(self, step: int) -> None:
        """Update the generator from the gradients of the last backward pass, then clear them."""
        if self.optimizer is None:
            return
        average_gradients(self.params)
        strength = self.crop.strength_at(step)
        if strength > 0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * strength
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
