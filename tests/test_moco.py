"""MoCo v2: InfoNCE against a naive loop, the FIFO queue, the momentum update, stop-gradient keys."""
import math

import pytest
import torch
import torch.nn.functional as F

from paramcrop.backbones import create_backbone
from paramcrop.frameworks import POS_SIM, MoCo, create_framework, moco_infonce_loss


def naive_infonce(q, k, queue, temperature):
    """Per query: -log(exp(q.k / t) / (exp(q.k / t) + sum_j exp(q.queue_j / t))), averaged."""
    total = 0.0
    for qi, ki in zip(q.double(), k.double()):
        qi, ki = qi / qi.norm(), ki / ki.norm()
        pos = math.exp(float(qi @ ki) / temperature)
        neg = sum(math.exp(float(qi @ kj) / temperature) for kj in queue.double())
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def small_moco(**params):
    return create_framework("moco", create_backbone("tiny3d", width=4), **{"hidden_dim": 32, "out_dim": 16, **params})


@pytest.mark.parametrize("n, k, d, temperature", [(1, 1, 4, 0.5), (4, 10, 8, 0.2), (6, 32, 16, 1.0)])
def test_infonce_matches_naive_loop(n, k, d, temperature):
    torch.manual_seed(k)
    q, key = torch.randn(n, d) * 2, torch.randn(n, d)
    queue = F.normalize(torch.randn(k, d), dim=1)
    loss = moco_infonce_loss(q, key, queue, temperature)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(naive_infonce(q, key, queue, temperature), rel=1e-5)


def test_infonce_is_float32_under_bf16_autocast_and_validates():
    torch.manual_seed(0)
    q, k, queue = torch.randn(4, 8), torch.randn(4, 8), F.normalize(torch.randn(16, 8), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = moco_infonce_loss(q, k, queue, 0.2)
    assert loss.dtype == torch.float32 and torch.equal(loss, moco_infonce_loss(q, k, queue, 0.2))
    with pytest.raises(ValueError, match="temperature"):
        moco_infonce_loss(q, k, queue, 0)
    with pytest.raises(ValueError, match="queue"):
        moco_infonce_loss(q, k, queue[:, :4], 0.2)


def test_queue_is_fifo_with_wrap_around_and_overflow():
    fw = small_moco(queue_size=5)
    assert fw.queue.shape == (5, 16)
    torch.testing.assert_close(fw.queue.norm(dim=1), torch.ones(5))  # random unit vectors to start
    keys = torch.arange(1, 17, dtype=torch.float32)[:, None].expand(16, 16)  # key i is all i's
    fw.enqueue(keys[:3])  # 1 2 3
    assert fw.queue[:3, 0].tolist() == [1, 2, 3] and int(fw.queue_ptr) == 3
    fw.enqueue(keys[3:7])  # 4 5 wrap to 6 7
    assert fw.queue[:, 0].tolist() == [6, 7, 3, 4, 5] and int(fw.queue_ptr) == 2
    fw.enqueue(keys[7:16])  # 9 keys > capacity: only the newest five, 12..16, are kept
    assert int(fw.queue_ptr) == (2 + 9) % 5
    oldest_first = fw.queue[:, 0].roll(-int(fw.queue_ptr)).tolist()
    assert oldest_first == [12, 13, 14, 15, 16]


def test_forward_enqueues_both_views_keys_in_training_only():
    torch.manual_seed(0)
    fw = small_moco(queue_size=8)
    x1, x2 = torch.randn(2, 3, 3, 4, 16, 16)
    start = fw.queue.clone()
    fw.eval()
    with torch.no_grad():
        fw(x1, x2)
    assert torch.equal(fw.queue, start) and int(fw.queue_ptr) == 0
    fw.train()
    fw(x1, x2)
    assert int(fw.queue_ptr) == 6
    keys = F.normalize(fw.target(torch.cat([x1, x2])), dim=1)  # the forward's joint batch: k1 then k2
    torch.testing.assert_close(fw.queue[:6], keys)
    assert torch.equal(fw.queue[6:], start[6:])


def test_symmetrised_loss_wiring_and_stop_gradient_keys():
    torch.manual_seed(0)
    fw = small_moco(queue_size=8, temperature=0.3)
    x1 = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    x2 = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    assert not fw.target(x1).requires_grad  # keys are stop-gradient
    fw.eval()
    with torch.no_grad():
        out = fw(x1, x2)
        q1, q2, k1, k2 = fw.online(x1), fw.online(x2), fw.target(x1), fw.target(x2)
    expected = 0.5 * (moco_infonce_loss(q1, k2, fw.queue, 0.3) + moco_infonce_loss(q2, k1, fw.queue, 0.3))
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics[POS_SIM] == pytest.approx(torch.cosine_similarity(q1, q2).mean().item(), abs=1e-5)
    fw.train()
    fw(x1, x2).loss.backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0  # through the query branch of each view


def test_momentum_update_matches_hand_computation():
    torch.manual_seed(0)
    fw = small_moco(momentum=0.9, queue_size=8)
    assert isinstance(fw, MoCo)
    trainable = [p for p in fw.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    fw(*torch.randn(2, 4, 3, 4, 16, 16)).loss.backward()
    opt.step()
    old = [p.clone() for p in fw.target_backbone.parameters()]
    fw.update_targets()
    for t, o, online in zip(fw.target_backbone.parameters(), old, fw.backbone.parameters()):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * online)
    for t, online in zip(fw.target_backbone.buffers(), fw.backbone.buffers()):
        assert torch.equal(t, online)


def test_bad_arguments_name_the_argument():
    for key, bad in (("momentum", 1.5), ("momentum", -0.1), ("queue_size", 0), ("queue_size", 8.0),
                     ("temperature", 0), ("out_dim", 0)):
        with pytest.raises(ValueError, match=key):
            small_moco(**{key: bad})
