"""Local-global temporal order: targets for known placements, the head's loss, the global view, the extra pass."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_config

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.geometry import FULL_CUBE
from paramcrop.losses import ORDER_LOSS, REGION_LOSS, TemporalOrder, global_view, order_targets
from paramcrop.train import Trainer

pytestmark = pytest.mark.usefixtures("tiny_cache")  # the module's synthetic-data cache (conftest)


def temporal(ct, ht=0.25):
    return torch.tensor([0.0, 0.0, ct, 1.0, 1.0, ht])


def test_order_targets_for_known_placements():
    whole = torch.tensor(FULL_CUBE)
    # the whole clip [-1, 1] in 4 bins of width 0.5: edges -0.5, 0, 0.5; a center on an edge goes up
    for ct, expected in ((-0.9, 0), (-0.5, 1), (-0.3, 1), (0.0, 2), (0.1, 2), (0.8, 3), (1.0, 3), (-1.0, 0)):
        assert order_targets(temporal(ct), whole, 4).item() == expected, ct
    # a global view spanning [0, 1] (center 0.5, half 0.5), 4 bins of 0.25; outside centers are clamped
    second_half = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.5])
    locals_ = torch.stack([temporal(c) for c in (0.1, 0.3, 0.6, 0.9, -0.5, 1.2)])
    assert order_targets(locals_, second_half.expand(6, 6), 4).tolist() == [0, 1, 2, 3, 0, 3]
    # 3 bins of the whole clip: [-1, -1/3), [-1/3, 1/3), [1/3, 1]
    assert order_targets(torch.stack([temporal(c) for c in (-0.5, 0.0, 0.5)]), whole.expand(3, 6), 3).tolist() \
        == [0, 1, 2]
    with pytest.raises(ValueError, match="bins"):
        order_targets(temporal(0.0), whole, 0)


def test_order_head_loss_is_the_cross_entropy_over_both_local_views():
    torch.manual_seed(0)
    head = TemporalOrder(6, bins=4, hidden_dim=8).eval()  # eval: batch-norm with running statistics
    g, l1, l2 = torch.randn(3, 5, 6)
    whole = torch.tensor(FULL_CUBE).expand(5, 6)
    c1 = torch.stack([temporal(c) for c in (-0.9, -0.3, 0.1, 0.7, 0.2)])
    c2 = torch.stack([temporal(c) for c in (0.9, 0.3, -0.1, -0.7, -0.2)])
    loss = head(g, [l1, l2], [c1, c2], whole)
    targets = [[0, 1, 2, 3, 2], [3, 2, 1, 0, 1]]
    manual = [F.cross_entropy(head.classifier(torch.cat([g, local], 1)), torch.tensor(t))
              for local, t in zip((l1, l2), targets)]
    torch.testing.assert_close(loss, (manual[0] + manual[1]) / 2)
    for key, bad in (("bins", 1), ("bins", 2.5), ("in_dim", 0)):
        with pytest.raises(ValueError, match=key):
            TemporalOrder(**{"in_dim": 6, "bins": 4, key: bad})


def test_global_view_is_the_whole_clip():
    clips = torch.randint(0, 256, (2, 3, 8, 16, 16), dtype=torch.uint8)
    same, cubes = global_view(clips, (8, 16, 16))
    torch.testing.assert_close(same, clips.float())  # full cube at the clip's own size: unchanged
    assert cubes.tolist() == [list(FULL_CUBE)] * 2
    half, _ = global_view(clips, (4, 8, 8))  # 2 x 2 x 2 blocks -> their means (trilinear, centered)
    torch.testing.assert_close(half, F.avg_pool3d(clips.float(), 2))


def count_backbone_passes(trainer) -> list[int]:
    """Batch sizes of every backbone pass that the trainer's framework makes."""
    calls, backbone = [], trainer.framework.backbone
    forward = backbone.forward_features

    def counted(x):
        calls.append(x.shape[0])
        return forward(x)

    backbone.forward_features = counted
    return calls


@pytest.mark.parametrize("losses, passes", [({}, [16]), ({"losses.region": 1.0}, [16]),
                                                ({"losses.order": 1.0}, [16, 8])])
def test_only_the_order_loss_makes_an_extra_backbone_pass(tmp_path, losses, passes):
    trainer = Trainer(tiny_config(**{"crop.method": "random", "steps": 1, **losses}), tmp_path, progress=False)
    calls = count_backbone_passes(trainer)
    loss, metrics, _ = trainer.train_step(next(trainer._loader()))
    assert calls == passes  # both views in one batch of 2B = 16; the global view of B = 8 clips
    assert (ORDER_LOSS in metrics) == ("losses.order" in losses)
    assert (REGION_LOSS in metrics) == ("losses.region" in losses)


def test_order_loss_in_training_with_other_terms(tmp_path):
    cfg = tiny_config(**{"crop.method": "paramcrop", "steps": 2, "framework.name": "byol"}).with_losses(
        ["order,region"])
    sink = sinks.MemorySink()
    Trainer(cfg, tmp_path, sink=sink, progress=False).fit()
    for name in (ORDER_LOSS, REGION_LOSS):
        values = [v for _, v in sink.series(name)]
        assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
    assert cfg.losses.order == 1.0 and cfg.losses.region == 1.0
    kept = TrainConfig().with_overrides({"losses.order": 0.25}).with_losses(["order", "region"])
    assert (kept.losses.order, kept.losses.region) == (0.25, 1.0)  # an explicit weight is kept
    with pytest.raises(ConfigError, match="unknown loss.*valid losses: region, order"):
        TrainConfig().with_losses(["ordre"])
    with pytest.raises(ConfigError, match="losses.order_bins must be >= 2"):
        TrainConfig().with_overrides({"losses.order_bins": 1})
