"""Shared test helpers and fixtures."""
import os
from pathlib import Path

# before torch loads OpenMP: the tests' processes share the cores, so idle threads sleep at once
# (what `study run --workers N` gives its workers; cli.py alone spins briefly first)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch.compile costs seconds for each new shape: the tests train eagerly (their subprocesses too),
# except tests/test_compile.py, which compares the compiled path with the eager one
os.environ.setdefault("PARAMCROP_COMPILE", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

TEST_SYNTHETIC_CACHE = Path(__file__).parent.parent / ".cache" / "test-synthetic"
"""Where the tests' tiny synthetic benchmarks are written once and reused (gitignored)."""
TINY_SOURCE = "synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2"
"""A tiny synthetic benchmark (4 classes, 6 videos each, 24 frames at 32 px) for training tests."""


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A fresh synthetic-data cache for one test module (``pytestmark = pytest.mark.usefixtures("tiny_cache")``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PARAMCROP_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store (``./mlflow.db``) and the shared
    synthetic-data cache: what a user's ``paramcrop`` commands see in an empty folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARAMCROP_CACHE", str(TEST_SYNTHETIC_CACHE))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def assert_cubes_inside(cubes: torch.Tensor, tol: float = 1e-6) -> None:
    """Every cube ``(..., 6)`` lies inside the clip [-1, 1]^3 with positive extents."""
    center, half = cubes[..., :3], cubes[..., 3:]
    assert torch.isfinite(cubes).all()
    assert (half > 0).all()
    assert (center.abs() + half <= 1 + tol).all(), (center.abs() + half).max()
