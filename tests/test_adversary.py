"""Issue 21: the adversary readable (generator diagnostics) and steerable (its optimiser, a disparity budget)."""
import copy
import math

import pytest
import torch

from conftest import TINY_DRAWS, TINY_SOURCE, assert_cubes_inside
from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.crops import ParamCrop, create_crop
from paramcrop.crops.adversary import Adversary
from paramcrop.crops.paramcrop import budget_weight, hold_budget, saturation
from paramcrop.geometry import view_iou

SIZE = (4, 16, 16)
CPU = torch.device("cpu")
TINY = {"data.source": TINY_SOURCE, "data.frames": 8, "data.size": 32, "view.frames": 4, "view.size": 16,
        "batch_size": 4, "steps": 3, "log_every": 1, "visualize_at": 0, "device": "cpu", "snapshot_every": 0,
        "eval.linear": False, "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS}


def tiny_crop(**kwargs) -> ParamCrop:
    """A tiny generator (noise 3 -> 5 -> 12) whose gradients a test can follow by hand."""
    torch.manual_seed(21)
    return ParamCrop(SIZE, noise_dim=3, hidden=5, depth=1, init_std=0.3, **kwargs)


def cube_loss(c1, c2):
    """A loss of the cubes alone, different in every parameter (stands in for the framework's)."""
    w = torch.linspace(-1.0, 1.5, 12)
    return (torch.cat([c1, c2], 1) * w).sum(1).mean() + (c1 - c2).pow(2).sum(1).mean()


def generator_grads(crop, inputs):
    """The gradients the reversal layer hands the generator, computed independently: ``-lambda`` times the
    gradient of :func:`cube_loss` of ``crop.generate`` (no reversal layer, ``torch.autograd.grad``)."""
    cubes = crop.generate(inputs)
    grads = torch.autograd.grad(cube_loss(cubes[:, 0], cubes[:, 1]), list(crop.parameters()))
    return [-crop.strength * g for g in grads]


# --- diagnostics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_grad_and_update_norms_of_one_step_against_a_hand_computation(optimizer):
    crop = tiny_crop(strength=0.5)
    inputs = torch.randn(6, 3)
    expected_grads = generator_grads(copy.deepcopy(crop), inputs)
    before = [p.detach().clone() for p in crop.parameters()]
    adversary = crop.adversary(1e-2, optimizer=optimizer)
    c1, c2 = crop._reversed(inputs, 0)
    cube_loss(c1, c2).backward()
    diagnostics = adversary.step(0)
    g = torch.cat([e.flatten() for e in expected_grads]).double()
    assert float(diagnostics[sinks.GENERATOR_GRAD_NORM]) == pytest.approx(float(g.pow(2).sum().sqrt()), rel=1e-5)
    # the first step by hand: Adam -lr lambda g / (|g| + eps) (bias-corrected moments g and g^2); SGD -lr g
    # (its momentum buffer starts at g; lambda is already in g)
    step = 1e-2 * 0.5 * g / (g.abs() + 1e-8) if optimizer == "adam" else 1e-2 * g
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(crop.parameters(), before)]).double()
    assert float(diagnostics[sinks.GENERATOR_UPDATE_NORM]) == pytest.approx(float(moved.norm()), rel=1e-6)
    assert float(moved.norm()) == pytest.approx(float(step.norm()), rel=1e-4)
    assert set(diagnostics) == {sinks.GENERATOR_GRAD_NORM, sinks.GENERATOR_UPDATE_NORM}


def test_no_step_at_lambda_zero_reads_as_zero_norms_and_a_random_crop_has_none():
    crop = tiny_crop(strength=0.0)
    for optimizer in ("adam", "sgd"):
        adversary = crop.adversary(1e-2, optimizer=optimizer)
        c1, c2 = crop.sample_cubes(4, CPU, 0)
        assert not c1.requires_grad  # detached at lambda 0: no backward reaches the generator
        diagnostics = adversary.step(0)
        assert float(diagnostics[sinks.GENERATOR_GRAD_NORM]) == 0
        assert float(diagnostics[sinks.GENERATOR_UPDATE_NORM]) == 0
    assert create_crop("random", SIZE).adversary(1e-2).step(0) == {}


def test_saturation_counts_the_used_outputs_within_one_percent_of_a_bound():
    # raw outputs = the last layer's bias (zero weights); per view (ux, uy, ut, vx, vy, vt):
    # view 1: tanh(5) -> sigmoid(10) = 0.99995 (saturated), 0, sigmoid(-6) = 0.0025 (saturated),
    # sigmoid(2.2) = 0.90, sigmoid(6) = 0.9975 (saturated), 0; view 2: only vt = -5 (0.0067, saturated)
    bias = torch.tensor([5.0, 0, -3, 2.2, 6, 0, 0, 0, 0, 0, 0, -5])
    # the outputs each dof reads: spatiotemporal all 12; spatial ux, uy, vx, vy; temporal ut, vt; [extent_xy,
    # position_t] vx, ut (a square box: vy unused)
    for dof, share in (("spatiotemporal", 4 / 12), ("spatial", 2 / 8), ("temporal", 2 / 4),
                       (["extent_xy", "position_t"], 1 / 4)):
        crop = ParamCrop(SIZE, init_std=0.0, dof=dof)
        with torch.no_grad():
            crop.generator[-1].bias.copy_(bias)
        views = crop(torch.zeros(3, 3, 8, 32, 32), 0)
        assert float(views.metrics[sinks.GENERATOR_SATURATION]) == pytest.approx(share), dof
    # 0.989 is not saturated, 0.991 and 0.009 are; a centre's unit value is sigmoid(2u)
    for unit, saturated in ((0.989, False), (0.991, True), (0.009, True)):
        raw = torch.zeros(1, 2, 6)
        raw[0, 0, 0] = math.log(unit / (1 - unit)) / 2
        crop = ParamCrop(SIZE, init_std=0.0, dof=["position_xy"])
        assert float(saturation(raw, crop.used)) == pytest.approx(0.25 if saturated else 0.0), unit


def test_the_trainer_logs_the_diagnostics_of_a_learned_crop_only(workdir):
    from paramcrop.train import train

    logged = {}
    for crop in ("paramcrop", "random"):
        sink = sinks.MemorySink()
        train(TrainConfig().with_overrides({**TINY, "crop.method": crop}), sink, workdir / crop, progress=False)
        logged[crop] = sink
    names = {name for _, name, _ in logged["paramcrop"].history}
    assert set(sinks.GENERATOR_METRICS) <= names and len(sinks.CUBE_STD_METRICS) == 12
    assert [s for s, _ in logged["paramcrop"].series(sinks.GENERATOR_GRAD_NORM)] == [0, 1, 2]
    assert all(v > 0 for _, v in logged["paramcrop"].series(sinks.GENERATOR_UPDATE_NORM))
    assert not set(sinks.GENERATOR_METRICS) & {name for _, name, _ in logged["random"].history}
    assert sinks.cube_std_metric(2, "ht") == "train/cube_std/view2/ht"


def test_cube_spread_is_the_batch_sample_std_of_each_parameter():
    from paramcrop.geometry import cube_spread

    a, b = torch.rand(7, 6), torch.rand(7, 6)
    spread = cube_spread(a, b)
    mean = a[:, 4].mean()
    by_hand = math.sqrt(float(((a[:, 4] - mean) ** 2).sum()) / 6)  # ddof 1
    assert float(spread["train/cube_std/view1/hy"]) == pytest.approx(by_hand, rel=1e-6)
    assert float(spread["train/cube_std/view2/cx"]) == pytest.approx(float(b[:, 0].std()), rel=1e-6)


# --- the generator's optimiser ----------------------------------------------------------------------
def test_adam_and_sgd_take_their_first_step_in_the_same_direction_of_signs():
    """What is exactly true of the first step: Adam's is ``-lr g / (|g| + eps)`` (about ``-lr sign(g)``), SGD's
    with momentum ``-lr g``: every parameter moves the same way (cosine of the signs 1), by different amounts
    (the cosine of the updates themselves is the ``|g|_1 / (sqrt(n) |g|_2)`` of the gradient, below 1)."""
    inputs = torch.randn(8, 3)
    moves = {}
    for optimizer in ("adam", "sgd"):
        crop = tiny_crop(strength=1.0)
        before = torch.cat([p.detach().flatten().clone() for p in crop.parameters()])
        adversary = crop.adversary(1e-2, optimizer=optimizer)
        cube_loss(*crop._reversed(inputs, 0)).backward()
        grad = torch.cat([p.grad.flatten().clone() for p in crop.parameters()])
        adversary.step(0)
        moves[optimizer] = torch.cat([p.detach().flatten() for p in crop.parameters()]) - before
    clear = grad.abs() > 1e-5  # both steps are well above float32 resolution there
    assert clear.float().mean() > 0.5
    adam, sgd = torch.sign(moves["adam"][clear]), torch.sign(moves["sgd"][clear])
    assert torch.equal(adam, sgd) and torch.equal(sgd, -torch.sign(grad[clear]))  # the cosine of the signs is 1
    assert float(torch.nn.functional.cosine_similarity(adam, sgd, dim=0)) == pytest.approx(1.0, abs=1e-6)
    g = grad[clear]
    cosine = torch.nn.functional.cosine_similarity(moves["adam"][clear], moves["sgd"][clear], dim=0)
    assert float(cosine) == pytest.approx(float(g.abs().sum() / (g.numel() ** 0.5 * g.norm())), rel=1e-3)
    assert float(cosine) < 0.99


def test_sgd_rate_leaves_lambda_to_the_gradient():
    crop = tiny_crop(strength=0.5, warmup_steps=10)
    adam, sgd = Adversary(crop, 1e-3), Adversary(crop, 1e-3, optimizer="sgd")
    assert adam.lr_at(4) == pytest.approx(1e-3 * 0.2) and sgd.lr_at(4) == pytest.approx(1e-3)
    assert isinstance(sgd.optimizer, torch.optim.SGD) and sgd.optimizer.defaults["momentum"] == 0.9
    assert isinstance(adam.optimizer, torch.optim.Adam)


# --- the disparity budget ----------------------------------------------------------------------
def adversarial_run(steps, **kwargs):
    """A generator trained to push its views apart (the loss it ascends is 1 - IoU); the IoUs ``(steps, B)``."""
    torch.manual_seed(3)
    crop = ParamCrop(SIZE, strength=40.0, **kwargs)
    adversary = crop.adversary(2.5e-4)
    ious = []
    for step in range(steps):
        c1, c2 = crop.sample_cubes(16, CPU, step)
        iou = view_iou(c1, c2)
        (1 - iou).mean().backward()
        adversary.step(step)
        ious.append(iou.detach())
        for cubes in (c1, c2):
            assert_cubes_inside(cubes.detach())
            assert (cubes[:, 3:5] >= 0.3 - 1e-6).all() and (cubes[:, 5] >= 0.5 - 1e-6).all()
    return torch.stack(ious), crop


def test_the_budget_holds_for_every_pair_where_the_views_would_fall_below_it():
    free, _ = adversarial_run(25)
    assert free[0].min() > 0.8 and free[-1].mean() < 0.5  # without a budget the adversary takes them below 0.6
    held, crop = adversarial_run(25, budget=0.6)
    assert (held >= 0.6 - 1e-6).all()
    assert ((held[-1] - 0.6).abs() < 1e-3).float().mean() > 0.5  # and the bound binds: most pairs sit on it
    assert crop.budget_at(10) == 0.6


def test_the_projection_moves_view_2_toward_view_1_along_their_segment():
    c1 = torch.tensor([[0.0, 0, 0, 0.5, 0.5, 0.5]]).repeat(3, 1)
    c2 = torch.tensor([[0.5, 0, 0, 0.5, 0.5, 0.5], [0.1, 0, 0, 0.5, 0.5, 0.5], [0.0, 0, 0, 0.4, 0.5, 0.5]])
    c2.requires_grad_()
    held = hold_budget(c1, c2, 0.5)
    value = held.detach()
    # pair 0: a shift s along x of a cube of side 1 keeps IoU (1 - s) / (1 + s) = 0.5 at s = 1/3
    assert float(value[0, 0]) == pytest.approx(1 / 3, abs=1e-5) and torch.equal(value[0, 1:], c1[0, 1:])
    assert torch.equal(value[1:], c2[1:].detach())  # already within the budget (IoU 0.82, 0.8): untouched
    t = budget_weight(c1, c2.detach(), 0.5)
    assert float(t[0]) == pytest.approx(2 / 3, abs=1e-5) and torch.equal(t[1:], torch.ones(2))
    held[:, 0].sum().backward()
    assert float(c2.grad[0, 0]) == pytest.approx(2 / 3, abs=1e-5)  # differentiable at the fixed weight
    assert float(c2.grad[1, 0]) == 1.0


def test_a_linear_budget_schedule_goes_from_1_to_the_budget_over_the_run_steps(workdir):
    crop = ParamCrop(SIZE, budget=0.6, budget_schedule="linear", steps=11)
    assert [crop.budget_at(s) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.8, 0.6, 0.6])
    c1, c2 = crop.sample_cubes(5, CPU, 0)
    assert torch.equal(c1, c2)  # a bound of 1: the two views are one cube
    c1, c2 = crop.sample_cubes(64, CPU, 5)
    assert (view_iou(c1, c2) >= 0.8 - 1e-6).all()
    with pytest.raises(ValueError, match="needs the total `steps`"):
        ParamCrop(SIZE, budget=0.6, budget_schedule="linear").budget_at(0)
    from paramcrop.train import Trainer

    linear = Trainer(TrainConfig().with_overrides({**TINY, "crop.budget": 0.6, "crop.budget_schedule": "linear"}),
                     workdir / "linear", progress=False)
    assert linear.crop.steps == 3 and linear.cfg.crop["steps"] == 3  # the run's steps, recorded
    constant = Trainer(TrainConfig().with_overrides({**TINY, "crop.budget": 0.6}), workdir / "c", progress=False)
    assert constant.cfg.crop.get("steps") is None  # no schedule to span: the config is left as given


# --- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, message", [
    (lambda: ParamCrop(SIZE, budget=0), r"budget must be a number in \(0, 1\], got 0"),
    (lambda: ParamCrop(SIZE, budget=1.2), r"budget must be a number in \(0, 1\], got 1.2"),
    (lambda: ParamCrop(SIZE, budget_schedule="cosine"), "budget_schedule must be one of constant, linear"),
    (lambda: ParamCrop(SIZE, steps=0), "steps must be an integer > 0"),
    (lambda: Adversary(ParamCrop(SIZE), 1e-3, optimizer="rmsprop"), "optimizer must be one of adam, sgd"),
    (lambda: create_crop("hardest", SIZE, candidates=1), "candidates must be an integer >= 2, got 1"),
])
def test_bad_values_name_the_key(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("sets, message", [
    (["crop.budget=1.5"], "crop: budget must be a number in (0, 1], got 1.5"),
    (["crop.budget=0"], "crop: budget must be a number in (0, 1], got 0"),
    (["crop.method=hardest", "crop.candidates=1"], "crop: candidates must be an integer >= 2, got 1"),
    (["optim.generator_optimizer=rmsprop"], "optim.generator_optimizer must be one of adam, sgd, got 'rmsprop'"),
])
def test_train_cli_refuses_bad_values_with_exit_2(workdir, monkeypatch, sets, message):
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setenv("PARAMCROP_CACHE", str(workdir / "cache"))  # refused before any data is built
    args = ["train", "--steps", "1"] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (workdir / "mlflow.db").exists() and not (workdir / "cache").exists()


# --- recorded, and kept apart by the analyses ---------------------------------------------------------
def test_the_options_are_in_the_parameterisation_tag_and_the_crop_labels():
    from analysis.groups import configurations
    from analysis.plots import crop_label
    from studies.tracking import run_tags

    def tag(**overrides):
        return run_tags(TrainConfig().with_overrides(overrides).flatten())[sinks.TAG_CROP_PARAMETERISATION]

    assert tag() == "spatiotemporal"  # the defaults say nothing
    assert tag(**{"crop.budget": 0.6}) == "spatiotemporal, budget 0.6"
    assert tag(**{"crop.budget": 0.6, "crop.budget_schedule": "linear", "optim.generator_optimizer": "sgd"}) == \
        "spatiotemporal, budget 0.6 linear, optimizer sgd"
    assert tag(**{"crop.method": "random", "optim.generator_optimizer": "sgd"}) == "spatiotemporal"  # no adversary
    assert crop_label("paramcrop", "1.0", "spatiotemporal", "noise", "joint", "fixed", "0.6", "constant", "sgd") == \
        "ParamCrop spatiotemporal, budget 0.6, optimizer sgd, λ=1.0"
    assert crop_label("hardest") == "Hardest views"

    import pandas as pd

    points = [{"crop.method": "paramcrop"}, {"crop.method": "paramcrop", "optim.generator_optimizer": "sgd"},
              {"crop.method": "paramcrop", "crop.budget": 0.6},
              {"crop.method": "random", "crop.area": [0.8, 1.0], "crop.duration": [1.0, 1.0]},
              {"crop.method": "hardest", "crop.candidates": 4}]
    rows = [{"run_id": f"{i}-{seed}", **{f"params.{k}": str(v) for k, v in
                                          TrainConfig().with_overrides({**p, "seed": seed}).flatten().items()}}
            for i, p in enumerate(points) for seed in (0, 1)]
    frame, _ = configurations(pd.DataFrame(rows))
    assert frame["config"].nunique() == 5 and (frame.groupby("config")["run_id"].count() == 2).all()  # never pooled
    assert set(frame["configuration"]) == {
        "ParamCrop spatiotemporal, λ=1.0", "ParamCrop spatiotemporal, optimizer sgd, λ=1.0",
        "ParamCrop spatiotemporal, budget 0.6, λ=1.0", "Random crop spatiotemporal (baseline)",
        "Hardest views spatiotemporal"}


def test_every_registered_crop_names_its_own_label():
    from analysis.plots import crop_label
    from paramcrop.crops import CROPS, method_label

    labels = {name: method_label(name) for name in CROPS.names()}
    assert all("LABEL" in vars(CROPS.get(name)) for name in CROPS.names())  # none inherits its parent's
    assert len(set(labels.values())) == len(labels)
    assert labels["paramcrop"] == "ParamCrop" and labels["cvrl"] == "CVRL crop"
    assert crop_label("random") == "Random crop (baseline)" and crop_label("matched") == "Matched random crop"
    assert crop_label("curriculum") == "Curriculum crop" and crop_label("replay") == "Replayed crop"
    assert crop_label("unregistered") == "unregistered"


# --- the adversary spec ----------------------------------------------------------------------------
def test_the_adversary_spec_holds_both_generators_at_the_budget_beside_hardest_frozen_and_matched():
    from studies.spec import load_spec

    spec = load_spec("adversary")
    spec.validate()
    assert spec.grid_size() == 25 and spec.seeds == [0, 1, 2, 3, 4]
    assert spec.objectives[0].metric == "eval/val/knn_top1" and spec.data == "synthetic"
    controls = load_spec("controls")
    assert spec.base_config() == controls.base_config()  # the controls' settings: 400 steps on the default
    built = {}
    for variant in spec.grid()["variant:crop"]:
        cfg, _ = spec.config_for({"variant:crop": variant})
        name, keys = cfg.component("crop")
        built[variant] = (create_crop(name, SIZE, **keys), cfg)
    budget = built["matched"][0].target_iou  # the random crop matched to the budget's IoU
    for optimizer in ("adam", "sgd"):
        crop, cfg = built[f"paramcrop-{optimizer}"]
        assert (crop.strength, crop.budget, cfg.optim.generator_optimizer) == (1.0, budget, optimizer)
        assert cfg.optim.generator_lr == (2.5e-4 if optimizer == "adam" else 5e-3)
    assert built["hardest"][0].candidates == 4 and built["hardest"][0].area == (0.3, 1.0)
    # the frozen generator and the matched crop are the controls' own configurations (the same trials, seed by seed)
    for label, theirs in (("paramcrop-l0", "paramcrop-l0"), ("matched", "matched-sweet")):
        assert built[label][1].flatten() == controls.config_for({"variant:crop": theirs})[0].flatten(), label
    assert [(c.baseline, c.against) for c in spec.compare] == [
        ("paramcrop-l0", ["paramcrop-adam", "paramcrop-sgd"]), ("matched", ["paramcrop-adam", "paramcrop-sgd", "hardest"])]
    for word in ("seeds [0, 1, 2, 3, 4]", "eval/knn_top1", "hardest", f"budget {budget}", "sgd", "25 trials",
                 "family of five"):
        assert word in " ".join(spec.description.split()), word
