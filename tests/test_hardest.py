"""Issue 21: the learning-free adversary ``hardest`` (Hard View Selection) and the per-pair losses it scores with."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_DRAWS, TINY_SOURCE, assert_cubes_inside
from paramcrop import sinks
from paramcrop.backbones import create_backbone
from paramcrop.config import TrainConfig
from paramcrop.crops import RandomCubicCrop, create_crop
from paramcrop.frameworks import create_framework
from paramcrop.geometry import crop_video, view_iou
from paramcrop.data.batches import to_input

CPU = torch.device("cpu")
TINY = {"data.source": TINY_SOURCE, "data.frames": 8, "data.size": 32, "view.frames": 4, "view.size": 16,
        "batch_size": 4, "steps": 2, "log_every": 1, "visualize_at": 0, "device": "cpu",
        "eval.linear": False, "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS, "crop.method": "hardest", "backbone.width": 4}


def nt_xent_pair_by_hand(z1, z2, i, temperature):
    """Pair ``i``'s NT-Xent written out: the mean over its two anchors of ``-log(exp(s+/T) / sum_other exp(s/T))``."""
    z = [F.normalize(v, dim=0) for v in (*z1, *z2)]
    n = len(z1)
    total = 0.0
    for anchor, positive in ((i, i + n), (i + n, i)):
        logits = [float(z[anchor] @ z[j]) / temperature for j in range(2 * n) if j != anchor]
        pos = float(z[anchor] @ z[positive]) / temperature
        total += -(pos - math.log(sum(math.exp(v) for v in logits)))
    return total / 2


def test_hardest_trains_on_the_highest_loss_pair_of_a_loop_that_scores_them_one_by_one(workdir):
    from paramcrop.train import Trainer

    trainer = Trainer(TrainConfig().with_overrides(TINY), workdir / "run", progress=False)
    crop, framework = trainer.crop, trainer.framework
    batch, k = 4, crop.candidates
    clips = torch.randint(0, 256, (batch, 3, 8, 32, 32), dtype=torch.uint8)
    buffers = {name: b.clone() for name, b in framework.named_buffers()}
    torch.manual_seed(8)
    views = crop(clips, 0)
    assert framework.training  # scored in evaluation mode, the training mode restored
    assert all(torch.equal(b, buffers[name]) for name, b in framework.named_buffers())  # no statistic moved
    # the candidates: the random crop's draws of k * batch pairs from the same stream
    torch.manual_seed(8)
    c1, c2 = RandomCubicCrop(crop.size, crop.area, crop.aspect, crop.duration).sample_cubes(k * batch, CPU, 0)
    # one by one: every view through the network alone (evaluation mode: no batch statistics), then each
    # pair's NT-Xent by hand within its candidate set (the other clips' candidate-k views as negatives)
    framework.eval()
    with torch.no_grad():
        def embed(clip, cube):
            return framework.online(to_input(crop_video(clip[None], cube[None], crop.size) / 255.0))[0]

        z1 = [embed(clips[r % batch], c1[r]) for r in range(k * batch)]
        z2 = [embed(clips[r % batch], c2[r]) for r in range(k * batch)]
    framework.train()
    temperature = framework.temperature
    losses = torch.tensor([[nt_xent_pair_by_hand(z1[j * batch:(j + 1) * batch], z2[j * batch:(j + 1) * batch], i,
                                                 temperature) for i in range(batch)] for j in range(k)])
    chosen = losses.argmax(0)
    assert chosen.unique().numel() > 1  # the choice depends on the clip: this test can tell pairs apart
    rows = chosen * batch + torch.arange(batch)
    assert torch.equal(views.cubes1, c1[rows]) and torch.equal(views.cubes2, c2[rows])
    assert torch.equal(views.x1, crop_video(clips, c1[rows], crop.size))
    assert float(views.metrics[sinks.VIEW_CANDIDATES_IOU]) == pytest.approx(float(view_iou(c1, c2).mean()))
    # the batched scorer gives those losses (its one pass of 2 k B views)
    x1 = crop_video(clips.repeat(k, 1, 1, 1, 1), c1, crop.size)
    x2 = crop_video(clips.repeat(k, 1, 1, 1, 1), c2, crop.size)
    batched = trainer.score_pairs(x1, x2, c1, c2, k).view(k, batch)
    torch.testing.assert_close(batched, losses.float(), rtol=1e-4, atol=1e-4)


def test_hardest_cubes_stay_in_the_random_crops_ranges():
    crop = create_crop("hardest", (2, 4, 4), candidates=3, area=(0.4, 0.7), aspect=(0.8, 1.25), duration=(0.6, 0.9))
    crop.bind_scorer(lambda x1, x2, c1, c2, groups: torch.rand(x1.shape[0]))
    torch.manual_seed(0)
    views = crop(torch.randint(0, 256, (500, 3, 4, 8, 8), dtype=torch.uint8), 0)
    for cubes in (views.cubes1, views.cubes2):
        assert_cubes_inside(cubes)
        area, aspect = cubes[:, 3] * cubes[:, 4], cubes[:, 3] / cubes[:, 4]
        assert area.min() >= 0.4 - 1e-6 and area.max() <= 0.7 + 1e-6
        assert aspect.min() >= 0.8 - 1e-6 and aspect.max() <= 1.25 + 1e-6
        assert cubes[:, 5].min() >= 0.6 - 1e-6 and cubes[:, 5].max() <= 0.9 + 1e-6
    with pytest.raises(ValueError, match="hand it a scorer"):
        create_crop("hardest", (2, 4, 4))(torch.zeros(2, 3, 4, 8, 8), 0)


def test_the_trainer_logs_the_chosen_and_the_candidate_pairs(workdir):
    from paramcrop.train import train

    sink = sinks.MemorySink()
    train(TrainConfig().with_overrides(TINY), sink, workdir / "run", progress=False)
    assert [s for s, _ in sink.series(sinks.VIEW_CANDIDATES_IOU)] == [0, 1]
    assert [s for s, _ in sink.series(sinks.VIEW_IOU)] == [0, 1]
    assert sink.params["crop.method"] == "hardest" and sink.params["crop.candidates"] == 4
    assert not {name for _, name, _ in sink.history} & set(sinks.GENERATOR_METRICS)  # nothing learns


@pytest.mark.parametrize("name", ["simclr", "moco", "byol"])
def test_pair_losses_are_the_frameworks_loss_pair_by_pair(name):
    torch.manual_seed(4)
    framework = create_framework(name, create_backbone("tiny3d", width=4)).eval()
    x1, x2 = torch.randn(6, 3, 4, 16, 16), torch.randn(6, 3, 4, 16, 16)
    with torch.no_grad():
        pairs = framework.pair_losses(x1, x2)
        assert pairs.shape == (6,)
        assert float(pairs.mean()) == pytest.approx(float(framework(x1, x2).loss), rel=1e-5)
        halves = torch.cat([framework.pair_losses(x1[:3], x2[:3]), framework.pair_losses(x1[3:], x2[3:])])
        torch.testing.assert_close(framework.pair_losses(x1, x2, groups=2), halves, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="groups must divide the 6 pairs"):
        framework.pair_losses(x1, x2, groups=4)
