"""Training batches and backbone input: the endless reproducible batch sampler and clip normalisation.

Shared by pretraining (:mod:`paramcrop.train`) and transfer fine-tuning (:mod:`paramcrop.transfer`).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from paramcrop.keys import ConfigError
from paramcrop.distributed import DistInfo, shard

# the Kinetics statistics that torchvision's video models use
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)


def to_input(x: Tensor) -> Tensor:
    """Float clips on the 0-1 scale ``(B, 3, T, H, W)`` -> normalised backbone input."""
    mean = x.new_tensor(MEAN).view(1, 3, 1, 1, 1)
    std = x.new_tensor(STD).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def normalize_clips(x: Tensor) -> Tensor:
    """uint8/float clips ``(B, 3, T, H, W)`` on the 0-255 scale -> normalised backbone input (used for evaluation)."""
    return to_input(x.float() / 255.0)


class EpochBatches(Sampler[list[int]]):
    """Endless shuffled batches, reproducible from ``(seed, step)``: epoch ``e`` uses the
    permutation seeded by ``(seed, e)``, so a resumed run sees exactly the batches it would
    have seen (no decoding of skipped batches). Under torchrun, ``batch_size`` is the global
    batch and each rank gets its contiguous slice."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0,
                 dist_info: DistInfo = DistInfo()) -> None:
        if n < batch_size:
            raise ConfigError(
                f"the training set has {n} readable videos, fewer than the global batch of {batch_size}: lower "
                f"batch_size"
            )
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step
        self.per_epoch = n // batch_size
        self.dist_info = dist_info

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, offset = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for b in range(offset, self.per_epoch):
                batch = [epoch * self.n + int(i) for i in perm[b * self.batch_size:(b + 1) * self.batch_size]]
                yield shard(batch, self.dist_info)  # this rank's slice of the global batch
                step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for its own len()
        return 2**31
