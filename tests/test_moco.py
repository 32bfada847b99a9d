"""MoCo v2: InfoNCE against a naive loop, the FIFO queue, the momentum update, stop-gradient keys,
shuffling BN (in one process and across 2 gloo ranks) against batch statistics computed by hand."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from paramcrop.backbones import create_backbone
from paramcrop.frameworks import POS_SIM, MoCo, create_framework, moco_infonce_loss
from paramcrop.frameworks.moco import bn_groups
from test_distributed import free_port


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
    fw = small_moco(queue_size=10, shuffle_bn_groups=0)
    x1, x2 = torch.randn(2, 4, 3, 4, 16, 16)
    start = fw.queue.clone()
    fw.eval()
    with torch.no_grad():
        fw(x1, x2)
    assert torch.equal(fw.queue, start) and int(fw.queue_ptr) == 0
    fw.train()
    fw(x1, x2)
    assert int(fw.queue_ptr) == 8
    keys = F.normalize(fw.target(torch.cat([x1, x2])), dim=1)  # the forward's joint batch: k1 then k2
    torch.testing.assert_close(fw.queue[:8], keys)
    assert torch.equal(fw.queue[8:], start[8:])


def test_symmetrised_loss_wiring_and_stop_gradient_keys():
    torch.manual_seed(0)
    fw = small_moco(queue_size=8, temperature=0.3)
    x1 = torch.randn(4, 3, 4, 16, 16, requires_grad=True)  # 4 clips: two shuffle-BN groups in training
    x2 = torch.randn(4, 3, 4, 16, 16, requires_grad=True)
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
                     ("temperature", 0), ("out_dim", 0), ("shuffle_bn_groups", -1), ("shuffle_bn_groups", 1.5)):
        with pytest.raises(ValueError, match=key):
            small_moco(**{key: bad})


# --- shuffling BN -------------------------------------------------------------------------
class BNOnly(nn.Module):
    """A backbone that is one affine-free BatchNorm3d over the colour channels (feature_dim 3)."""

    feature_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(3, affine=False)

    def forward_features(self, x):
        return self.bn(x)

    def forward(self, x):
        return self.forward_features(x).mean(dim=(2, 3, 4))


class PassThrough(nn.Module):
    def forward(self, features, aug=None):
        return features


def bn_moco(**params):
    """MoCo whose key (and query) of a clip is its per-channel mean after batch-norm: no other layer."""
    torch.manual_seed(0)
    fw = MoCo(BNOnly(), hidden_dim=4, out_dim=3, queue_size=64, **params)
    fw.projector, fw.target_projector = PassThrough(), PassThrough()
    return fw.train()


def clips(n, seed=1):
    """Two views of ``n`` clips whose contents differ a lot from clip to clip (clip i is shifted by i)."""
    g = torch.Generator().manual_seed(seed)
    per_channel = torch.tensor([1.0, -0.5, 2.0]).view(1, 3, 1, 1, 1)
    shift = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1, 1) * per_channel
    return (torch.randn(n, 3, 2, 4, 4, generator=g) * (1 + shift.abs()) + shift,
            torch.randn(n, 3, 2, 4, 4, generator=g) + shift)


def normalised(x1, x2, members):
    """By hand: each member clip's per-channel mean after batch-norm with the statistics of the
    batch of both views of ``members`` (biased variance, eps 1e-5) -> {clip: (view 1, view 2)}."""
    batch = torch.cat([x1[members], x2[members]]).double()
    mean = batch.mean(dim=(0, 2, 3, 4))
    std = (batch.var(dim=(0, 2, 3, 4), unbiased=False) + 1e-5).sqrt()
    return {int(i): tuple((x[i].double().mean(dim=(1, 2, 3)) - mean) / std for x in (x1, x2)) for i in members}


def grouped_reference(x1, x2, order, size):
    """``(N, 3)`` per view: clip ``i`` normalised within its group, groups being consecutive runs of
    ``size`` clips of ``order``."""
    refs = {}
    for start in range(0, len(order), size):
        refs.update(normalised(x1, x2, order[start:start + size]))
    return tuple(torch.stack([refs[i][v] for i in range(len(order))]).float() for v in (0, 1))


def test_bn_groups_lowers_the_group_count_until_the_batch_allows():
    assert [bn_groups(8, 2), bn_groups(6, 4), bn_groups(12, 5), bn_groups(2, 2), bn_groups(5, 2), bn_groups(8, 0)] == \
           [2, 3, 4, 1, 1, 1]


def test_shuffle_bn_keys_use_statistics_of_a_random_other_group():
    b, g = 8, 2
    x1, x2 = clips(b)
    fw = bn_moco()
    torch.manual_seed(7)
    out = fw(x1, x2)
    torch.manual_seed(7)
    perm = torch.randperm(b).tolist()  # the forward's one random draw: the key branch's permutation
    # queries: batch-norm within their contiguous group of b / g clips
    q_ref = grouped_reference(x1, x2, list(range(b)), b // g)
    for maps, ref in zip(out.maps, q_ref):
        torch.testing.assert_close(maps.mean(dim=(2, 3, 4)), ref)
    # keys: batch-norm within groups of the permuted batch, back in clip order (aligned with the queries)
    k_ref = grouped_reference(x1, x2, perm, b // g)
    keys = fw.queue[:2 * b]
    torch.testing.assert_close(keys, F.normalize(torch.cat(k_ref), dim=1))
    # the test can fail: some clip's key group is not its query group, and there its key differs
    moved = [i for i in range(b) if perm.index(i) // (b // g) != i // (b // g)]
    assert moved
    plain = grouped_reference(x1, x2, list(range(b)), b // g)
    assert not torch.allclose(F.normalize(plain[0][moved], dim=1), keys[moved], atol=1e-3)
    # reproducible: the same seed gives the same keys and loss
    again = bn_moco()
    torch.manual_seed(7)
    assert torch.equal(again(x1, x2).loss, out.loss) and torch.equal(again.queue, fw.queue)


@pytest.mark.parametrize("params", [{"shuffle_bn_groups": 0}, {"shuffle_bn_groups": 1}])
def test_without_shuffle_bn_the_whole_batch_is_one_batch_norm_batch(params):
    b = 6
    x1, x2 = clips(b)
    fw = bn_moco(**params)
    out = fw(x1, x2)
    ref = grouped_reference(x1, x2, list(range(b)), b)
    torch.testing.assert_close(fw.queue[:2 * b], F.normalize(torch.cat(ref), dim=1))
    torch.testing.assert_close(out.maps[0].mean(dim=(2, 3, 4)), ref[0])
    plain = F.normalize(fw.target(torch.cat([x1, x2])), dim=1)
    torch.testing.assert_close(fw.queue[:2 * b], plain)


B_RANK, WORLD = 4, 2


def _shuffle_worker(rank, port, x1, x2, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fw = bn_moco(shuffle_bn_groups=2)
        local = slice(rank * B_RANK, (rank + 1) * B_RANK)
        torch.manual_seed(100 + rank)  # ranks draw differently: rank 0's permutation must win
        result = fw(x1[local], x2[local])
        out[rank] = (fw.queue[:2 * WORLD * B_RANK].tolist(), result.maps[0].mean(dim=(2, 3, 4)).tolist())
    finally:
        dist.destroy_process_group()


def test_shuffle_bn_across_two_ranks_is_a_shuffled_all_gather():
    n = WORLD * B_RANK
    x1, x2 = clips(n)
    out = mp.Manager().dict()
    mp.spawn(_shuffle_worker, args=(free_port(), x1, x2, out), nprocs=WORLD, join=True)
    torch.manual_seed(100)
    perm = torch.randperm(n).tolist()  # rank 0's draw, broadcast
    k1, k2 = grouped_reference(x1, x2, perm, B_RANK // 2)  # W x 2 key groups of 2 clips of the permuted global batch
    # the queue holds all ranks' keys: rank 0's (view 1, view 2), then rank 1's
    want = F.normalize(torch.cat([torch.cat([k1[r * B_RANK:(r + 1) * B_RANK], k2[r * B_RANK:(r + 1) * B_RANK]])
                                  for r in range(WORLD)]), dim=1)
    q1, _ = grouped_reference(x1, x2, list(range(n)), B_RANK // 2)  # queries: each rank's own 2 groups
    for rank in range(WORLD):
        queue, queries = out[rank]
        torch.testing.assert_close(torch.tensor(queue), want)
        torch.testing.assert_close(torch.tensor(queries), q1[rank * B_RANK:(rank + 1) * B_RANK])
    assert any(perm.index(i) // 2 != i // 2 for i in range(n))  # some key left its query's group
