"""Crop parameterisation: degrees of freedom, generator input, coupling, the adversary's
update, float32 cubes under autocast, and the own-loop example of docs/METHODS.md."""
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_DRAWS, TINY_SOURCE, assert_cubes_inside
from scipy import stats

from paramcrop import Adversary, ParamCrop, RandomCubicCrop, create_crop, parse_dof, view_iou
from paramcrop.crops.base import place_uniformly, sample_spatial_extents
from paramcrop.crops.dof import PARAMETERS, PRESETS
from paramcrop.crops.paramcrop import SUMMARY_GRID, clip_summary, squash
from paramcrop.geometry import center_distance

CPU = torch.device("cpu")
COUPLINGS = ("joint", "independent", "relative")
# raw output index (u_x, u_y, u_t, v_x, v_y, v_t) -> the parameter that reads it
RAW_PARAMETER = {0: "position_xy", 1: "position_xy", 2: "position_t", 3: "extent_xy", 4: "aspect", 5: "extent_t"}
ALL_DOFS = [*PRESETS, ["extent_xy"], ["position_t", "extent_xy", "aspect"]]


def _controlled(dof) -> set[str]:
    return set(PRESETS[dof] if isinstance(dof, str) else dof)


def _documented_fixed(cubes: torch.Tensor, dof, fixed=(0.8, 0.75)) -> None:
    """The uncontrolled parameters of ``cubes (B, 6)`` are exactly what dof.py documents."""
    c = _controlled(dof)
    if "position_xy" not in c:
        assert torch.equal(cubes[:, :2], torch.zeros_like(cubes[:, :2]))
    if "position_t" not in c:
        assert torch.equal(cubes[:, 2], torch.zeros_like(cubes[:, 2]))
    if "extent_xy" not in c:
        expected = fixed[0] if "position_xy" in c else 1.0
        assert torch.equal(cubes[:, 3:5], torch.full_like(cubes[:, 3:5], expected))
    elif "aspect" not in c:
        assert torch.equal(cubes[:, 3], cubes[:, 4])
    if "extent_t" not in c:
        expected = fixed[1] if "position_t" in c else 1.0
        assert torch.equal(cubes[:, 5], torch.full_like(cubes[:, 5], expected))


def _controlled_vary(cubes: torch.Tensor, dof) -> None:
    c = _controlled(dof)
    spread = cubes.std(0)
    columns = {"position_xy": [0, 1], "position_t": [2], "extent_xy": [3], "extent_t": [5]}
    for name, cols in columns.items():
        if name in c:
            assert (spread[cols] > 1e-3).all(), (name, spread)
    if "aspect" in c:
        assert (cubes[:, 3] - cubes[:, 4]).abs().max() > 1e-3


def _spread_crop(dof, coupling="joint", **kw) -> ParamCrop:
    torch.manual_seed(0)
    return ParamCrop((4, 8, 8), dof=dof, coupling=coupling, init_std=1.0, **kw)  # wide: the views vary visibly


# --- defaults reproduce the crops as they were ------------------------------------------
def test_spatiotemporal_default_reproduces_the_original_cubes_bit_for_bit():
    # the original algorithms, written out: RandomResizedCrop sizes placed uniformly; squash(generator(noise))
    def old_random_view(n):
        hxy = sample_spatial_extents(n, (0.3, 1.0), (0.5, 2.0), CPU)
        ht = torch.empty(n, 1).uniform_(0.5, 1.0)
        half = torch.cat([hxy, ht], -1)
        return torch.cat([place_uniformly(half), half], -1)

    for dof in ({}, {"dof": "spatiotemporal"}, {"dof": list(PARAMETERS)}):
        crop = RandomCubicCrop((4, 8, 8), **dof)
        torch.manual_seed(11)
        new = crop.sample_cubes(64, CPU, 0)
        torch.manual_seed(11)
        old = (old_random_view(64), old_random_view(64))
        assert all(torch.equal(a, b) for a, b in zip(new, old))

        torch.manual_seed(12)
        learned = ParamCrop((4, 8, 8), **dof)
        torch.manual_seed(13)
        new = learned.sample_cubes(64, CPU, 0)
        torch.manual_seed(13)
        old = squash(learned.generator(torch.randn(64, 16)).view(-1, 2, 6), 0.3, 1.0, 0.5)
        assert torch.equal(new[0], old[:, 0]) and torch.equal(new[1], old[:, 1])


# --- degrees of freedom --------------------------------------------------------------------
@pytest.mark.parametrize("dof", ALL_DOFS, ids=str)
@pytest.mark.parametrize("method", ["paramcrop", "random"])
def test_uncontrolled_parameters_are_as_documented_and_controlled_ones_vary(method, dof):
    crop = _spread_crop(dof) if method == "paramcrop" else RandomCubicCrop((4, 8, 8), dof=dof)
    torch.manual_seed(1)
    c1, c2 = crop.sample_cubes(512, CPU, 0)
    for cubes in (c1, c2):
        assert_cubes_inside(cubes)
        _documented_fixed(cubes, dof)
        _controlled_vary(cubes, dof)
    controlled = _controlled(dof)
    if not controlled & {"extent_t", "position_t"}:  # e.g. spatial: the views agree in time
        assert torch.equal(view_iou(c1, c2, axes="t"), torch.ones(512))
        assert torch.equal(center_distance(c1, c2, axes="t"), torch.zeros(512))
    if not controlled & {"extent_xy", "position_xy"}:  # temporal: the views agree in space
        assert torch.equal(view_iou(c1, c2, axes="xy"), torch.ones(512))
        assert torch.equal(center_distance(c1, c2, axes="xy"), torch.zeros(512))


def test_fixed_extent_is_configurable_for_position():
    crop = RandomCubicCrop((4, 8, 8), dof="position", fixed_extent_xy=0.5, fixed_extent_t=0.6)
    c1, _ = crop.sample_cubes(64, CPU, 0)
    _documented_fixed(c1, "position", fixed=(0.5, 0.6))
    assert c1[:, 0].abs().max() <= 0.5 and c1[:, 2].abs().max() <= 0.4 + 1e-6


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("dof", ALL_DOFS, ids=str)
def test_gradient_reaches_exactly_the_raw_outputs_of_the_controlled_parameters(dof, coupling):
    crop = _spread_crop(dof, coupling)
    torch.manual_seed(2)
    raw = torch.randn(16, 2, 6, requires_grad=True)
    (crop.cubes_from_raw(raw) * torch.randn(16, 2, 6)).sum().backward()
    reached = (raw.grad != 0).any(0)  # (2, 6): which raw outputs got a gradient
    controlled = _controlled(dof)
    expected = torch.tensor([RAW_PARAMETER[i] in controlled for i in range(6)])
    assert torch.equal(reached, expected.expand(2, 6)), (reached, expected)


def test_generator_weights_of_uncontrolled_outputs_get_no_gradient_end_to_end():
    crop = _spread_crop("spatial")
    torch.manual_seed(3)
    views = crop(torch.rand(4, 3, 8, 16, 16) * 255)
    (views.x1 - views.x2).pow(2).mean().backward()
    rows = crop.generator[-1].weight.grad.abs().sum(1).view(2, 6)  # one row per raw output
    assert (rows[:, [0, 1, 3, 4]] > 0).all()
    assert torch.equal(rows[:, [2, 5]], torch.zeros(2, 2))


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("dof", ALL_DOFS, ids=str)
def test_cubes_valid_and_in_range_for_extreme_raw_outputs(dof, coupling):
    crop = ParamCrop((4, 8, 8), dof=dof, coupling=coupling, s_min=0.4, s_max=0.9, t_min=0.6)
    torch.manual_seed(4)
    raw = torch.randn(2048, 2, 6).sign() * 1e4
    raw[:4] = torch.tensor([1e4, -1e4, 1e4, -1e4, 1e4, -1e4])
    cubes = crop.cubes_from_raw(raw)
    assert_cubes_inside(cubes)
    controlled = _controlled(dof)
    for k in range(2):
        _documented_fixed(cubes[:, k], dof)
        if "extent_xy" in controlled:
            assert cubes[:, k, 3:5].min() >= 0.4 and cubes[:, k, 3:5].max() <= 0.9
        if "extent_t" in controlled:
            assert cubes[:, k, 5].min() >= 0.6 and cubes[:, k, 5].max() <= 1.0


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_uncontrolled_random_draws_the_rest_as_the_random_crop_does(coupling):
    crop = _spread_crop("spatial", coupling, uncontrolled="random", s_min=0.4, s_max=0.9)
    torch.manual_seed(18)
    raw = torch.randn(3000, 2, 6, requires_grad=True)
    cubes = crop.cubes_from_raw(raw)
    assert_cubes_inside(cubes)
    ht, ut = cubes[..., 5].detach(), cubes[..., 2].detach() / (1 - cubes[..., 5].detach())
    for k in range(2):  # the random crop's defaults: duration U(0.5, 1), uniform placement
        assert stats.kstest(ht[:, k].numpy(), "uniform", args=(0.5, 0.5)).pvalue > 1e-3
        assert stats.kstest(ut[:, k].numpy(), "uniform", args=(-1.0, 2.0)).pvalue > 1e-3
    assert not torch.equal(ht[:, 0], ht[:, 1])  # drawn per view
    assert cubes[..., 3:5].min() >= 0.4 and cubes[..., 3:5].max() <= 0.9  # the box is still the learned one
    (cubes * torch.randn_like(cubes)).sum().backward()
    reached = (raw.grad != 0).any(0)
    assert torch.equal(reached, torch.tensor([True, True, False, True, True, False]).expand(2, 6))


# --- generator input ---------------------------------------------------------------------
def test_none_input_gives_one_learned_pair_of_cubes_for_the_batch():
    torch.manual_seed(5)
    crop = ParamCrop((4, 8, 8), generator_input="none", init_std=1.0)
    c1, c2 = crop.sample_cubes(6, CPU, 0)
    assert torch.equal(c1, c1[:1].expand(6, -1)) and torch.equal(c2, c2[:1].expand(6, -1))
    assert not torch.equal(c1[0], c2[0])
    torch.manual_seed(99)  # no randomness is used
    assert torch.equal(crop.sample_cubes(6, CPU, 1)[0], c1)
    (c1.sum() + c2.sum()).backward()
    assert crop.code.grad is not None and crop.code.grad.abs().sum() > 0  # the code is learned


def test_clip_summary_matches_a_naive_reference_and_changes_the_cubes():
    torch.manual_seed(6)
    clips = torch.randint(0, 256, (3, 3, 8, 16, 16), dtype=torch.uint8)
    x = clips.double() / 255
    gt, gh, gw = SUMMARY_GRID
    blocks = x.view(3, 3, gt, 8 // gt, gh, 16 // gh, gw, 16 // gw).mean((3, 5, 7)).flatten(1)
    reference = torch.cat([blocks, x.flatten(2).std(-1)], 1)
    torch.testing.assert_close(clip_summary(clips).double(), reference, rtol=1e-5, atol=1e-6)

    crop = ParamCrop((4, 8, 8), generator_input="clip", init_std=1.0)
    torch.manual_seed(7)
    a = crop(clips).cubes1
    torch.manual_seed(7)  # same noise, other clips: other cubes
    b = crop(255 - clips).cubes1
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs the clips"):
        crop.sample_cubes(3, CPU, 0)


# --- coupling -----------------------------------------------------------------------------
def test_independent_generators_do_not_affect_each_other():
    torch.manual_seed(8)
    crop = ParamCrop((4, 8, 8), coupling="independent", init_std=1.0)
    torch.manual_seed(9)
    before = crop.sample_cubes(32, CPU, 0)
    with torch.no_grad():
        for p in crop.generator[0].parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(9)
    after = crop.sample_cubes(32, CPU, 0)
    assert torch.equal(before[1], after[1])
    assert not torch.allclose(before[0], after[0])


def test_relative_view_two_stays_inside_and_is_view_one_at_zero_offset():
    crop = ParamCrop((4, 8, 8), coupling="relative")
    torch.manual_seed(10)
    raw = torch.randn(4096, 2, 6) * 1e4
    cubes = crop.cubes_from_raw(raw)
    assert_cubes_inside(cubes[:, 1])
    raw[:, 1] = 0.0
    cubes = crop.cubes_from_raw(raw)
    assert torch.equal(cubes[:, 0], cubes[:, 1])
    # an offset moves view 2 away from view 1 in the direction of its sign
    raw = torch.zeros(1, 2, 6)
    raw[0, 1, 0] = 1.0
    cubes = crop.cubes_from_raw(raw)
    assert cubes[0, 1, 0] > cubes[0, 0, 0]


# --- the random crop's distributions -------------------------------------------------------
@pytest.mark.parametrize("dof", ALL_DOFS, ids=str)
def test_random_crop_controlled_parameters_follow_the_documented_distributions(dof):
    # area 0.1-0.25 and aspect 0.5-2 never need clamping (a * r <= 0.5), so hx * hy is the area
    crop = RandomCubicCrop((4, 8, 8), area=(0.1, 0.25), aspect=(0.5, 2.0), duration=(0.4, 0.9), dof=dof)
    torch.manual_seed(14)
    cubes = torch.cat(crop.sample_cubes(3000, CPU, 0)).double().numpy()
    c = _controlled(dof)
    samples = {}
    if "extent_xy" in c:
        samples["area"] = (cubes[:, 3] * cubes[:, 4], (0.1, 0.15))
    if "aspect" in c:
        samples["log aspect"] = (torch.tensor(cubes[:, 3] / cubes[:, 4]).log().numpy(),
                                 (math.log(0.5), math.log(4.0)))
    if "extent_t" in c:
        samples["duration"] = (cubes[:, 5], (0.4, 0.5))
    if "position_xy" in c:
        samples["unit x"] = (cubes[:, 0] / (1 - cubes[:, 3]), (-1.0, 2.0))
        samples["unit y"] = (cubes[:, 1] / (1 - cubes[:, 4]), (-1.0, 2.0))
    if "position_t" in c:
        samples["unit t"] = (cubes[:, 2] / (1 - cubes[:, 5]), (-1.0, 2.0))
    assert samples
    for name, (x, (loc, scale)) in samples.items():
        assert stats.kstest(x, "uniform", args=(loc, scale)).pvalue > 1e-3, name
        # the same test rejects a slightly wrong distribution: it can fail
        assert stats.kstest(x, "uniform", args=(loc + 0.1 * scale, scale)).pvalue < 1e-3, name


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("value,message", [
    ("bogus", "unknown dof preset 'bogus'; valid presets: spatiotemporal, spatial, temporal, scale, position"),
    (["extent_xy", "size"], "unknown parameter.*'size'.*extent_xy, aspect, position_xy, extent_t, position_t"),
    ([], "empty"),
    (["aspect"], "'aspect' needs 'extent_xy'"),
])
@pytest.mark.parametrize("method", ["paramcrop", "random"])
def test_bad_dof_is_refused_listing_the_valid_values(method, value, message):
    with pytest.raises(ValueError, match=message):
        create_crop(method, (4, 8, 8), dof=value)


@pytest.mark.parametrize("kwargs,message", [
    ({"generator_input": "image"}, "unknown generator_input 'image'; valid: noise, none, clip"),
    ({"coupling": "loose"}, "unknown coupling 'loose'; valid: joint, independent, relative"),
    ({"uncontrolled": "free"}, "unknown uncontrolled 'free'; valid: fixed, random"),
    ({"fixed_extent_t": 1.5}, "fixed_extent_t must be a half-extent in"),
    ({"dof_preset": "spatial"},
     "valid keys: .*dof, fixed_extent_xy, fixed_extent_t, uncontrolled, generator_input, coupling"),
])
def test_bad_paramcrop_parameterisation_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_crop("paramcrop", (4, 8, 8), **kwargs)


def test_train_cli_with_a_bogus_dof_exits_2(workdir):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["train", "--set", "crop.dof=bogus", "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert "valid presets: spatiotemporal, spatial" in " ".join(result.output.split())
    assert not (workdir / "mlflow.db").exists()


def test_config_accepts_the_keys_and_logs_them():
    from paramcrop.config import TrainConfig
    from studies.tracking import run_tags

    cfg = TrainConfig().with_overrides({"crop.dof": ["extent_t", "position_t"], "crop.coupling": "relative"})
    cfg.validate()
    flat = cfg.flatten()
    assert flat["crop.dof"] == ["extent_t", "position_t"] and flat["crop.generator_input"] == "noise"
    assert run_tags(flat)["paramcrop.crop_parameterisation"] == "temporal, coupling relative"
    assert parse_dof(flat["crop.dof"]).name == "temporal"


def test_analysis_labels_read_well():
    from analysis.plots import crop_label

    assert crop_label("paramcrop", 1, "spatial") == "ParamCrop spatial, λ=1"
    assert crop_label("random", None, "temporal") == "Random crop temporal (baseline)"
    assert crop_label("paramcrop", 1, "spatiotemporal", "none", "joint") == \
        "ParamCrop spatiotemporal, input none, λ=1"
    assert crop_label("paramcrop", 1, "['extent_xy', 'position_xy']") == "ParamCrop extent_xy+position_xy, λ=1"
    assert crop_label("paramcrop", 1, "spatial", "noise", "joint", "random") == \
        "ParamCrop spatial, uncontrolled random, λ=1"
    assert crop_label("paramcrop", 0.5) == "ParamCrop, λ=0.5"  # runs without crop.dof read as before
    assert crop_label("random") == "Random crop (baseline)"


# --- the adversary's update --------------------------------------------------------------
@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
def test_adversary_steps_at_lr_times_lambda_and_clears_its_gradients(strength):
    torch.manual_seed(15)
    crop = ParamCrop((4, 8, 8), strength=strength)
    adversary = crop.adversary(lr=1e-3)
    before = [p.detach().clone() for p in crop.parameters()]
    net = torch.nn.Conv3d(3, 2, 3)  # something to train at lambda 0 too
    views = crop(torch.rand(4, 3, 8, 16, 16) * 255)
    (net(views.x1) - net(views.x2)).pow(2).mean().backward()
    grads = [None if p.grad is None else p.grad.clone() for p in crop.parameters()]
    adversary.step(0)
    assert all(p.grad is None for p in crop.parameters())
    for p, b, g in zip(crop.parameters(), before, grads):
        if strength == 0:
            assert g is None and torch.equal(p, b)
        else:  # Adam's first step: -lr * g / (|g| + eps), i.e. lr x lambda per element with a clear gradient
            expected = b - 1e-3 * strength * g / (g.abs() + 1e-8)
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_a_crop_that_learns_nothing_has_a_no_op_adversary():
    adversary = create_crop("random", (4, 8, 8)).adversary(lr=1e-3)
    assert isinstance(adversary, Adversary) and adversary.optimizer is None
    adversary.step(0)


# --- precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("generator_input", ["noise", "none", "clip"])
def test_generator_and_cubes_stay_float32_under_bf16_autocast(generator_input, coupling):
    clips = torch.randint(0, 256, (2, 3, 8, 16, 16), dtype=torch.uint8)
    torch.manual_seed(16)
    crop = ParamCrop((4, 8, 8), generator_input=generator_input, coupling=coupling)
    torch.manual_seed(17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = crop(clips, 0)
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16  # autocast is on here
    for t in (views.cubes1, views.cubes2, views.x1, views.x2):
        assert t.dtype == torch.float32
    torch.manual_seed(17)
    reference = crop(clips, 0)
    torch.testing.assert_close(views.cubes1, reference.cubes1, rtol=0, atol=0)  # the same cubes as without autocast


# --- docs/METHODS.md's own-loop example, as it stands -----------------------------------------
def test_methods_own_loop_example_runs_and_trains_the_generator(monkeypatch):
    text = (Path(__file__).parent.parent / "docs" / "METHODS.md").read_text()
    block = re.search(r"<!-- own-loop example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/METHODS.md lost its own-loop example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 16
    moved = []
    original = Adversary.step

    def recording_step(self, step):
        before = [p.detach().clone() for p in self.params]
        original(self, step)
        moved.append(any(not torch.equal(a, p) for a, p in zip(before, self.params)))

    monkeypatch.setattr(Adversary, "step", recording_step)
    namespace: dict = {}
    torch.manual_seed(17)
    exec(compile(code, "docs/METHODS.md", "exec"), namespace)
    assert moved == [True, True, True]  # every adversary step changed the generator
    views = namespace["views"]
    assert views.x1.shape == (8, 3, 4, 16, 16)
    assert torch.equal(view_iou(views.cubes1, views.cubes2, axes="t"), torch.ones(8))  # dof="spatial"


# --- searchable: specs, paramcrop train -----------------------------------------------------
def test_parameterisation_spec_crosses_dof_with_learned_and_random_plus_the_learned_variants():
    from studies.spec import load_spec

    spec = load_spec("parameterisation")
    spec.validate()
    assert spec.grid_size() == 20 and spec.seeds == [0, 1]
    crops = {}
    for variant in spec.grid()["variant:crop"]:
        cfg, _ = spec.config_for({"variant:crop": variant})
        name, params = cfg.component("crop")
        crops[variant] = create_crop(name, (4, 8, 8), **params)
        assert cfg.steps == 200 and cfg.augment["flip_p"] == 0.0 and cfg.eval.every == 50
    for dof in ("spatial", "temporal", "spatiotemporal"):
        assert crops[f"paramcrop-{dof}"].dof.name == dof and crops[f"paramcrop-{dof}"].strength == 1.0
        assert isinstance(crops[f"random-{dof}"], RandomCubicCrop) and crops[f"random-{dof}"].dof.name == dof
    assert crops["paramcrop-input-none"].generator_input == "none"
    assert crops["paramcrop-input-clip"].generator_input == "clip"
    assert crops["paramcrop-independent"].coupling == "independent"
    assert crops["paramcrop-relative"].coupling == "relative"




def test_training_with_spatial_dof_logs_whole_clip_temporal_views_at_every_step(workdir):
    from paramcrop import sinks
    from paramcrop.config import TrainConfig
    from paramcrop.keys import parse_override
    from paramcrop.train import train

    overrides = dict(parse_override(o) for o in ("crop.dof=spatial", "crop.coupling=relative"))
    cfg = TrainConfig().with_overrides({
        "data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1, "data.size": 32, "view.frames": 8,
        "view.size": 32, "batch_size": 8, "steps": 4, "log_every": 1, "visualize_at": 0, "eval.linear": False,
        "eval.retrieval": False, "eval.draw_per_class": TINY_DRAWS, "eval.knn_k": 5, **overrides})
    sink = sinks.MemorySink()
    train(cfg, sink, workdir / "run", progress=False)
    assert [v for _, v in sink.series(sinks.VIEW_IOU_T)] == [1.0] * 4
    assert [v for _, v in sink.series(sinks.VIEW_CENTER_DISTANCE_T)] == [0.0] * 4
    assert all(v < 1.0 for _, v in sink.series(sinks.VIEW_IOU_XY))  # the spatial boxes do differ
    assert sink.params["crop.dof"] == "spatial" and sink.params["crop.coupling"] == "relative"
