import pytest
import torch
from conftest import assert_cubes_inside

from paramcrop import ParamCrop, create_crop, view_iou
from paramcrop.crops.paramcrop import grad_reverse, squash


def test_squash_keeps_extreme_raw_outputs_valid_and_in_range():
    torch.manual_seed(0)
    raw = torch.randn(4096, 6) * 1e4
    raw[:8] = torch.tensor([1e4, -1e4, 1e4, -1e4, 1e4, -1e4])
    cubes = squash(raw, s_min=0.3, s_max=0.9, t_min=0.5)
    assert_cubes_inside(cubes)
    assert cubes[:, 3:5].min() >= 0.3 and cubes[:, 3:5].max() <= 0.9
    assert cubes[:, 5].min() >= 0.5 and cubes[:, 5].max() <= 1.0


def test_generator_with_huge_weights_still_gives_valid_cubes():
    torch.manual_seed(1)
    crop = ParamCrop((4, 8, 8), s_min=0.4, s_max=0.8, t_min=0.6)
    with torch.no_grad():
        for p in crop.generator_parameters():
            p.mul_(1e4)
    c1, c2 = crop.sample_cubes(2048, torch.device("cpu"), 0)
    for c in (c1, c2):
        assert_cubes_inside(c)
        assert c[:, 3:5].min() >= 0.4 and c[:, 3:5].max() <= 0.8 and c[:, 5].min() >= 0.6


def test_initial_views_are_large_and_close():
    torch.manual_seed(2)
    crop = ParamCrop((4, 8, 8))
    c1, c2 = crop.sample_cubes(512, torch.device("cpu"), 0)
    assert view_iou(c1, c2).mean() > 0.8
    assert not torch.equal(c1, c2)  # noise makes the views differ


def _generator_grads(crop, reverse):
    crop.zero_grad()
    torch.manual_seed(3)
    clips = torch.rand(4, 3, 8, 16, 16)
    torch.manual_seed(4)
    if reverse:
        views = crop(clips, step=0)
        x1, x2 = views.x1, views.x2
    else:  # the same forward without the reversal layer
        cubes = crop.generate(torch.randn(4, crop.noise_dim))
        from paramcrop import crop_video
        x1, x2 = crop_video(clips, cubes[:, 0], crop.size), crop_video(clips, cubes[:, 1], crop.size)
    loss = ((x1 - x2) ** 2).mean()
    loss.backward()
    return [p.grad.clone() for p in crop.generator_parameters()]


def test_gradient_reversal_scales_generator_gradient_by_minus_lambda():
    crop = ParamCrop((4, 8, 8), strength=0.5)
    plain = _generator_grads(crop, reverse=False)
    reversed_ = _generator_grads(crop, reverse=True)
    assert any(g.abs().max() > 0 for g in plain)
    for a, b in zip(reversed_, plain):
        torch.testing.assert_close(a, -0.5 * b, rtol=1e-5, atol=1e-9)


def test_lambda_zero_step_leaves_generator_unchanged():
    torch.manual_seed(5)
    crop = ParamCrop((4, 8, 8), strength=0.0)
    net = torch.nn.Conv3d(3, 4, 3)
    opt = torch.optim.AdamW([*net.parameters(), *crop.generator_parameters()], lr=0.1, weight_decay=0.1)
    before = [p.clone() for p in crop.generator_parameters()]
    views = crop(torch.rand(2, 3, 8, 16, 16))
    loss = (net(views.x1) - net(views.x2)).pow(2).mean()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in crop.generator_parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, crop.generator_parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_grad_reverse_identity_forward_and_negative_strength_rejected():
    x = torch.randn(3, requires_grad=True)
    y = grad_reverse(x, 2.0)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))
    with pytest.raises(ValueError, match="strength"):
        grad_reverse(x, -1.0)


def test_warmup_ramps_lambda_linearly():
    crop = ParamCrop((4, 8, 8), strength=2.0, warmup_steps=10)
    assert [crop.strength_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert ParamCrop((4, 8, 8), strength=2.0).strength_at(0) == 2.0


def test_fixed_seed_gives_identical_cubes():
    torch.manual_seed(6)
    crop = ParamCrop((4, 8, 8))
    torch.manual_seed(7)
    a = crop.sample_cubes(8, torch.device("cpu"), 0)
    torch.manual_seed(7)
    b = crop.sample_cubes(8, torch.device("cpu"), 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs,name", [
    ({"strength": -0.1}, "strength"), ({"warmup_steps": -1}, "warmup_steps"), ({"noise_dim": 0}, "noise_dim"),
    ({"hidden": 0}, "hidden"), ({"depth": 0}, "depth"), ({"s_min": 0.0}, "s_min"), ({"s_max": 1.5}, "s_max"),
    ({"t_min": 0}, "t_min"), ({"init_extent": 1.0}, "init_extent"), ({"init_std": -1}, "init_std"),
])
def test_constructor_validates_every_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        create_crop("paramcrop", (4, 8, 8), **kwargs)
