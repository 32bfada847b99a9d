"""Clip-consistent augmentation against torchvision's per-image functional ops."""
import pytest
import torch
import torchvision.transforms.functional as TF

from paramcrop.augment import AugmentParams, ClipAugment, adjust_hue, gaussian_blur


def static_clip(b=4, t=5, size=12, seed=0):
    """Clips whose frames are all the same image: per-clip ops must equal per-image ops."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, 1, size, size, generator=g)
    return img.expand(b, 3, t, size, size).contiguous(), img[:, :, 0]


def params(b, **kw):
    base = dict(brightness=torch.ones(b), contrast=torch.ones(b), saturation=torch.ones(b), hue=torch.zeros(b),
                grayscale=torch.zeros(b, dtype=torch.bool), flip=torch.zeros(b, dtype=torch.bool),
                blur_sigma=torch.zeros(b))
    base.update(kw)
    return AugmentParams(**base)


def per_image(img, fn, values):
    return torch.stack([fn(img[i], float(values[i])) for i in range(img.shape[0])])


@pytest.mark.parametrize("name,fn", [("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                                     ("saturation", TF.adjust_saturation)])
def test_jitter_matches_torchvision_on_static_clips(name, fn):
    clip, img = static_clip()
    values = torch.tensor([0.3, 0.8, 1.0, 1.7])
    out = ClipAugment().apply(clip, params(4, **{name: values}))
    want = per_image(img, fn, values)
    for t in range(clip.shape[2]):
        torch.testing.assert_close(out[:, :, t], want, atol=1e-5, rtol=0)


def test_hue_full_turn_is_identity_and_gray_is_invariant():
    clip, _ = static_clip()
    torch.testing.assert_close(adjust_hue(clip, torch.ones(4)), clip, atol=1e-5, rtol=0)
    gray = clip.mean(1, keepdim=True).expand_as(clip)
    torch.testing.assert_close(adjust_hue(gray, torch.full((4,), 0.3)), gray, atol=1e-5, rtol=0)


def test_hue_shift_matches_torchvision():
    clip, img = static_clip()
    values = torch.tensor([-0.2, -0.05, 0.1, 0.2])
    out = ClipAugment().apply(clip, params(4, hue=values))
    want = per_image(img, TF.adjust_hue, values)
    for t in range(clip.shape[2]):
        torch.testing.assert_close(out[:, :, t], want, atol=1e-5, rtol=0)


def test_grayscale_flip_and_blur():
    clip, img = static_clip(b=2, size=16)
    out = ClipAugment().apply(clip, params(2, grayscale=torch.tensor([True, False])))
    torch.testing.assert_close(out[0, 0], out[0, 1])
    torch.testing.assert_close(out[1], clip[1])
    out = ClipAugment().apply(clip, params(2, flip=torch.tensor([True, False])))
    torch.testing.assert_close(out[0], clip[0].flip(-1))
    torch.testing.assert_close(out[1], clip[1])
    sigma = torch.tensor([1.5, 0.0])
    out = gaussian_blur(clip, sigma)
    want = TF.gaussian_blur(img[0], kernel_size=11, sigma=1.5)  # radius ceil(3 * 1.5) = 5
    torch.testing.assert_close(out[0, :, 2, 5:-5, 5:-5], want[:, 5:-5, 5:-5], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], clip[1])


def test_blur_with_a_gradient_blurs_the_whole_batch_with_the_same_values_and_gradients():
    """With a gradient to x the blur runs every clip through its products (one-hot kernels for the
    unblurred ones); values and gradients are those of blurring each clip alone."""
    torch.manual_seed(2)
    x = torch.rand(3, 3, 2, 14, 12)
    sigma = torch.tensor([1.5, 0.0, 1.6])  # radius 5 for both blurred clips, alone or together
    xg = x.clone().requires_grad_()
    out = gaussian_blur(xg, sigma)
    torch.testing.assert_close(out, gaussian_blur(x, sigma), rtol=0, atol=1e-6)  # the subset path
    assert torch.equal(out[1], x[1])  # the unblurred clip, bit for bit
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * upstream).sum(), xg)
    for i in range(3):
        xi = x[i:i + 1].clone().requires_grad_()
        (want,) = torch.autograd.grad((gaussian_blur(xi, sigma[i:i + 1]) * upstream[i:i + 1]).sum(), xi) \
            if sigma[i] > 0 else (upstream[i:i + 1],)
        torch.testing.assert_close(grad[i:i + 1], want, rtol=0, atol=1e-6)


def test_one_parameter_set_per_clip():
    torch.manual_seed(0)
    clip, _ = static_clip(b=16, t=4)
    out, p = ClipAugment()(clip)
    for t in range(1, 4):  # identical frames stay identical: the same parameters for all frames
        torch.testing.assert_close(out[:, :, t], out[:, :, 0])
    assert 0 <= out.min() and out.max() <= 1
    assert p.flip.shape == (16,) and p.flip.dtype == torch.bool


def test_probabilities_respected():
    torch.manual_seed(1)
    p = ClipAugment(jitter_p=0.8, grayscale_p=0.2, flip_p=0.5, blur_p=0.0).sample(20000, 48, torch.device("cpu"))
    assert abs((p.brightness != 1).float().mean() - 0.8) < 0.02
    assert abs(p.grayscale.float().mean() - 0.2) < 0.02
    assert abs(p.flip.float().mean() - 0.5) < 0.02
    assert (p.blur_sigma == 0).all()
    assert p.brightness.min() >= 0.2 and p.brightness.max() <= 1.8


@pytest.mark.parametrize("kwargs,name", [({"flip_p": 1.5}, "flip_p"), ({"brightness": -1}, "brightness"),
                                         ({"hue": 0.8}, "hue"), ({"blur_sigma": (2, 1)}, "blur_sigma")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ClipAugment(**kwargs)


def _apply_full_batch(x, p):
    """ClipAugment.apply as every operation on the whole batch with per-clip factors (the form
    before the per-subset computation), as the reference for it."""
    from paramcrop.augment import _gray, _per_clip
    x = (x * _per_clip(p.brightness)).clamp(0, 1)
    mean = _gray(x).mean(dim=(2, 3, 4), keepdim=True)
    x = (mean + (x - mean) * _per_clip(p.contrast)).clamp(0, 1)
    gray = _gray(x)
    x = (gray + (x - gray) * _per_clip(p.saturation)).clamp(0, 1)
    if bool((p.hue != 0).any()):
        x = adjust_hue(x, p.hue).clamp(0, 1)
    x = torch.where(_per_clip(p.grayscale), _gray(x).expand_as(x), x)
    x = torch.where(_per_clip(p.flip), x.flip(-1), x)
    if bool((p.blur_sigma > 0).any()):
        x = gaussian_blur(x, p.blur_sigma)
    return x


@pytest.mark.parametrize("case", ["random", "no_hue", "all_on", "no_jitter", "mixed_hue"])
def test_subset_apply_equals_full_batch_in_value_and_gradient(case):
    torch.manual_seed(3)
    aug = ClipAugment()
    x = torch.rand(9, 3, 4, 10, 12, dtype=torch.float64, requires_grad=True)
    p = aug.sample(9, 10, x.device)
    if case == "no_hue":
        p.hue[:] = 0
    elif case == "all_on":
        p.grayscale[:], p.flip[:] = True, True
        p.brightness[:] = 1.3
    elif case == "no_jitter":
        p.brightness[:], p.contrast[:], p.saturation[:], p.hue[:] = 1, 1, 1, 0
        p.grayscale[:], p.flip[:] = False, False
    elif case == "mixed_hue":
        p.brightness[:] = 1.1
        p.hue[::2] = 0
    ours, ref = aug.apply(x, p), _apply_full_batch(x, p)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    upstream = torch.randn(ref.shape, dtype=ref.dtype)
    (g_ours,) = torch.autograd.grad((ours * upstream).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
