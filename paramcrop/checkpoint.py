"""Checkpoints and random state: seeding, each process's RNG state, atomic checkpoint files.

A run's folder holds ``checkpoint.pt`` (rank 0: the trainer's state and rank 0's RNG state), the
generation before it, ``checkpoint.previous.pt``, and, under torchrun, ``rng-rank<r>.pt`` for each
rank r > 0 (its RNG state, tagged with the step). :func:`recover` picks the newest generation
that loads; a file that does not is moved aside as ``*.corrupt``, never overwritten.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from paramcrop import files

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.previous.pt"  # the generation before checkpoint.pt
RANK_RNG_NAME = "rng-rank{rank}.pt"  # rank r > 0's RNG state at the checkpoint (rank 0's is in the checkpoint)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of DDP rank ``rank``'s random stream (cubes, ParamCrop noise, augmentation draws):
    ``seed`` itself on rank 0 (a single process draws what it always drew), on rank r > 0 a 63-bit
    number from ``numpy.random.SeedSequence([seed, r])``, so every rank draws its own views and
    the run stays reproducible from ``(seed, world_size)``."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**63, rank]).generate_state(1, np.uint64)[0] >> 1)


def rng_state() -> dict[str, Tensor | list[Tensor]]:
    """This process's torch, numpy, Python (and CUDA) RNG states, as tensors (``weights_only`` loads them)."""
    state = {"rng_torch": torch.get_rng_state(),
             "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "rng_python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["rng_torch"].cpu())
    np.random.set_state(("MT19937", state["rng_numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["rng_python"]), None))
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])


def save_atomic(state: dict, path: Path, keep: Path | None = None) -> Path:
    """``torch.save`` to a temp file, then rename (:func:`paramcrop.files.atomic`: a crash never leaves
    a torn file, a full disk raises :class:`~paramcrop.files.DiskFull`); ``keep``: where the file it
    replaces goes."""
    with files.atomic(path, keep=keep) as handle:
        torch.save(state, handle)  # to a file object: a full disk is an OSError, not a torn zip record
    return path


def save_checkpoint(state: dict, run_dir: Path, say: Callable[[str], None] = files.warn) -> Path:
    """``checkpoint.pt`` in ``run_dir``, the one it replaces kept as ``checkpoint.previous.pt``. Says
    first when the disk has less room than the checkpoint needs (the size of the last one, else its
    tensors'): the write would fail, the last good checkpoint is kept either way."""
    path = Path(run_dir) / CHECKPOINT_NAME
    need = path.stat().st_size if path.exists() else sum(
        t.numel() * t.element_size() for t in _tensors(state))
    free = files.free_bytes(path)
    if free is not None and free < need:
        say(f"{path.parent} has {files.human(free)} free, the checkpoint needs about {files.human(need)}: writing "
            f"it will likely fail (the last good checkpoint stays); free space there")
    return save_atomic(state, path, keep=path.parent / PREVIOUS_NAME)


def _tensors(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def recover(run_dir: Path, say: Callable[[str], None] = files.warn) -> int | None:
    """The step of the newest checkpoint generation in ``run_dir`` that loads, left as
    ``checkpoint.pt``; None when none does. A generation that does not load is moved aside
    (``<name>.corrupt``) with a warning naming both files and their steps."""
    path, previous = Path(run_dir) / CHECKPOINT_NAME, Path(run_dir) / PREVIOUS_NAME
    bad: list[str] = []
    for candidate in (path, previous):
        if not candidate.exists():
            continue
        try:
            step = int(load(candidate)["step"])
        except Exception as exc:  # noqa: BLE001 - whatever a torn or foreign file raises
            first = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).split(". ")[0]
            bad.append(_aside(candidate, first[:160]))
            continue
        if candidate != path:
            os.replace(candidate, path)  # the newest good generation is what a resume loads
        if bad:
            say(f"{bad[0]}; resuming from {candidate} (step {step}) instead")
        return step
    if bad:
        say("; ".join(bad) + ": no checkpoint loads")
    return None


def _aside(bad: Path, error: str) -> str:
    """Move a checkpoint that does not load to ``<name>.corrupt`` (numbered when taken); what happened."""
    step = saved_step(bad)
    target, n = bad.with_name(bad.name + ".corrupt"), 1
    while target.exists():
        target, n = bad.with_name(f"{bad.name}.{n}.corrupt"), n + 1
    os.replace(bad, target)
    return (f"checkpoint {bad} ({f'step {step}' if step is not None else 'step unreadable'}) does not load "
            f"({error}): kept as {target}")


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint's state; ``weights_only=True``: loading never executes code."""
    return torch.load(path, map_location=device, weights_only=True)


def saved_step(path: Path) -> int | None:
    """The step a checkpoint was written at (memory-mapped: the weights are not read); None for a torn
    or foreign file."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # noqa: BLE001 - whatever a bad file raises
        return None


def save_rank_rng(run_dir: Path, rank: int, step: int) -> None:
    """Rank ``rank`` > 0's RNG state at ``step``, in its ``rng-rank<r>.pt``."""
    save_atomic({"step": step, **rng_state()}, run_dir / RANK_RNG_NAME.format(rank=rank))


def restore_rank_rng(run_dir: Path, rank: int, step: int, seed: int) -> None:
    """Rank ``rank`` > 0's stream as saved at ``step``; a rank without one (the world grew, or it died
    before writing) starts a fresh stream seeded from ``(seed, step, rank)``."""
    own = run_dir / RANK_RNG_NAME.format(rank=rank)
    state = load(own) if own.exists() else None
    if state is not None and int(state["step"]) == step:
        set_rng_state(state)
    else:
        seed_everything(rank_seed(seed * 1_000_003 + step, rank))
