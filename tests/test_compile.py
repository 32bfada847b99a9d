"""The torch.compile'd colour augmentation (``ClipAugment.fuse_color``, config ``compile``) against
the eager path, in value and gradient; its fallback; the trainer's switch (issue 15)."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_SOURCE
from paramcrop.augment import ClipAugment
from paramcrop.config import TrainConfig
from paramcrop.train import COMPILE_ENV, Trainer

pytestmark = pytest.mark.usefixtures("tiny_cache")


def mixed_params(aug: ClipAugment, batch: int):
    torch.manual_seed(5)
    p = aug.sample(batch, 12, torch.device("cpu"))
    p.brightness[0], p.contrast[0], p.saturation[0], p.hue[0] = 1, 1, 1, 0  # clip 0: no jitter
    p.hue[1] = 0  # clip 1: jitter without hue
    p.grayscale[:2] = torch.tensor([False, True])
    return p


def test_fused_color_equals_the_eager_path_in_value_and_gradient():
    eager, fused = ClipAugment(flip_p=0.5), ClipAugment(flip_p=0.5)
    fused.fuse_color()
    x = torch.rand(6, 3, 4, 12, 12)
    x[2] = x[2, :1]  # a gray clip: chroma 0 everywhere (hue's gradient is 0 there)
    p = mixed_params(eager, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = eager.apply(xa, p), fused.apply(xb, p)
    assert fused._fused is not None  # it compiled (no fallback)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(b[0], x[0], rtol=0, atol=1e-6)  # an unjittered clip passes through
    upstream = torch.randn_like(a)
    (ga,) = torch.autograd.grad((a * upstream).sum(), xa)
    (gb,) = torch.autograd.grad((b * upstream).sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-4)
    assert ga.abs().max() > 0.1  # the comparison is not of zeros


def test_a_failing_compile_warns_and_falls_back_to_eager(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    eager, fused = ClipAugment(), ClipAugment()
    fused.fuse_color()
    x = torch.rand(4, 3, 2, 12, 12)
    p = mixed_params(eager, 4)
    with pytest.warns(RuntimeWarning, match="torch.compile of the colour augmentation failed .*running it eagerly"):
        out = fused.apply(x, p)
    torch.testing.assert_close(out, eager.apply(x, p), rtol=0, atol=1e-5)
    assert fused._fused is None  # later batches go straight to eager


def test_trainer_compiles_unless_the_config_or_the_environment_says_no(tmp_path, monkeypatch):
    base = {"data.source": TINY_SOURCE, "data.frames": 8, "data.stride": 1, "data.size": 32, "view.frames": 4,
            "view.size": 24, "batch_size": 4, "crop.method": "random", "device": "cpu", "steps": 1}
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    compiled = Trainer(TrainConfig().with_overrides(base), tmp_path / "a", progress=False)
    eager = Trainer(TrainConfig().with_overrides({**base, "compile": False}), tmp_path / "b", progress=False)
    assert compiled.augment._fused is not None and eager.augment._fused is None
    clips = torch.randint(0, 256, (4, 3, 8, 32, 32), dtype=torch.uint8)
    losses = []
    for trainer in (compiled, eager):
        torch.manual_seed(0)  # the same cubes and augmentation draws
        loss, _, _ = trainer.train_step(clips)
        losses.append(float(loss))
    assert compiled.augment._fused is not None  # still compiled after a training step
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    monkeypatch.setenv(COMPILE_ENV, "0")
    forced = Trainer(TrainConfig().with_overrides(base), tmp_path / "c", progress=False)
    assert forced.augment._fused is None and forced.cfg.compile is False  # the value used is recorded
