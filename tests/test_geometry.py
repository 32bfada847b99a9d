"""Cube geometry and crop_video against independent references (voxel counting, grid_sample)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paramcrop import center_distance, crop_video, cube_to_theta, view_iou
from paramcrop import geometry
from paramcrop.geometry import crop_video_reference, crop_video_separable, crop_video_taps, view_disparity
from conftest import border_cubes, random_valid_cubes

N = 48  # grid cells per axis for voxel counting


def grid_cube(rng, axes=3):
    """A cube whose faces lie on the N-cell grid, so voxel counting is exact."""
    lo = rng.integers(0, N - 1, size=axes)
    hi = np.array([rng.integers(l + 1, N + 1) for l in lo])
    lo, hi = lo * 2 / N - 1, hi * 2 / N - 1
    return np.concatenate([(lo + hi) / 2, (hi - lo) / 2])


def voxel_iou(a, b, axes):
    """IoU by counting voxel centers of an N^k grid inside each box (k = len(axes))."""
    idx = ["xyt".index(ax) for ax in axes]
    centers = (np.arange(N) * 2 + 1) / N - 1
    mesh = np.stack(np.meshgrid(*[centers] * len(idx), indexing="ij"), -1)

    def inside(c):
        return np.all(np.abs(mesh - c[idx]) <= c[[i + 3 for i in idx]], axis=-1)

    ia, ib = inside(a), inside(b)
    union = (ia | ib).sum()
    return (ia & ib).sum() / union


def special_pairs():
    full = np.array([0, 0, 0, 1, 1, 1.0])
    half_left = np.array([-0.5, 0, 0, 0.5, 1, 1.0])
    half_right = np.array([0.5, 0, 0, 0.5, 1, 1.0])
    small = np.array([0.25, -0.25, 0.5, 0.25, 0.25, 0.25])
    far = np.array([-0.75, 0.75, -0.75, 0.25, 0.25, 0.25])
    return [
        (full, full, 1.0),              # identical
        (full, small, 0.25**3),         # nested
        (half_left, half_right, 0.0),   # touching faces
        (small, far, 0.0),              # disjoint
    ]


@pytest.mark.parametrize("axes", ["xyt", "xy", "t"])
def test_view_iou_matches_voxel_counting(axes):
    rng = np.random.default_rng(0)
    pairs = [(grid_cube(rng), grid_cube(rng)) for _ in range(40)] + [(a, b) for a, b, _ in special_pairs()]
    a = torch.tensor(np.stack([p[0] for p in pairs]))
    b = torch.tensor(np.stack([p[1] for p in pairs]))
    got = view_iou(a, b, axes).numpy()
    want = np.array([voxel_iou(x, y, axes) for x, y in pairs])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (want > 0).sum() > 10 and (want == 0).sum() >= 2  # the sample covers both cases


def test_view_iou_special_cases_and_symmetry():
    for a, b, expected in special_pairs():
        a, b = torch.tensor(a), torch.tensor(b)
        assert view_iou(a, b).item() == pytest.approx(expected, abs=1e-12)
        assert view_iou(b, a).item() == pytest.approx(expected, abs=1e-12)


def test_view_iou_off_grid_close_to_fine_voxel_count():
    rng = np.random.default_rng(1)
    for _ in range(5):
        h = rng.uniform(0.2, 1.0, 6)[:3]
        c = rng.uniform(-1, 1, 3) * (1 - h)
        h2 = rng.uniform(0.2, 1.0, 3)
        c2 = rng.uniform(-1, 1, 3) * (1 - h2)
        a, b = np.concatenate([c, h]), np.concatenate([c2, h2])
        got = view_iou(torch.tensor(a), torch.tensor(b)).item()
        assert got == pytest.approx(voxel_iou(a, b, "xyt"), abs=0.05)


def test_center_distance_hand_computed():
    a = torch.tensor([0.0, 0.0, 0.0, 1, 1, 1])
    b = torch.tensor([0.3, 0.4, 1.2, 0.5, 0.5, 0.5])
    assert center_distance(a, b).item() == pytest.approx(math.sqrt(0.09 + 0.16 + 1.44))
    assert center_distance(a, b, "xy").item() == pytest.approx(0.5)
    assert center_distance(a, b, "t").item() == pytest.approx(1.2)
    batch = torch.stack([a, b])
    assert center_distance(batch, batch).tolist() == [0.0, 0.0]


def test_center_distance_gradient_finite_at_zero():
    a = torch.zeros(6, requires_grad=True)
    center_distance(a, torch.zeros(6)).backward()
    assert torch.isfinite(a.grad).all()


def test_view_disparity_names_and_values():
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1]])
    b = torch.tensor([[0.5, 0, 0, 0.5, 1, 1]])
    d = view_disparity(a, b)
    assert set(d) == {"view/iou", "view/iou_xy", "view/iou_t", "view/center_distance",
                      "view/center_distance_xy", "view/center_distance_t"}
    assert d["view/iou"].item() == pytest.approx(0.5)
    assert d["view/iou_t"].item() == pytest.approx(1.0)
    assert d["view/center_distance_xy"].item() == pytest.approx(0.5)


def test_bad_axes_and_shapes_raise():
    a = torch.zeros(6)
    with pytest.raises(ValueError, match="axes"):
        view_iou(a, a, "xz")
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        center_distance(torch.zeros(5), torch.zeros(5))


def test_cube_to_theta_full_cube_is_identity_grid():
    theta = cube_to_theta(torch.tensor([[0.0, 0, 0, 1, 1, 1]]))
    expected = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]])
    torch.testing.assert_close(theta, expected)
    theta = cube_to_theta(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]))
    torch.testing.assert_close(theta[0, :, 3], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(theta[0].diagonal(), torch.tensor([0.4, 0.5, 0.6]))


@pytest.mark.parametrize("implementation", [crop_video, crop_video_separable, crop_video_taps])
@pytest.mark.parametrize("size", [(5, 7, 6), (8, 16, 16), (12, 20, 9)])
def test_crop_video_equals_grid_sample_in_value_and_gradient(size, implementation):
    g = torch.Generator().manual_seed(sum(size))
    video = torch.rand(3, 2, 10, 17, 13, generator=g)
    cubes = random_valid_cubes(3, g).requires_grad_()
    ours = implementation(video, cubes, size)
    ref = crop_video_reference(video, cubes, size)
    assert ours.shape == (3, 2) + size
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    upstream = torch.randn(ref.shape, generator=g)
    (g_ours,) = torch.autograd.grad((ours * upstream).sum(), cubes)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), cubes)
    rel = (g_ours - g_ref).abs().max() / g_ref.abs().max()
    assert rel < 1e-4


def test_crop_video_without_cube_gradient_uses_the_separable_form_and_matches():
    g = torch.Generator().manual_seed(11)
    video = torch.randint(0, 256, (4, 3, 9, 15, 14), dtype=torch.uint8, generator=g)
    cubes = random_valid_cubes(4, g)
    out = crop_video(video, cubes, (4, 6, 7))
    torch.testing.assert_close(out, crop_video_separable(video, cubes, (4, 6, 7)), rtol=0, atol=0)
    torch.testing.assert_close(out, crop_video_reference(video, cubes, (4, 6, 7)), rtol=0, atol=1e-3)


def test_crop_video_reference_is_plain_grid_sample():
    """The reference itself: the cube crop's defining expression, spelled out independently here."""
    g = torch.Generator().manual_seed(3)
    video = torch.rand(2, 3, 6, 9, 11, generator=g)
    cubes = random_valid_cubes(2, g)
    hx, hy, ht = cubes[:, 3], cubes[:, 4], cubes[:, 5]
    theta = torch.zeros(2, 3, 4)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 2, 2] = hx, hy, ht
    theta[:, :, 3] = cubes[:, :3]
    grid = F.affine_grid(theta, [2, 3, 4, 5, 6], align_corners=False)
    want = F.grid_sample(video, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(crop_video(video, cubes, (4, 5, 6)), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("implementation", [crop_video, crop_video_separable, crop_video_taps, crop_video_reference])
def test_crop_video_identity_cube_returns_input(implementation):
    video = torch.rand(2, 3, 7, 9, 11)
    full = torch.tensor([[0.0, 0, 0, 1, 1, 1]] * 2)
    torch.testing.assert_close(implementation(video, full, (7, 9, 11)), video, rtol=0, atol=1e-6)


def test_crop_video_uint8_gives_float32_on_0_255_scale():
    g = torch.Generator().manual_seed(5)
    video = torch.randint(0, 256, (2, 3, 8, 12, 12), dtype=torch.uint8, generator=g)
    cubes = random_valid_cubes(2, g)
    out = crop_video(video, cubes, (4, 6, 6))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, crop_video_reference(video.float(), cubes, (4, 6, 6)), rtol=0, atol=1e-3)
    assert out.max() > 1.5  # not rescaled to [0, 1]


def test_crop_video_single_frame_and_float64():
    video = torch.rand(1, 1, 1, 5, 5, dtype=torch.float64)
    cubes = torch.tensor([[0.1, -0.2, 0.0, 0.5, 0.6, 1.0]], dtype=torch.float64, requires_grad=True)
    out = crop_video_separable(video, cubes, (3, 4, 4))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, crop_video_reference(video, cubes, (3, 4, 4)))


def test_crop_video_rejects_bad_input():
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        crop_video(torch.zeros(3, 4, 4, 4), torch.zeros(3, 6), (2, 2, 2))
    with pytest.raises(ValueError, match="B = 2"):
        crop_video(torch.zeros(2, 1, 4, 4, 4), torch.zeros(3, 6), (2, 2, 2))
    with pytest.raises(ValueError, match="size"):
        crop_video(torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 6), (2, 0, 2))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_elements", [None, 1])
@pytest.mark.parametrize("size", [(5, 7, 6), (12, 20, 9), (1, 3, 4)])
def test_analytic_cube_gradient_equals_grid_sample(dtype, chunk_elements, size, monkeypatch):
    """crop_video's custom backward (separable, gradient to the cubes only) against grid_sample's,
    with cubes on and across the border, one clip per chunk or the whole batch in one."""
    if chunk_elements is not None:
        monkeypatch.setattr(geometry, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(sum(size) + 7)
    if dtype == torch.uint8:
        video = torch.randint(0, 256, (5, 2, 9, 13, 11), dtype=torch.uint8, generator=g)
    else:
        video = torch.rand(5, 2, 9, 13, 11, generator=g, dtype=dtype)
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32
    cubes = border_cubes(5, g, cdtype).requires_grad_()
    ours = crop_video(video, cubes, size)
    assert ours.grad_fn is not None and "_SeparableCrop" in type(ours.grad_fn).__name__
    ref = crop_video_reference(video, cubes, size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-3 if dtype == torch.uint8 else 1e-5)
    upstream = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
    (g_ours,) = torch.autograd.grad((ours * upstream).sum(), cubes)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), cubes)
    assert g_ours.dtype == cubes.dtype
    rel = (g_ours - g_ref).abs().max() / g_ref.abs().max()
    assert rel < (1e-10 if dtype == torch.float64 else 1e-4)
    # the clamped axes of the whole-clip cube get no gradient to the center, like grid_sample's
    (g_sep,) = torch.autograd.grad((crop_video_separable(video, cubes, size) * upstream).sum(), cubes)
    torch.testing.assert_close(g_ours, g_sep, rtol=1e-4, atol=1e-4 * g_sep.abs().max().item())


def test_analytic_cube_gradient_gradcheck_float64():
    g = torch.Generator().manual_seed(21)
    video = torch.rand(3, 2, 7, 9, 8, generator=g, dtype=torch.float64)
    cubes = random_valid_cubes(3, g).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda c: crop_video(video, c, (4, 5, 6)), (cubes,), eps=1e-7, atol=1e-6)


def test_crop_video_with_video_gradient_and_float64_cubes():
    """A video that needs a gradient goes through grid_sample; float64 cubes on a float32 clip
    get a float64 gradient."""
    g = torch.Generator().manual_seed(8)
    video = torch.rand(2, 3, 6, 9, 11, generator=g).requires_grad_()
    cubes = random_valid_cubes(2, g).requires_grad_()
    (gv,) = torch.autograd.grad(crop_video(video, cubes, (4, 5, 6)).sum(), video)
    (gv_ref,) = torch.autograd.grad(crop_video_reference(video, cubes, (4, 5, 6)).sum(), video)
    torch.testing.assert_close(gv, gv_ref)
    cubes64 = cubes.detach().double().requires_grad_()
    out = crop_video(video.detach(), cubes64, (4, 5, 6))
    assert out.dtype == torch.float32
    (gc,) = torch.autograd.grad(out.sum(), cubes64)
    assert gc.dtype == torch.float64
    (gc_ref,) = torch.autograd.grad(crop_video_reference(video.detach(), cubes64, (4, 5, 6)).sum(), cubes64)
    torch.testing.assert_close(gc, gc_ref.to(torch.float64), rtol=1e-4, atol=1e-4)
