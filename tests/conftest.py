"""Shared test helpers and fixtures."""
import os
import time
from pathlib import Path

# before torch loads OpenMP: the tests' processes share the cores, so idle threads sleep at once
# (what `study run --workers N` gives its workers; cli.py alone spins briefly first)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch.compile costs seconds for each new shape: the tests train eagerly (their subprocesses too),
# except tests/test_compile.py, which compares the compiled path with the eager one
os.environ.setdefault("PARAMCROP_COMPILE", "0")
# `study run` writes the study's page when it finishes (seconds of plotting): the tests that want it
# say `--report` (tests/test_ui.py); the others skip it
os.environ.setdefault("PARAMCROP_STUDY_REPORT", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from paramcrop.config import TrainConfig  # noqa: E402

TEST_SYNTHETIC_CACHE = Path(__file__).parent.parent / ".cache" / "test-synthetic"
"""Where the tests' tiny synthetic benchmarks are written once and reused (gitignored)."""
TINY_SOURCE = "synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2"
"""A tiny synthetic benchmark (4 classes, 6 videos each, 24 frames at 32 px) for training tests."""
TINY_DRAWS = 3
"""``eval.draw_per_class`` of the training tests: 3 fresh evaluation videos per class and split."""


@pytest.fixture(autouse=True)
def fresh_decoded_splits(monkeypatch):
    """Each test starts with no decoded splits kept from earlier tests (``datasets.KEPT_SPLITS``): a
    test that counts decodes must not depend on which tests ran before it in the process."""
    from collections import OrderedDict

    from paramcrop.data import datasets

    monkeypatch.setattr(datasets, "_KEPT", OrderedDict())


SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    """Training tests evaluate on :data:`TINY_DRAWS` videos per class; name the default-sized draws
    (320 per class: minutes of CI) that this session made in the shared test cache, if any."""
    made = sorted(p.name for p in TEST_SYNTHETIC_CACHE.glob(f"*-draws{TrainConfig().eval.draw_per_class}")
                  if p.stat().st_mtime >= SESSION_START)
    if made:
        terminalreporter.write_line(f"a test drew default-sized evaluation draws {made}: give it "
                                    f"eval.draw_per_class=TINY_DRAWS", red=True)


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


def random_valid_cubes(n, generator=None, low=0.15):
    """``(n, 6)`` cubes inside the clip, half-extents at least ``low``."""
    half = torch.rand(n, 3, generator=generator) * (1 - low) + low
    center = (torch.rand(n, 3, generator=generator) * 2 - 1) * (1 - half)
    return torch.cat([center, half], -1)


def border_cubes(n, generator, dtype=torch.float32):
    """Random cubes, the first ones touching or crossing the clip's border (clamped coordinates)."""
    cubes = random_valid_cubes(n, generator).to(dtype)
    cubes[0] = torch.tensor([0.0, 0, 0, 1, 1, 1], dtype=dtype)  # the whole clip: edges on the border
    cubes[1] = torch.tensor([0.3, -0.4, 0.2, 0.9, 0.8, 1.1], dtype=dtype)  # crosses it on every axis
    cubes[2, :3] = 1 - cubes[2, 3:]  # touches the far border on every axis
    return cubes
