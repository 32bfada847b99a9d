"""Shared test helpers."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cli.py does: set before torch loads OpenMP

import torch  # noqa: E402


def assert_cubes_inside(cubes: torch.Tensor, tol: float = 1e-6) -> None:
    """Every cube ``(..., 6)`` lies inside the clip [-1, 1]^3 with positive extents."""
    center, half = cubes[..., :3], cubes[..., 3:]
    assert torch.isfinite(cubes).all()
    assert (half > 0).all()
    assert (center.abs() + half <= 1 + tol).all(), (center.abs() + half).max()
