"""Soft region contrast: cell boxes and soft targets on hand-built cubes, the loss against a naive loop."""
import math

import pytest
import torch
from test_train import tiny_config

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.losses import REGION_LOSS, RegionContrast, cell_boxes, region_contrast_loss, soft_targets
from paramcrop.train import Trainer

pytestmark = pytest.mark.usefixtures("tiny_cache")  # the module's synthetic-data cache (conftest)

FULL = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])


def cube(cx=0.0, cy=0.0, ct=0.0, hx=1.0, hy=1.0, ht=1.0):
    return torch.tensor([[cx, cy, ct, hx, hy, ht]])


def test_cell_boxes_of_the_whole_clip_tile_it_in_feature_map_order():
    boxes = cell_boxes(FULL, (2, 3, 3))
    assert boxes.shape == (1, 18, 6)
    third = 1 / 3
    # flatten(2) order is (t, y, x): index 1 is the next x, 3 the next y, 9 the next t
    expected = {0: (-2 * third, -2 * third, -0.5), 1: (0.0, -2 * third, -0.5), 3: (-2 * third, 0.0, -0.5),
                9: (-2 * third, -2 * third, 0.5), 17: (2 * third, 2 * third, 0.5)}
    for index, center in expected.items():
        torch.testing.assert_close(boxes[0, index], torch.tensor([*center, third, third, 0.5]))


def test_cell_boxes_follow_the_cube_and_mirror_flipped_views():
    right_half = cube(cx=0.5, hx=0.5)  # x in [0, 1]
    boxes = cell_boxes(right_half.repeat(2, 1), (1, 1, 2), flip=torch.tensor([False, True]))
    torch.testing.assert_close(boxes[0, :, 0], torch.tensor([0.25, 0.75]))  # cell centers in the clip
    torch.testing.assert_close(boxes[0, :, 3], torch.tensor([0.25, 0.25]))  # each cell half of the view
    torch.testing.assert_close(boxes[1, :, 0], torch.tensor([0.75, 0.25]))  # flipped: left cell shows the right
    torch.testing.assert_close(boxes[0, :, 1:3], torch.zeros(2, 2))


def test_identical_views_give_a_diagonal():
    for c in (FULL, cube(cx=0.2, cy=-0.1, ct=0.3, hx=0.5, hy=0.7, ht=0.6)):
        boxes = cell_boxes(c, (2, 3, 3))
        torch.testing.assert_close(soft_targets(boxes, boxes)[0], torch.eye(18))


def test_disjoint_views_give_no_positives():
    left, right = cube(cx=-0.6, hx=0.4), cube(cx=0.5, hx=0.5)
    early, late = cube(ct=-0.5, ht=0.5), cube(ct=0.6, ht=0.4)
    for a, b in ((left, right), (early, late)):
        assert soft_targets(cell_boxes(a, (2, 2, 2)), cell_boxes(b, (2, 2, 2))).abs().max() == 0


def test_half_overlapping_views_give_the_hand_computed_weights():
    # x: view 1 = [-1, 0], view 2 = [-1/2, 1/2], 3 cells each of width 1/3:
    # view 1 cells [-1, -2/3] [-2/3, -1/3] [-1/3, 0]; view 2 cells [-1/2, -1/6] [-1/6, 1/6] [1/6, 1/2].
    # Overlapping pairs share 1/6 of length: IoU = (1/6) / (1/3 + 1/3 - 1/6) = 1/3 (y, t identical).
    v1, v2 = cube(cx=-0.5, hx=0.5), cube(cx=0.0, hx=0.5)
    third = 1 / 3
    expected = torch.tensor([[0, 0, 0], [third, 0, 0], [third, third, 0]])
    torch.testing.assert_close(soft_targets(cell_boxes(v1, (1, 1, 3)), cell_boxes(v2, (1, 1, 3)))[0], expected)
    flipped = soft_targets(cell_boxes(v1, (1, 1, 3)), cell_boxes(v2, (1, 1, 3), flip=torch.tensor([True])))
    torch.testing.assert_close(flipped[0], expected.flip(1))  # view 2's cells in mirrored order
    # t: view 1 = [-1, 0], view 2 = [-1/2, 1/2], 2 cells each: only view 1's second = view 2's first
    t1, t2 = cube(ct=-0.5, ht=0.5), cube(ct=0.0, ht=0.5)
    torch.testing.assert_close(soft_targets(cell_boxes(t1, (2, 1, 1)), cell_boxes(t2, (2, 1, 1)))[0],
                               torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    # x and t at once. One cell per view: half of x times half of t overlaps, 1/4 of each volume:
    # IoU = (1/4) / (2 - 1/4) = 1/7. Cells (t, x) = 2 x 3: only view 1's second time cell meets view 2's
    # first, where the x pairs above give 1/3: flat index t * 3 + x, pairs (4, 0), (5, 0), (5, 1).
    xt1, xt2 = cube(cx=-0.5, hx=0.5, ct=-0.5, ht=0.5), cube(cx=0.0, hx=0.5, ct=0.0, ht=0.5)
    assert soft_targets(cell_boxes(xt1, (1, 1, 1)), cell_boxes(xt2, (1, 1, 1))).item() == pytest.approx(1 / 7)
    w = soft_targets(cell_boxes(xt1, (2, 1, 3)), cell_boxes(xt2, (2, 1, 3)))[0]
    expected = torch.zeros(6, 6)
    expected[4, 0] = expected[5, 0] = expected[5, 1] = third
    torch.testing.assert_close(w, expected)


def naive_region_loss(f1, f2, w, temperature):
    """Both directions written out: anchor cell -> all cells of the other view in the batch."""
    def direction(anchors, others, weights):  # weights[b][p][q]: anchor p of clip b, cell q of clip b
        b_n, n_a, n_o = len(anchors), len(anchors[0]), len(others[0])
        total, count = 0.0, 0
        for b in range(b_n):
            for p in range(n_a):
                mass = sum(float(weights[b][p][q]) for q in range(n_o))
                if mass == 0:
                    continue
                a = anchors[b][p] / anchors[b][p].norm()
                sims = {(c, q): float(a @ (others[c][q] / others[c][q].norm())) / temperature
                        for c in range(b_n) for q in range(n_o)}
                log_den = math.log(sum(math.exp(s) for s in sims.values()))
                total += -sum(float(weights[b][p][q]) / mass * (sims[(b, q)] - log_den) for q in range(n_o))
                count += 1
        return total / max(count, 1)

    f1, f2, w = f1.double(), f2.double(), w.double()
    return 0.5 * (direction(f1, f2, w) + direction(f2, f1, w.transpose(1, 2)))


@pytest.mark.parametrize("b, n1, n2, c, temperature", [(1, 2, 3, 4, 0.5), (3, 4, 4, 8, 0.2), (2, 6, 3, 5, 1.0)])
def test_region_loss_matches_naive_loop(b, n1, n2, c, temperature):
    torch.manual_seed(b * 10 + n1)
    f1, f2 = torch.randn(b, n1, c) * 2, torch.randn(b, n2, c)
    w = torch.rand(b, n1, n2) * (torch.rand(b, n1, n2) < 0.5)  # sparse soft weights
    w[0, 0] = 0  # an anchor without any overlap: no positive, left out
    loss = region_contrast_loss(f1, f2, w, temperature)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(naive_region_loss(f1, f2, w, temperature), rel=1e-5)


def test_region_loss_edge_cases_and_validation():
    f = torch.randn(2, 3, 4)
    assert region_contrast_loss(f, f, torch.zeros(2, 3, 3), 0.1).item() == 0  # no positive at all
    sharp = region_contrast_loss(f, f, torch.eye(3).expand(2, 3, 3), 0.01)
    blunt = region_contrast_loss(f, f.flip(1), torch.eye(3).expand(2, 3, 3), 0.01)
    assert sharp.item() < blunt.item()  # matching cells aligned with their targets score better
    with pytest.raises(ValueError, match="temperature"):
        region_contrast_loss(f, f, torch.eye(3).expand(2, 3, 3), 0.0)
    with pytest.raises(ValueError, match="weights"):
        region_contrast_loss(f, f, torch.ones(2, 3, 2), 0.1)


def test_region_module_trains_the_maps_not_the_cubes():
    torch.manual_seed(0)
    region = RegionContrast(8, temperature=0.2, hidden_dim=16, out_dim=8)
    maps1 = torch.randn(3, 8, 2, 2, 2, requires_grad=True)
    maps2 = torch.randn(3, 8, 1, 2, 2, requires_grad=True)  # grids may differ
    cubes1 = FULL.repeat(3, 1).requires_grad_()
    cubes2 = cube(cx=0.5, hx=0.5).repeat(3, 1)
    flips = torch.tensor([False, True, False])
    region(maps1, maps2, cubes1, cubes2, flips, flips).backward()
    assert maps1.grad.abs().sum() > 0 and maps2.grad.abs().sum() > 0
    assert cubes1.grad is None  # the soft targets are constants
    with pytest.raises(ValueError, match="temperature"):
        RegionContrast(8, temperature=-1)


def test_region_loss_in_training_and_config(tmp_path):
    cfg = tiny_config(**{"crop.method": "cvrl", "steps": 2, "losses.region": 0.5})
    sink = sinks.MemorySink()
    trainer = Trainer(cfg, tmp_path, sink=sink, progress=False)
    trainer.fit()
    values = [v for _, v in sink.series(REGION_LOSS)]
    assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert any(k.startswith(f"{REGION_LOSS}.projector") for k in state["losses"])
    assert sink.params["losses.region"] == 0.5 and sink.params["losses.order"] == 0.0
    with pytest.raises(ConfigError, match="losses.region must be >= 0"):
        TrainConfig().with_overrides({"losses.region": -1})
    with pytest.raises(ConfigError, match="losses.region_temperature must be > 0"):
        TrainConfig().with_overrides({"losses.region_temperature": 0})
