"""CATE head: the augmentation vectors, which parameters each view's projection uses (the reference view
closes a shortcut), training."""
import math

import pytest
import torch
from test_train import tiny_config

from paramcrop import sinks
from paramcrop.backbones import create_backbone
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.frameworks import FRAMEWORKS, create_framework, encode_pair
from paramcrop.heads import AUG_DIM, CATEHead, HeadSpec, MLPHead, augmentation_vectors, create_head
from paramcrop.train import Trainer

pytestmark = pytest.mark.usefixtures("tiny_cache")  # the module's synthetic-data cache (conftest)

CATE = HeadSpec("cate", {"depth": 1, "width": 16, "heads": 2})


def test_augmentation_vectors_layout_and_no_gradient():
    c1 = torch.tensor([[0.1, 0.2, 0.3, 0.5, 0.6, 0.7]], requires_grad=True)
    c2 = torch.tensor([[-0.1, 0.0, 0.4, 0.4, 0.6, 0.5]])
    expected2 = torch.tensor([-0.1, 0.0, 0.4, 0.4, 0.6, 0.5, 0.0, -0.2, -0.2, 0.1, -0.1, 0.0, -0.2])  # shift = c2 - c1
    a1, a2 = augmentation_vectors(c1, c2, torch.tensor([True]), torch.tensor([False]), reference=False)
    assert a1.shape == a2.shape == (1, AUG_DIM) == (1, 13)
    torch.testing.assert_close(a1[0], torch.tensor([0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 1.0, 0, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(a2[0], expected2)
    assert not a1.requires_grad and not a2.requires_grad  # a learned crop is trained through the pixels only
    r1, r2 = augmentation_vectors(c1, c2, torch.tensor([True]), torch.tensor([False]))  # the default: reference
    assert torch.equal(r1, torch.zeros(1, AUG_DIM)) and torch.equal(r2, a2)


def projections(fw, x1, x2, cubes1, cubes2, flip1, flip2):
    """Both views' projections through the framework's own path (the head's own augmentation
    inputs, one joint batch), in eval mode."""
    with torch.no_grad():
        return encode_pair(fw.online, x1, x2, *fw.projector.augmentation_inputs(cubes1, cubes2, flip1, flip2))


def test_without_a_reference_each_view_projection_uses_exactly_its_own_parameters():
    torch.manual_seed(0)
    head = HeadSpec("cate", {**CATE.params, "reference": False})
    fw = create_framework("simclr", create_backbone("tiny3d", width=4), head, hidden_dim=32, out_dim=16).eval()
    assert isinstance(fw.projector, CATEHead)
    x1, x2 = torch.randn(2, 3, 3, 4, 16, 16)
    c1, c2 = torch.rand(3, 6), torch.rand(3, 6)
    f1, f2 = torch.tensor([False, True, False]), torch.tensor([True, True, False])
    z1, z2 = projections(fw, x1, x2, c1, c2, f1, f2)

    moved = c2.clone()
    moved[1, 2] += 0.3  # view 2 of clip 1, later in time: only that projection changes
    y1, y2 = projections(fw, x1, x2, c1, moved, f1, f2)
    assert torch.equal(y1, z1) and torch.equal(y2[[0, 2]], z2[[0, 2]]) and not torch.allclose(y2[1], z2[1])

    unflipped = f1.clone()
    unflipped[1] = False  # view 1's flip: only view 1's projection of clip 1
    y1, y2 = projections(fw, x1, x2, c1, c2, unflipped, f2)
    assert torch.equal(y2, z2) and torch.equal(y1[[0, 2]], z1[[0, 2]]) and not torch.allclose(y1[1], z1[1])

    a1, a2 = augmentation_vectors(c1, c2, f1, f2, reference=False)
    b1 = a1.clone()
    b1[0, :6] = 0.5  # view 1's own cube entries only
    with torch.no_grad():
        y1, y2 = encode_pair(fw.online, x1, x2, b1, a2)
    assert torch.equal(y2, z2) and not torch.allclose(y1[0], z1[0])

    # view 1's cube also enters view 2's vector (its shift relative to view 1): both change, as documented
    y1, y2 = projections(fw, x1, x2, c1 + 0.1, c2, f1, f2)
    assert not torch.allclose(y1, z1) and not torch.allclose(y2, z2)


def test_with_the_reference_view_the_first_projection_sees_pixels_only():
    torch.manual_seed(0)
    fw = create_framework("simclr", create_backbone("tiny3d", width=4), CATE, hidden_dim=32, out_dim=16).eval()
    assert fw.projector.reference  # the default
    x1, x2 = torch.randn(2, 3, 3, 4, 16, 16)
    c1, c2 = torch.rand(3, 6), torch.rand(3, 6)
    f1, f2 = torch.tensor([False, True, False]), torch.tensor([True, True, False])
    z1, z2 = projections(fw, x1, x2, c1, c2, f1, f2)
    y1, y2 = projections(fw, x1, x2, c1 + 0.1, c2, ~f1, f2)  # view 1's cube and flip: only view 2's shift moves
    assert torch.equal(y1, z1) and not torch.allclose(y2, z2)
    moved = c2.clone()
    moved[1, 2] += 0.3  # view 2 of clip 1: only that projection
    y1, y2 = projections(fw, x1, x2, c1, moved, f1, f2)
    assert torch.equal(y1, z1) and torch.equal(y2[[0, 2]], z2[[0, 2]]) and not torch.allclose(y2[1], z2[1])


@pytest.mark.parametrize("reference,solvable", [(False, True), (True, False)])
def test_only_the_reference_view_closes_the_parameter_shortcut(reference, solvable):
    """Backbone features that carry no information (all equal): without a reference view the head
    still matches each positive pair through the parameters alone (view 2's shift and cube give
    view 1's cube, which view 1's tokens carry), driving NT-Xent far below chance; with the
    reference view, view 1's projections are all equal and the loss cannot leave chance,
    log(2N - 1)."""
    from paramcrop.frameworks.simclr import nt_xent_loss

    torch.manual_seed(0)
    n = 16
    head = create_head("cate", 8, 32, 16, depth=1, width=32, heads=2, reference=reference)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    features = torch.zeros(2 * n, 8)  # no pixels information at all
    for _ in range(150):
        cubes1, cubes2 = torch.rand(n, 6), torch.rand(n, 6)  # fresh random crops every step
        flips = torch.zeros(n, dtype=torch.bool)
        aug1, aug2 = head.augmentation_inputs(cubes1, cubes2, flips, flips)
        z = head(features, torch.cat([aug1, aug2]))
        loss = nt_xent_loss(z[:n], z[n:], temperature=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    chance = math.log(2 * n - 1)
    if solvable:
        assert loss.item() < 0.5 * chance
    else:
        assert loss.item() > 0.95 * chance


def test_mlp_head_ignores_the_parameters_and_cate_needs_them():
    torch.manual_seed(0)
    mlp = create_head("mlp", 8, 16, 4).eval()
    assert isinstance(mlp, MLPHead)
    h = torch.randn(5, 8)
    assert torch.equal(mlp(h, torch.randn(5, AUG_DIM)), mlp(h))
    assert mlp.augmentation_inputs(torch.rand(5, 6), torch.rand(5, 6), *torch.zeros(2, 5, dtype=torch.bool)) == (
        None, None)  # the trainer passes no parameters to it
    cate = create_head("cate", 8, 16, 4, width=8, heads=2)
    with pytest.raises(ValueError, match="augmentation vector"):
        cate(h)
    with pytest.raises(ValueError, match="augmentation vector"):
        cate(h, torch.randn(5, 6))
    with pytest.raises(ValueError, match="aug1 and aug2"):
        encode_pair(lambda x, aug: x, h, h, torch.randn(5, AUG_DIM), None)
    for key, bad in (("depth", 0), ("width", 0), ("heads", 1.5), ("heads", 3), ("in_dim", -1), ("reference", "yes")):
        with pytest.raises(ValueError, match=key):
            create_head("cate", **{"in_dim": 8, "hidden_dim": 16, "out_dim": 4, "width": 8, "heads": 2, key: bad})


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS.names()))
def test_every_framework_trains_two_steps_with_the_cate_head(tmp_path, framework):
    cfg = tiny_config(**{"framework.name": framework, "crop.method": "paramcrop", "steps": 2, "head.name": "cate",
                         "head.depth": 1, "head.width": 32})
    sink = sinks.MemorySink()
    trainer = Trainer(cfg, tmp_path, sink=sink, progress=False)
    head = trainer.framework.projector
    assert isinstance(head, CATEHead) and len(head.encoder.layers) == 1
    before = [p.detach().clone() for p in head.parameters()]
    generator = [p.detach().clone() for p in trainer.crop.parameters()]
    result = trainer.fit()
    assert all(math.isfinite(v) for _, v in sink.series(sinks.TRAIN_LOSS))
    assert all(not torch.equal(b, p) for b, p in zip(before, head.parameters()))  # every head tensor learned
    assert any(not torch.equal(b, p) for b, p in zip(generator, trainer.crop.parameters()))  # through the pixels
    assert 0 <= result.eval_metrics[sinks.EVAL_KNN_TOP1] <= 1  # evaluation: the backbone alone
    assert sink.params["head.name"] == "cate" and sink.params["head.heads"] == 4


def test_head_config_section():
    cfg = TrainConfig().with_overrides({"head.name": "cate", "head.width": 64})
    assert cfg.head == {"name": "cate", "width": 64}
    flat = cfg.flatten()
    assert (flat["head.depth"], flat["head.width"], flat["head.heads"]) == (2, 64, 4)
    assert TrainConfig().flatten()["head.name"] == "mlp"
    assert cfg.with_overrides({"head.name": "mlp"}).head == {"name": "mlp"}  # a new head drops the old keys
    valid = r"valid keys: head\.depth, head\.width, head\.heads, head\.reference"
    with pytest.raises(ConfigError, match=rf"head\.widht.*{valid}"):
        TrainConfig().with_overrides({"head.name": "cate", "head.widht": 64})
    with pytest.raises(ConfigError, match="valid heads: cate, mlp"):
        TrainConfig().with_overrides({"head.name": "transformer"})
    with pytest.raises(ConfigError, match="head: heads must divide width"):
        TrainConfig().with_overrides({"head.name": "cate", "head.heads": 3})
