"""SimCLR: NT-Xent against a naive per-anchor loop, float32 under autocast, the framework."""
import math

import pytest
import torch

from paramcrop.backbones import create_backbone
from paramcrop.frameworks import POS_SIM, SimCLR, create_framework, nt_xent_loss


def naive_nt_xent(z1, z2, temperature):
    """SimCLR's loss written out: for each of the 2N anchors, -log(exp(pos) / sum over the others)."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        positive = (i + n2 // 2) % n2
        num = math.exp(float(z[i] @ z[positive]) / temperature)
        den = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(n2) if j != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("n, d, temperature", [(1, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0)])
def test_nt_xent_matches_naive_loop(n, d, temperature):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, d) * 3, torch.randn(n, d)
    loss = nt_xent_loss(z1, z2, temperature)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(naive_nt_xent(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_symmetric():
    z = torch.eye(4)
    assert nt_xent_loss(z, z, 0.05).item() < 1e-6
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.2), nt_xent_loss(z2, z1, 0.2))


def test_nt_xent_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent_loss(z1, z2, 0.1)
        loss_bf16_inputs = nt_xent_loss(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32 and loss_bf16_inputs.dtype == torch.float32
    assert torch.equal(loss, nt_xent_loss(z1, z2, 0.1))


def test_nt_xent_validates_inputs():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(3, 3), 0.1)


def test_framework_wiring_and_gradient_to_both_views():
    torch.manual_seed(0)
    fw = create_framework("simclr", create_backbone("tiny3d", width=4), hidden_dim=32, out_dim=16, temperature=0.2)
    assert isinstance(fw, SimCLR)
    x1 = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    x2 = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    fw(x1, x2).loss.backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0  # a learned crop of either view learns
    fw.eval()  # batch-norm running statistics: one joint batch == two separate ones
    with torch.no_grad():
        out = fw(x1, x2)
        z1, z2 = fw.online(x1), fw.online(x2)
    torch.testing.assert_close(out.loss, nt_xent_loss(z1, z2, 0.2))
    assert out.metrics[POS_SIM] == pytest.approx(torch.cosine_similarity(z1, z2).mean().item(), abs=1e-5)


def test_views_of_different_sizes_and_bad_arguments():
    torch.manual_seed(0)
    fw = create_framework("simclr", create_backbone("tiny3d", width=4), hidden_dim=32, out_dim=16)
    out = fw(torch.randn(3, 3, 4, 16, 16), torch.randn(3, 3, 8, 32, 32))
    assert torch.isfinite(out.loss)
    for key, bad in (("temperature", -1.0), ("hidden_dim", 0), ("out_dim", 2.5)):
        with pytest.raises(ValueError, match=key):
            create_framework("simclr", create_backbone("tiny3d", width=4), **{key: bad})
    with pytest.raises(ValueError, match="feature_dim"):
        create_framework("simclr", torch.nn.Linear(3, 3))
