"""MoCo v2 (Chen et al., arXiv 2003.04297): momentum key encoder, queue of negatives, InfoNCE.

Symmetrised: the query of view 1 is contrasted with the key of view 2 and the query of view 2
with the key of view 1; the loss is the mean of the two. Keys come from the momentum (target)
backbone and projector under ``torch.no_grad`` and, after the loss, both views' keys enter the
FIFO queue (in training mode only).

How views reach a learned crop: each view is a query once and a key once. The key branch is
stop-gradient, as in MoCo, so the gradient to a view's crop flows only through its query (online)
branch; the crop generator thus maximises exactly the loss that the online network minimises.

Defaults and why: ``momentum = 0.99`` (MoCo uses 0.999 over hundreds of thousands of steps; runs
of this suite are a few thousand steps, where 0.99, MoCo v3's value, lets the keys keep up),
``temperature = 0.2`` (MoCo v2), ``queue_size = 4096`` (a few dozen batches of keys: fresh
enough for fast-changing short runs), ``hidden_dim = 512``, ``out_dim = 128`` (MoCo v2's head
output). The queue starts as random unit vectors, as in MoCo, so it works before ``queue_size``
keys have been enqueued. Under torchrun every rank enqueues all ranks' keys, so the queues stay
identical.

Shuffling BN (MoCo, section 3.3): with batch-norm, a query and its positive key computed in the
same batch share that batch's statistics, which the queue's negatives do not; the network can
match a pair through that signature instead of its content. So in training, with
``shuffle_bn_groups = G`` (default 2): each process's ``B`` clips are split into ``G`` contiguous
groups and the online (query) branch encodes each group as its own batch-norm batch; the key
branch encodes the same number of groups, but of a random permutation of the global batch
(all ranks' clips gathered, permuted by ``torch.randperm`` from rank 0's CPU generator, each
rank encoding its shard, keys gathered back and unshuffled: the reference code's shuffled
all-gather), so a key's batch-norm statistics come from clips drawn at random from all
``W x G`` groups, most of them not its query's group (on average ``1 / (W G)`` of its group mates
share its query's group; in MoCo, with 8 GPUs, ``1 / 8``). Both views of a clip stay together,
in one group (as :func:`~paramcrop.frameworks.base.encode_pair` encodes them). ``G`` is lowered
to the largest divisor of ``B`` that leaves groups of at least 2 clips ("when the batch
allows"); ``G = 1`` in one process, ``G = 0``, evaluation mode or networks without batch-norm
encode the batch as one (no shuffle). Under torchrun ``G = 1`` is the reference code exactly
(one group per GPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.distributed import gather, info, shuffled_map
from paramcrop.frameworks.base import (
    FRAMEWORKS, POS_SIM, REDUCTIONS, FrameworkOutput, MomentumFramework, encode_pair, feature_dim_of, float32_loss,
    group_size, mean_cosine,
)
from paramcrop.heads import MLP_HEAD, HeadSpec

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@float32_loss
def moco_infonce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """InfoNCE of queries against their keys (positives) and the queue (negatives).

    ``q, k (N, D)``: queries and keys (row ``i`` of each from the same clip), any norm and dtype
    (L2-normalised in float32 here); the caller detaches ``k``. ``queue (K, D)``: negatives with
    unit-norm rows. Returns the mean over the ``N`` queries of the cross-entropy of logits
    ``[q.k, q.queue^T] / temperature`` with the positive at index 0 (a float32 scalar);
    ``reduction="none"``: each query's ``(N,)``.
    """
    if q.ndim != 2 or q.shape != k.shape or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"q and k must be (N, D) and queue (K, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    checks.positive("temperature", temperature)
    checks.one_of("reduction", reduction, REDUCTIONS)
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    negatives = q @ queue.float().T  # (N, K)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device), reduction=reduction)


def bn_groups(batch: int, groups: int) -> int:
    """The largest ``g <= groups`` that splits ``batch`` clips into equal groups of at least 2 (1 if none)."""
    return max((g for g in range(1, groups + 1) if batch % g == 0 and batch // g >= 2), default=1)


def _cat(parts: list):
    """Concatenate a list of equally nested tuples of ``(n_i, ...)`` tensors along dim 0, leaf by leaf."""
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return tuple(_cat(list(leaves)) for leaves in zip(*parts))


def encode_groups(encoder, groups: int, x1: Tensor, x2: Tensor, aug1: Tensor | None = None,
                  aug2: Tensor | None = None):
    """:func:`~paramcrop.frameworks.base.encode_pair` on each of ``groups`` contiguous groups of the
    ``B`` clips (each group one batch-norm batch of both its views), outputs concatenated in clip order."""
    if groups == 1:
        return encode_pair(encoder, x1, x2, aug1, aug2)
    split = [(None,) * groups if t is None else t.chunk(groups) for t in (x1, x2, aug1, aug2)]
    return _cat([encode_pair(encoder, *group) for group in zip(*split)])


@FRAMEWORKS.register("moco")
class MoCo(MomentumFramework):
    """MoCo v2 on ``backbone`` (see the module docstring for the defaults).

    Buffers: ``queue (queue_size, out_dim)`` of unit-norm keys and ``queue_ptr``, the index of the
    oldest key (the next to be overwritten).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: HeadSpec = MLP_HEAD,
        temperature: float = 0.2,
        momentum: float = 0.99,
        queue_size: int = 4096,
        hidden_dim: int = 512,
        out_dim: int = 128,
        shuffle_bn_groups: int = 2,
    ) -> None:
        temperature = checks.positive("temperature", temperature)
        checks.positive("queue_size", queue_size, integer=True)
        shuffle_bn_groups = checks.at_least("shuffle_bn_groups", shuffle_bn_groups, 0, integer=True)
        super().__init__(backbone, head.build(feature_dim_of(backbone), hidden_dim, out_dim), momentum, "momentum")
        self.temperature = temperature
        self.shuffle_bn_groups = shuffle_bn_groups
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def shuffle_groups(self, batch: int) -> int:
        """Batch-norm groups per process for a local batch of ``batch`` clips: :func:`bn_groups` of
        ``shuffle_bn_groups`` in training, 0 (no shuffle) when it is 0, in evaluation mode or
        without batch-norm layers."""
        has_bn = any(isinstance(m, BATCH_NORMS) for m in self.modules())
        if not (self.training and has_bn and self.shuffle_bn_groups):
            return 0
        return bn_groups(batch, self.shuffle_bn_groups)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """FIFO: ``keys (M, D)`` (unit norm) replace the oldest entries; if ``M > queue_size`` only
        the last ``queue_size`` keys are kept. The pointer advances by ``M`` (mod ``queue_size``)."""
        size = self.queue.shape[0]
        m = keys.shape[0]
        ptr = int(self.queue_ptr)
        kept = keys[-size:]
        index = (ptr + m - kept.shape[0] + torch.arange(kept.shape[0], device=keys.device)) % size
        self.queue[index] = kept.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + m) % size)

    def forward(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None,
                aug2: Tensor | None = None) -> FrameworkOutput:
        """Views ``x1, x2 (B, 3, T, H, W)`` (augmentation vectors ``aug1, aug2``) -> symmetrised InfoNCE;
        enqueues both views' keys when training. Shuffling BN in training (module docstring)."""
        groups = self.shuffle_groups(x1.shape[0])
        (q1, maps1), (q2, maps2) = encode_groups(self.online_with_maps, max(groups, 1), x1, x2, aug1, aug2)
        if groups * info().world_size > 1:
            inputs = (x1, x2) if aug1 is None else (x1, x2, aug1, aug2)
            k1, k2 = shuffled_map(lambda *views: encode_groups(self.target, groups, *views), *inputs)
        else:
            k1, k2 = encode_pair(self.target, x1, x2, aug1, aug2)
        queue = self.queue.clone()  # the loss keeps it for backward; enqueue changes the buffer in place
        loss = 0.5 * (
            moco_infonce_loss(q1, k2, queue, self.temperature) + moco_infonce_loss(q2, k1, queue, self.temperature)
        )
        if self.training:
            self.enqueue(gather(F.normalize(torch.cat([k1, k2]).float(), dim=1)))  # all ranks' keys
        return FrameworkOutput(loss, {POS_SIM: mean_cosine(q1, q2)}, (maps1, maps2))

    def pair_losses(self, x1: Tensor, x2: Tensor, aug1: Tensor | None = None, aug2: Tensor | None = None,
                    groups: int = 1) -> Tensor:
        """Each pair's symmetrised InfoNCE ``(N,)`` against the queue (which ``groups`` leaves alone: the
        negatives are the queue's); no shuffling BN, nothing enqueued."""
        group_size(x1.shape[0], groups)
        q1, q2 = encode_pair(self.online, x1, x2, aug1, aug2)
        k1, k2 = encode_pair(self.target, x1, x2, aug1, aug2)
        return 0.5 * (moco_infonce_loss(q1, k2, self.queue, self.temperature, reduction="none")
                      + moco_infonce_loss(q2, k1, self.queue, self.temperature, reduction="none"))
