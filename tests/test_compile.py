"""The torch.compile'd paths (config ``compile``) against the eager ones, in value and gradient: the
colour augmentation with the flip (``ClipAugment.fuse``) and the crop (``CropMethod.fuse``, against
``grid_sample``); their fallback; the trainer's switch."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_DRAWS, TINY_SOURCE, border_cubes
from paramcrop.augment import ClipAugment
from paramcrop.config import TrainConfig
from paramcrop.crops.base import create_crop
from paramcrop.geometry import crop_video_reference
from paramcrop.plan import COMPILE_ENV
from paramcrop.train import Trainer

pytestmark = pytest.mark.usefixtures("tiny_cache")


def mixed_params(aug: ClipAugment, batch: int):
    torch.manual_seed(5)
    p = aug.sample(batch, 12, torch.device("cpu"))
    p.brightness[0], p.contrast[0], p.saturation[0], p.hue[0] = 1, 1, 1, 0  # clip 0: no jitter
    p.hue[1] = 0  # clip 1: jitter without hue
    p.grayscale[:2] = torch.tensor([False, True])
    p.flip[:3] = torch.tensor([False, True, True])
    return p


def test_fused_color_and_flip_equal_the_eager_path_in_value_and_gradient():
    eager, fused = ClipAugment(), ClipAugment()
    fused.fuse()
    x = torch.rand(6, 3, 4, 12, 12)
    x[2] = x[2, :1]  # a gray clip: chroma 0 everywhere (hue's gradient is 0 there)
    p = mixed_params(eager, 6)
    assert 0 < int(p.flip.sum()) < 6 and bool((p.blur_sigma > 0).any())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = eager.apply(xa, p), fused.apply(xb, p)
    assert fused._fused.active  # it compiled (no fallback)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(b[0], x[0], rtol=0, atol=1e-6)  # an unjittered, unflipped clip passes through
    upstream = torch.randn_like(a)
    (ga,) = torch.autograd.grad((a * upstream).sum(), xa)
    (gb,) = torch.autograd.grad((b * upstream).sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-4)
    assert ga.abs().max() > 0.1  # the comparison is not of zeros


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("clip", [(9, 13, 11), (1, 13, 11)])
def test_fused_crop_equals_grid_sample_in_value_and_cube_gradient(dtype, clip):
    """Both views, uint8 or float clips, cubes on and across the border, a one-frame clip."""
    torch.manual_seed(1)
    crop = create_crop("random", (4, 7, 6))
    crop.fuse()
    video = torch.randint(0, 256, (4, 2, *clip), dtype=torch.uint8)
    video = video if dtype == torch.uint8 else video.float() / 255
    g = torch.Generator().manual_seed(3)
    cubes1, cubes2 = border_cubes(4, g).requires_grad_(), border_cubes(4, g).flip(0).requires_grad_()
    crop.cubes = lambda clips, step: (cubes1, cubes2)
    views = crop(video)
    assert crop._fused.active
    for view, cubes in ((views.x1, cubes1), (views.x2, cubes2)):
        assert view.dtype == torch.float32
        ref = crop_video_reference(video.float(), cubes, (4, 7, 6))
        torch.testing.assert_close(view, ref, rtol=0, atol=1e-3 if dtype == torch.uint8 else 1e-5)
        upstream = torch.randn_like(ref)
        (g_ours,) = torch.autograd.grad((view * upstream).sum(), cubes, retain_graph=True)
        (g_ref,) = torch.autograd.grad((ref * upstream).sum(), cubes)
        assert (g_ours - g_ref).abs().max() / g_ref.abs().max() < 1e-4
        assert g_ref.abs().max() > 0  # the comparison is not of zeros


def broken_compile(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)


def test_a_failing_compile_warns_and_falls_back_to_eager(monkeypatch):
    broken_compile(monkeypatch)
    eager, fused = ClipAugment(), ClipAugment()
    fused.fuse()
    x = torch.rand(4, 3, 2, 12, 12)
    p = mixed_params(eager, 4)
    with pytest.warns(RuntimeWarning, match="torch.compile of the colour augmentation failed .*running it eagerly"):
        out = fused.apply(x, p)
    torch.testing.assert_close(out, eager.apply(x, p), rtol=0, atol=1e-5)
    assert not fused._fused.active  # later batches go straight to eager
    crop = create_crop("random", (2, 6, 6))
    crop.fuse()
    clips = torch.randint(0, 256, (4, 3, 4, 12, 12), dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="torch.compile of the crop failed"):
        views = crop(clips)
    assert not crop._fused.active
    torch.testing.assert_close(views.x1, crop_video_reference(clips.float(), views.cubes1, (2, 6, 6)),
                               rtol=0, atol=1e-3)


def test_trainer_compiles_unless_the_config_or_the_environment_says_no(tmp_path, monkeypatch):
    base = {"data.source": TINY_SOURCE, "data.frames": 8, "data.stride": 1, "data.size": 32, "view.frames": 4,
            "view.size": 24, "batch_size": 4, "crop.method": "paramcrop", "device": "cpu", "steps": 1, "eval.draw_per_class": TINY_DRAWS}
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    compiled = Trainer(TrainConfig().with_overrides(base), tmp_path / "a", progress=False)
    eager = Trainer(TrainConfig().with_overrides({**base, "compile": False}), tmp_path / "b", progress=False)
    assert compiled.augment._fused is not None and compiled.crop._fused is not None
    assert eager.augment._fused is None and eager.crop._fused is None
    eager.framework.load_state_dict(compiled.framework.state_dict())
    eager.crop.load_state_dict(compiled.crop.state_dict())
    clips = torch.randint(0, 256, (4, 3, 8, 32, 32), dtype=torch.uint8)
    before = torch.cat([p.detach().flatten() for p in compiled.crop.parameters()])
    losses, generators = [], []
    for trainer in (compiled, eager):
        torch.manual_seed(0)  # the same cubes and augmentation draws
        loss, _, _ = trainer.train_step(clips)
        losses.append(float(loss))
        generators.append(torch.cat([p.detach().flatten() for p in trainer.crop.parameters()]))
    assert compiled.augment._fused.active and compiled.crop._fused.active  # still compiled after a step
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    assert (generators[0] - before).abs().max() > 1e-6  # the adversary stepped ...
    torch.testing.assert_close(generators[0], generators[1], rtol=1e-4, atol=1e-6)  # ... alike
    monkeypatch.setenv(COMPILE_ENV, "0")
    forced = Trainer(TrainConfig().with_overrides(base), tmp_path / "c", progress=False)
    assert forced.augment._fused is None and forced.cfg.compile is False  # the value used is recorded
