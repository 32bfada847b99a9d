"""BYOL: the loss against a naive loop, the EMA update by hand, stop-gradient targets, wiring."""
import pytest
import torch
from torch import nn

from paramcrop.backbones import create_backbone
from paramcrop.frameworks import BYOL, POS_SIM, byol_loss, create_framework, ema_update_


def naive_byol(p, z):
    """mean_i (2 - 2 p_i.z_i / (|p_i| |z_i|))."""
    terms = [2 - 2 * float(pi @ zi) / float(pi.norm() * zi.norm()) for pi, zi in zip(p.double(), z.double())]
    return sum(terms) / len(terms)


def small_byol(**params):
    return create_framework("byol", create_backbone("tiny3d", width=4), **{"hidden_dim": 32, "out_dim": 16, **params})


@pytest.mark.parametrize("n, d", [(1, 2), (5, 8), (16, 32)])
def test_byol_loss_matches_naive_loop(n, d):
    torch.manual_seed(n)
    p, z = torch.randn(n, d) * 5, torch.randn(n, d)
    loss = byol_loss(p, z)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(naive_byol(p, z), rel=1e-5, abs=1e-6)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-5)


def test_byol_loss_is_float32_under_bf16_autocast_and_validates():
    torch.manual_seed(0)
    p, z = torch.randn(4, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = byol_loss(p.bfloat16(), z)
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match="p and z"):
        byol_loss(p, z[:, :3])


def test_ema_update_by_hand():
    online, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        online.weight.fill_(3.0)
        online.bias.copy_(torch.tensor([1.0, -1.0]))
        online.running_mean.fill_(7.0)
    target.requires_grad_(False)
    ema_update_(target, online, tau=0.75)  # 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * 0 + 0.25 * (1, -1)
    assert target.weight.tolist() == [1.5, 1.5]
    assert target.bias.tolist() == [0.25, -0.25]
    assert target.running_mean.tolist() == [7.0, 7.0]  # buffers are copied
    ema_update_(target, online, tau=1.0)
    assert target.weight.tolist() == [1.5, 1.5]
    ema_update_(target, online, tau=0.0)
    assert target.weight.tolist() == [3.0, 3.0]


def test_update_targets_is_ema_with_tau():
    torch.manual_seed(0)
    fw = small_byol(tau=0.8)
    opt = torch.optim.SGD([p for p in fw.parameters() if p.requires_grad], lr=0.5)
    fw(*torch.randn(2, 4, 3, 4, 16, 16)).loss.backward()
    opt.step()
    old = [p.clone() for p in fw.target_projector.parameters()]
    fw.update_targets()
    for t, o, online in zip(fw.target_projector.parameters(), old, fw.projector.parameters()):
        torch.testing.assert_close(t, 0.8 * o + 0.2 * online)


def test_symmetrised_loss_wiring_predictor_and_stop_gradient_targets():
    torch.manual_seed(0)
    fw = small_byol()
    assert isinstance(fw, BYOL)
    predictor_ids = {id(p) for p in fw.predictor.parameters()}
    assert predictor_ids <= {id(p) for p in fw.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in fw.target_backbone.parameters())
    x1 = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    x2 = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    assert not fw.target(x1).requires_grad
    fw.eval()
    with torch.no_grad():
        out = fw(x1, x2)
        z1, z2, t1, t2 = fw.online(x1), fw.online(x2), fw.target(x1), fw.target(x2)
    expected = 0.5 * (byol_loss(fw.predictor(z1), t2) + byol_loss(fw.predictor(z2), t1))
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics[POS_SIM] == pytest.approx(torch.cosine_similarity(z1, z2).mean().item(), abs=1e-5)
    fw.train()
    fw(x1, x2).loss.backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0


def test_bad_arguments_name_the_argument():
    for key, bad in (("tau", 2), ("tau", "0.9"), ("hidden_dim", -4), ("out_dim", 0)):
        with pytest.raises(ValueError, match=key):
            small_byol(**{key: bad})
