"""Multi-process training with ``torch.distributed`` (launched by ``torchrun``).

Nothing home-made: the process group comes from torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), the model is wrapped in
``DistributedDataParallel``, and contrastive negatives are gathered across ranks with
``torch.distributed.nn.functional.all_gather``, which keeps gradients: every rank computes the
loss on the global batch, so the loss on W ranks x batch B equals the single-process loss on
batch W x B, and DDP's gradient averaging then gives exactly the single-process gradient.
Only rank 0 talks to MLflow and Optuna.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    """This process's place in the process group (a single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (``nccl`` on CUDA, ``gloo`` on CPU); a no-op when
    the process was not started by torchrun (``WORLD_SIZE`` unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info()


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x (B, ...)`` from all ranks in rank order -> ``(W * B, ...)``, differentiable.

    The backward pass sums each rank's gradient of its slice (``all_gather``'s adjoint), so with
    the same loss computed on every rank DDP's averaging restores the single-process gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private module; still the public API
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), 0)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """Like :func:`gather_with_grad` without gradients (e.g. MoCo keys for the shared queue)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


@torch.no_grad()
def shuffled_map(fn: Callable[..., tuple[Tensor, ...]], *xs: Tensor) -> tuple[Tensor, ...]:
    """Apply ``fn`` to a shard of the randomly permuted global batch; outputs in this rank's order.

    ``xs``: tensors ``(B, ...)`` (this rank's ``B`` samples, the same ``B`` on every rank). They are
    gathered from all ranks (``(W * B, ...)``), permuted by ``torch.randperm(W * B)`` drawn from the
    global CPU generator and broadcast from rank 0 (so every rank uses rank 0's), and rank ``r``
    gets shuffled positions ``[r * B, (r + 1) * B)``; ``fn(*shard) -> (B, ...)`` tensors is applied,
    its outputs are gathered, unshuffled, and this rank's own ``B`` rows returned: row ``i`` of each
    output belongs to sample ``i`` of ``xs``. In one process this is ``fn`` on a permuted batch,
    un-permuted. Without gradients (MoCo's shuffling BN for keys; the reference code's
    ``_batch_shuffle_ddp`` and ``_batch_unshuffle_ddp``).
    """
    d = info()
    b = xs[0].shape[0]
    perm = torch.randperm(d.world_size * b).to(xs[0].device)  # the CPU generator: in the saved RNG state
    if d.enabled:
        dist.broadcast(perm, src=0)
    mine = perm[d.rank * b:(d.rank + 1) * b]
    outputs = fn(*(gather(x)[mine] for x in xs))
    unshuffle = torch.argsort(perm)[d.rank * b:(d.rank + 1) * b]
    return tuple(gather(out)[unshuffle] for out in outputs)


def average_gradients(params) -> None:
    """All-reduce and average the gradients of ``params`` over ranks (those without a gradient on
    every rank are skipped consistently: a learned crop has none while lambda = 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def shard(indices: list[int], dist_info: DistInfo) -> list[int]:
    """This rank's contiguous slice of a global batch of indices (rank order = gather order)."""
    per_rank = len(indices) // dist_info.world_size
    return indices[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank]
