"""Backbones: shapes, minimum inputs, validation; every backbone x framework pair trains."""
import pytest
import torch

from paramcrop.backbones import BACKBONES, InputConv3d, create_backbone, polyphase_input_grad
from paramcrop.frameworks import FRAMEWORKS, MomentumFramework, create_framework

FEATURE_DIMS = {"tiny3d": 256, "r3d_18": 512, "mc3_18": 512, "r2plus1d_18": 512, "s3d": 1024}
MIN_INPUT = {"tiny3d": (4, 16), "r3d_18": (8, 16), "mc3_18": (1, 16), "r2plus1d_18": (8, 16), "s3d": (8, 17)}


def test_registry_lists_every_backbone():
    assert BACKBONES.names() == sorted(FEATURE_DIMS)


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_shapes_and_check_input_at_the_minimum(name):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    frames, size = MIN_INPUT[name]
    assert backbone.feature_dim == FEATURE_DIMS[name]
    backbone.check_input(frames, size)  # the minimum itself is accepted
    x = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        fmap = backbone.forward_features(x)
        feats = backbone(x)
    assert fmap.shape == (2, FEATURE_DIMS[name], 1, 1, 1)  # the minimum reduces to one cell
    assert feats.shape == (2, FEATURE_DIMS[name])
    torch.testing.assert_close(feats, fmap.flatten(1))
    for too_small in ((frames - 1, size), (frames, size - 1)):
        with pytest.raises(ValueError, match=rf"{name}.*at least {frames} frames and {size}x{size}"):
            backbone.check_input(*too_small)


@pytest.mark.parametrize("frames, size", [(4, 17), (6, 16)])
def test_s3d_below_the_minimum_fails(frames, size):
    """Just below the minimum the forward pass fails (5 frames: see the backbones.py docstring)."""
    backbone = create_backbone("s3d").eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        backbone(torch.randn(1, 3, frames, size, size))


def _stem_gradient(frames: int) -> torch.Tensor:
    """s3d's stem temporal-conv weight gradient for a fixed input, after filling freed memory with
    NaN (what an op that reads memory it never wrote would then see)."""
    junk = torch.full((4_000_000,), float("nan"))
    del junk
    torch.manual_seed(0)
    backbone = create_backbone("s3d")
    backbone(torch.randn(4, 3, frames, 17, 17)).sum(1).pow(2).mean().backward()
    return backbone.features[0][1][0].weight.grad


def test_s3d_minimum_frames_give_a_reproducible_gradient():
    """At the minimum, 8 frames, the stem's backward is the same in every run and finite; at 6 and
    7 frames (oneDNN, CPU) it is not, hence the minimum (backbones.py docstring)."""
    first = _stem_gradient(8)
    assert torch.isfinite(first).all()
    assert all(torch.equal(first, _stem_gradient(8)) for _ in range(3))


def test_tiny3d_width_and_feature_map():
    backbone = create_backbone("tiny3d", width=8).eval()
    assert backbone.feature_dim == 64
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(1, 3, 8, 48, 48)).shape == (1, 64, 2, 3, 3)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="width"):
            create_backbone("tiny3d", width=bad)


def test_unknown_names_and_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid backbones: mc3_18, r2plus1d_18, r3d_18, s3d, tiny3d"):
        create_backbone("resnet50")
    with pytest.raises(ValueError, match="'width'.*valid keys: \\(none\\)"):
        create_backbone("r3d_18", width=2)
    backbone = create_backbone("tiny3d", width=4)
    with pytest.raises(ValueError, match="valid frameworks: byol, moco, simclr"):
        create_framework("swav", backbone)
    with pytest.raises(ValueError, match="'queue_size'.*valid keys: temperature, hidden_dim, out_dim"):
        create_framework("simclr", backbone, queue_size=16)


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS.names()))
@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_every_pair_trains_two_steps(name, framework):
    torch.manual_seed(0)
    fw = create_framework(framework, create_backbone(name))
    assert fw.backbone.feature_dim == FEATURE_DIMS[name]
    trainable = [p for p in fw.parameters() if p.requires_grad]
    targets = [fw.target_backbone, fw.target_projector] if isinstance(fw, MomentumFramework) else []
    target_ids = {id(p) for t in targets for p in t.parameters()}
    assert target_ids.isdisjoint(map(id, trainable))
    assert target_ids | {id(p) for p in trainable} == {id(p) for p in fw.parameters()}
    opt = torch.optim.SGD(trainable, lr=0.05)
    before = [p.detach().clone() for p in trainable]
    frames, size = MIN_INPUT[name]
    for _ in range(2):
        x1, x2 = torch.randn(2, 2, 3, frames, size, size)
        out = fw(x1, x2)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert all(isinstance(v, float) for v in out.metrics.values())
        opt.zero_grad()
        out.loss.backward()
        frozen = [_snapshot(t) for t in targets]
        opt.step()
        for t, snap in zip(targets, frozen):  # the optimiser never moves a target network ...
            assert all(torch.equal(p, s) for p, s in zip(t.parameters(), snap))
        fw.update_targets()
        for t, snap in zip(targets, frozen):  # ... update_targets does
            assert any(not torch.equal(p, s) for p, s in zip(t.parameters(), snap))
    unchanged = [i for i, (p, b) in enumerate(zip(trainable, before)) if torch.equal(p, b)]
    assert not unchanged, f"{len(unchanged)} of {len(trainable)} trainable tensors did not change"


@pytest.mark.parametrize("kernel, stride, padding, size", [
    ((3, 3, 3), (1, 2, 2), (1, 1, 1), (8, 48, 48)),    # tiny3d's stem
    ((3, 7, 7), (1, 2, 2), (1, 3, 3), (9, 23, 20)),    # r3d_18 / mc3_18, odd sizes
    ((1, 7, 7), (1, 2, 2), (0, 3, 3), (4, 17, 16)),    # r2plus1d_18 / s3d
    ((4, 5, 3), (3, 2, 4), (0, 2, 1), (11, 13, 14)),   # every axis strided, kernel not a multiple of it
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), (8, 8, 8)),      # no padding, one tap per phase
])
def test_polyphase_input_grad_equals_autograd_of_conv3d(kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 5, kernel, stride, padding, bias=False).double()
    x = torch.randn(2, 3, *size, dtype=torch.double, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    reference, = torch.autograd.grad(y, x, g)
    got = polyphase_input_grad(g, conv.weight, size, stride, padding)
    assert got.shape == reference.shape
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(BACKBONES.names()))
def test_input_conv_gives_the_gradients_of_a_plain_conv(name):
    """Every backbone has one InputConv3d; its gradients to the input and the weights equal those of
    a plain nn.Conv3d on the same weights, the fast backward is the one taken, and a step without an
    input gradient keeps nn.Conv3d's own."""
    torch.manual_seed(0)
    net = create_backbone(name)
    stems = [m for m in net.modules() if isinstance(m, InputConv3d)]
    assert len(stems) == 1
    plain = torch.nn.Conv3d(3, stems[0].out_channels, stems[0].kernel_size, stems[0].stride, stems[0].padding, bias=False)
    plain.load_state_dict(stems[0].state_dict())
    x = torch.randn(2, 3, net.min_frames, 2 * net.min_size + 3, 2 * net.min_size + 1, requires_grad=True)
    y = stems[0](x)
    assert type(y.grad_fn).__name__ == "_InputConv3dFnBackward"
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, stems[0].weight), g)
    reference = torch.autograd.grad(plain(x), (x, plain.weight), g)
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # without a gradient to the input: nn.Conv3d's own path
        assert stems[0](x).grad_fn is None
    assert type(stems[0](x.detach()).grad_fn).__name__ != "_InputConv3dFnBackward"
