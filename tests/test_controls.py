"""The controls: curriculum, replay, matched random crop, the generator's schedule."""
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.crops import create_crop
from paramcrop.geometry import view_iou
from conftest import TINY_DRAWS

SIZE = (4, 16, 16)


# --- curriculum ------------------------------------------------------------------------------
def test_curriculum_linear_ranges_at_first_middle_last_step():
    crop = create_crop("curriculum", SIZE, steps=101, area=(0.3, 1.0), duration=(0.5, 1.0),
                       start_area=(0.9, 1.0), start_duration=(0.9, 1.0))
    # p = s / (steps - 1): 0, 0.5, 1 at steps 0, 50, 100; hand-computed ends
    expected = {0: {"area": (0.9, 1.0), "duration": (0.9, 1.0)},
                50: {"area": (0.6, 1.0), "duration": (0.7, 1.0)},
                100: {"area": (0.3, 1.0), "duration": (0.5, 1.0)}}
    for step, ranges in expected.items():
        got = crop.ranges_at(step)
        for key, (lo, hi) in ranges.items():
            assert got[key] == pytest.approx((lo, hi), abs=1e-12), (step, key)
        assert got["aspect"] == pytest.approx((0.5, 2.0))  # start_aspect null: the end's throughout
    assert crop.ranges_at(500)["area"] == pytest.approx((0.3, 1.0))  # clamped past the end


def test_curriculum_cosine_and_step_schedules():
    cosine = create_crop("curriculum", SIZE, steps=5, schedule="cosine", start_area=(0.9, 1.0), area=(0.1, 1.0))
    # p = 1/4 at step 1: w = (1 - cos(pi/4)) / 2 = 0.1464...
    w = (1 - math.cos(math.pi / 4)) / 2
    assert cosine.ranges_at(1)["area"][0] == pytest.approx(0.9 - 0.8 * w)
    step = create_crop("curriculum", SIZE, steps=9, schedule="step", stages=4, start_area=(0.9, 1.0), area=(0.3, 1.0))
    # p = s/8; stage floor(4p): steps 0-1 -> 0, 2-3 -> 1/3, 4-5 -> 2/3, 6-8 -> 1
    lows = [step.ranges_at(s)["area"][0] for s in range(9)]
    assert lows == pytest.approx([0.9, 0.9, 0.7, 0.7, 0.5, 0.5, 0.3, 0.3, 0.3])


def test_curriculum_sampled_areas_lie_in_the_ranges_in_force():
    crop = create_crop("curriculum", SIZE, steps=11, aspect=(1.0, 1.0), start_area=(0.9, 1.0), area=(0.2, 0.5),
                       start_duration=(0.8, 1.0), duration=(0.3, 0.4))
    torch.manual_seed(0)
    for step in (0, 5, 10):
        ranges = crop.ranges_at(step)
        c1, c2 = crop.sample_cubes(4000, torch.device("cpu"), step)
        for cubes in (c1, c2):
            area = cubes[:, 3] * cubes[:, 4]  # half-extent = fraction of the side, so hx * hy = area fraction
            assert area.min() >= ranges["area"][0] - 1e-6 and area.max() <= ranges["area"][1] + 1e-6
            assert cubes[:, 5].min() >= ranges["duration"][0] - 1e-6
            assert cubes[:, 5].max() <= ranges["duration"][1] + 1e-6
            # the draws fill the range: both ends are approached
            lo, hi = ranges["area"]
            assert area.min() < lo + 0.02 * (hi - lo) + 1e-3 and area.max() > hi - 0.02 * (hi - lo) - 1e-3


def test_curriculum_steps_filled_from_the_run_and_bad_values_refused(workdir):
    from paramcrop.train import Trainer

    cfg = TrainConfig.from_dict({**TINY, "crop": {"method": "curriculum"}, "steps": 7})
    trainer = Trainer(cfg, workdir / "run", progress=False)
    assert trainer.crop.steps == 7 and trainer.cfg.crop["steps"] == 7
    with pytest.raises(ValueError, match="schedule"):
        create_crop("curriculum", SIZE, schedule="exp")
    with pytest.raises(ValueError, match="needs its total `steps`"):
        create_crop("curriculum", SIZE).ranges_at(0)


# --- generator snapshots and replay ------------------------------------------------------------
TINY = {"steps": 6, "batch_size": 4, "device": "cpu", "log_every": 1, "visualize_at": 0,
        "data": {"frames": 8, "size": 32}, "view": {"frames": 4, "size": 16},
        "eval": {"linear": False, "retrieval": False, "draw_per_class": TINY_DRAWS},
        "crop": {"method": "paramcrop", "strength": 1.0}}


def _recorded_run(cfg, run_dir, inner=lambda crop: crop):
    """Train ``cfg``; returns (trainer, sink, {step: (cubes1, cubes2)}, {step: generator inputs})."""
    from paramcrop.sinks import MemorySink
    from paramcrop.train import Trainer

    sink = MemorySink()
    trainer = Trainer(cfg, run_dir, sink=sink, progress=False)
    cubes, inputs = {}, {}
    step_fn, generator = trainer.train_step, inner(trainer.crop)
    inputs_fn = generator.inputs

    def train_step(clips):
        out = step_fn(clips)
        cubes[trainer.step] = (out[2].cubes1.detach().clone(), out[2].cubes2.detach().clone())
        return out

    def record_inputs(*args, **kwargs):
        x = inputs_fn(*args, **kwargs)
        inputs[trainer.step] = x.detach().clone()
        return x

    trainer.train_step, generator.inputs = train_step, record_inputs
    trainer.fit()
    return trainer, sink, cubes, inputs


def test_snapshots_are_saved_and_logged_every_n_steps(workdir):
    cfg = TrainConfig.from_dict({**TINY, "snapshot_every": 4})
    _, sink, _, _ = _recorded_run(cfg, workdir / "ref")
    files = sorted(p.name for p in (workdir / "ref" / "generator-snapshots").glob("*.pt"))
    assert files == ["step_000000.pt", "step_000004.pt"]
    logged = sorted(p.name for p, folder in sink.artifacts if folder == "generator-snapshots")
    assert logged == files
    snap = torch.load(workdir / "ref" / "generator-snapshots" / "step_000004.pt", weights_only=True)
    assert snap["step"] == 4 and snap["crop"]["method"] == "paramcrop" and snap["crop"]["strength"] == 1.0


def test_replay_reproduces_the_reference_cubes_at_and_between_snapshots(workdir):
    from paramcrop.crops.replay import load_snapshots

    for every in (1, 2):
        ref_cfg = TrainConfig.from_dict({**TINY, "snapshot_every": every})
        _, _, ref_cubes, ref_inputs = _recorded_run(ref_cfg, workdir / f"ref{every}")
        replay_cfg = ref_cfg.with_overrides({"crop.method": "replay", "crop.source": str(workdir / f"ref{every}")})
        replay, sink, cubes, inputs = _recorded_run(replay_cfg, workdir / f"replay{every}", inner=lambda c: c.inner)
        assert replay.gen_optimizer is None and not list(replay.crop.generator_parameters())
        assert all(s == 0.0 for _, s in sink.series(sinks.TRAIN_STRENGTH))
        assert not (workdir / f"replay{every}" / "generator-snapshots").exists()
        snapshots = {s["step"]: s for s in load_snapshots(workdir / f"ref{every}")}
        for step in range(6):
            assert torch.equal(inputs[step], ref_inputs[step]), step  # the same noise, step for step
            if step in snapshots:  # the generator that cut the reference's views at this step
                torch.testing.assert_close(cubes[step], ref_cubes[step], rtol=0, atol=1e-6)
            else:  # between snapshots: the latest one before, on the same noise (not the moved generator)
                fresh = create_crop("paramcrop", SIZE, **{k: v for k, v in snapshots[step - 1]["crop"].items()
                                                           if k != "method"})
                fresh.load_state_dict(snapshots[step - 1]["state"])
                with torch.no_grad():
                    expected = fresh.generate(ref_inputs[step])
                torch.testing.assert_close(cubes[step], (expected[:, 0], expected[:, 1]), rtol=0, atol=1e-6)
                assert not torch.allclose(cubes[step][0], ref_cubes[step][0], atol=1e-7)  # the reference moved on


def test_replay_source_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs crop.source"):
        create_crop("replay", SIZE)
    with pytest.raises(ValueError, match="holds no generator snapshots"):
        create_crop("replay", SIZE, source=str(tmp_path))
    unresolved = create_crop("replay", SIZE, source="runs:/abc")
    with pytest.raises(ValueError, match="resolves it into a folder"):
        unresolved.sample_cubes(2, torch.device("cpu"), 0)


# --- replay references in a study --------------------------------------------------------------
def _replay_spec(**extra):
    from conftest import TINY_SOURCE
    from test_studies import TINY_CONFIG

    spec = {"name": "replay-study", "data": TINY_SOURCE, "config": dict(TINY_CONFIG),
            "search_space": {"crop": {"type": "variants", "choices": {
                "replay": {"crop.method": "replay", "crop.source": "trial:paramcrop"},
                "paramcrop": {"crop.method": "paramcrop", "crop.strength": 1.0}}}},
            "seeds": [0, 1], "sampler": "grid"}
    spec.update(extra)
    return spec


def test_grid_sampler_runs_replay_points_last():
    from studies.replay import grid_sampler
    from studies.spec import StudySpec

    for seed in range(6):
        spec = StudySpec.from_dict(_replay_spec(sampler={"type": "grid", "seed": seed}))
        sampler = grid_sampler(spec)
        points = [dict(zip(sampler._param_names, p)) for p in sampler._all_grids]
        assert sorted(map(str, points)) == sorted(
            str({"seed": s, "variant:crop": v}) for s in (0, 1) for v in ("replay", "paramcrop"))
        assert [p["variant:crop"] for p in points] == ["paramcrop", "paramcrop", "replay", "replay"]


def test_replay_references_are_checked():
    from studies.replay import check_replay_references
    from studies.spec import StudySpec

    bad = _replay_spec()
    bad["search_space"]["crop"]["choices"]["replay"]["crop.source"] = "trial:nope"
    with pytest.raises(ValueError, match="must name another variant"):
        check_replay_references(StudySpec.from_dict(bad))
    with pytest.raises(ValueError, match="needs sampler: grid"):
        check_replay_references(StudySpec.from_dict(_replay_spec(sampler="random", n_trials=2)))


def test_a_study_replays_its_own_reference_trial_of_the_same_seed(workdir):
    import optuna
    from mlflow.tracking import MlflowClient

    from studies.replay import TAG_REPLAY_OF, TAG_REPLAY_SOURCE, resolve_replay_source
    from test_studies import run_cli, study_and_runs, write_spec

    spec_path = write_spec(workdir / "replay.yaml", _replay_spec())
    result = run_cli("study", "run", str(spec_path), "--no-progress")
    assert result.exit_code == 0, result.output
    study, client, runs = study_and_runs("replay-study", workdir)
    by_id = {r.info.run_id: r for r in runs}
    trials = {(t.params["variant:crop"], t.params["seed"]): t for t in study.trials}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) and len(trials) == 4
    for seed in (0, 1):
        ref, replay = trials["paramcrop", seed], trials["replay", seed]
        assert ref.number < replay.number
        ref_run, replay_run = by_id[ref.user_attrs["mlflow_run_id"]], by_id[replay.user_attrs["mlflow_run_id"]]
        assert replay_run.data.tags[TAG_REPLAY_OF] == ref_run.info.run_id
        folder = Path("paramcrop-runs") / "replay-study" / f"trial-{ref.number:04d}" / "generator-snapshots"
        assert replay_run.data.tags[TAG_REPLAY_SOURCE] == str(folder)
        assert replay_run.data.params["crop.source"] == "trial:paramcrop"  # as the spec says, for every seed
        written = yaml.safe_load((Path("paramcrop-runs") / "replay-study" / f"trial-{replay.number:04d}" /
                                  "config.yaml").read_text())
        assert written["crop"]["source"] == str(folder)
        assert {a.path for a in client.list_artifacts(ref_run.info.run_id, "generator-snapshots")} == {
            "generator-snapshots/step_000000.pt"}
        # the same seed: the same noise through the same (step-0) generator at step 0
        iou = [client.get_metric_history(r.info.run_id, "view/iou") for r in (ref_run, replay_run)]
        assert [m.value for m in iou[0] if m.step == 0] == pytest.approx([m.value for m in iou[1] if m.step == 0])
    # runs:/<id>: the run's snapshots, downloaded
    from paramcrop.config import TrainConfig as Config
    from studies.spec import StudySpec

    ref_id = trials["paramcrop", 0].user_attrs["mlflow_run_id"]
    cfg = Config.from_dict({"crop": {"method": "replay", "source": f"runs:/{ref_id}"}})
    resolved, tags = resolve_replay_source(cfg, StudySpec.from_dict(_replay_spec()), None,
                                           MlflowClient(os.environ["MLFLOW_TRACKING_URI"]), Path("paramcrop-runs"))
    assert tags == {TAG_REPLAY_OF: ref_id, TAG_REPLAY_SOURCE: resolved.crop["source"]}
    assert sorted(p.name for p in Path(resolved.crop["source"]).glob("*.pt")) == ["step_000000.pt"]


# --- the random crop matched to a reference disparity -------------------------------------------
def _mean_iou(crop, n=200_000, seed=7):
    """An independent estimate: other draws, ten times as many pairs as the matching used."""
    torch.manual_seed(seed)
    c1, c2 = crop.sample_cubes(n, torch.device("cpu"), 0)
    return view_iou(c1, c2).mean().item()


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_matched_crop_reaches_the_target_mean_iou(target):
    crop = create_crop("matched", SIZE, iou=target)
    assert abs(_mean_iou(crop) - target) < 0.01
    assert crop.area == (crop.lower, 1.0) and crop.duration == (crop.lower, 1.0)


def test_matched_crop_to_paramcrop_initial_views():
    torch.manual_seed(11)
    reference = create_crop("paramcrop", SIZE)  # other initial weights than the matching's: the init is what counts
    target = _mean_iou(reference, seed=3)
    matched = create_crop("matched", SIZE, iou="paramcrop-init")
    assert abs(_mean_iou(matched) - target) < 0.01
    assert _mean_iou(create_crop("random", SIZE)) < target - 0.3  # the plain random crop is far harder


def test_matched_crop_refuses_unreachable_targets():
    with pytest.raises(ValueError, match="outside the mean view IoU"):
        create_crop("matched", SIZE, iou=0.01)
    with pytest.raises(ValueError, match="paramcrop-init"):
        create_crop("matched", SIZE, iou="cvrl")


# --- the generator's schedule ---------------------------------------------------------------------
def test_generator_schedules_against_hand_computed_rates():
    from paramcrop.crops.adversary import Adversary

    crop = create_crop("paramcrop", SIZE, strength=0.5)
    constant = Adversary(crop, 1e-3)
    follow = Adversary(crop, 1e-3, schedule="follow")
    own = Adversary(crop, 1e-3, schedule="warmup_cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.05)
    assert constant.lr_at(0, 0.3) == pytest.approx(5e-4) and constant.lr_at(99, 0.01) == pytest.approx(5e-4)
    assert follow.lr_at(7, 0.3) == pytest.approx(1e-3 * 0.5 * 0.3)
    # warm-up (s + 1) / 10, then 0.05 + 0.95 * (1 + cos(pi * (s - 10) / 100)) / 2
    for step, factor in ((0, 0.1), (9, 1.0), (10, 1.0), (60, 0.525), (110, 0.05), (200, 0.05)):
        assert own.lr_at(step) == pytest.approx(1e-3 * 0.5 * factor), step
    # the optimiser steps at that rate
    crop.generate(torch.randn(4, 16)).sum().backward()
    own.step(60)
    assert own.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * 0.525)
    with pytest.raises(ValueError, match="generator schedule"):
        Adversary(crop, 1e-3, schedule="linear")


def test_trainer_follow_schedule_logs_the_backbone_factor(workdir):
    cfg = TrainConfig.from_dict({**TINY, "optim": {"generator_schedule": "follow", "warmup_steps": 2,
                                                   "generator_lr": 1e-3, "lr": 1e-2}})
    _, sink, _, _ = _recorded_run(cfg, workdir / "run")
    backbone = dict(sink.series("train/lr"))
    generator = dict(sink.series("train/generator_lr"))
    assert sorted(generator) == list(range(6))
    for step, lr in backbone.items():  # lambda 1: generator rate = generator_lr x the backbone's factor
        assert generator[step] == pytest.approx(1e-3 * lr / 1e-2), step
    assert backbone[0] == pytest.approx(1e-2 * 0.5)  # warm-up (0 + 1) / 2: the factor really varies
    with pytest.raises(ValueError, match="optim.generator_schedule"):
        TrainConfig.from_dict({"optim": {"generator_schedule": "exp"}})


def test_paramcrop_train_replay_sources(tmp_path):
    from studies.replay import resolve_train_source

    plain = TrainConfig.from_dict({"crop": {"method": "paramcrop"}})
    assert resolve_train_source(plain, "sqlite:///unused.db", tmp_path) is plain
    trial = TrainConfig.from_dict({"crop": {"method": "replay", "source": "trial:paramcrop"}})
    with pytest.raises(ValueError, match="refers to a study's trial"):
        resolve_train_source(trial, "sqlite:///unused.db", tmp_path)


def test_builtin_controls_specs():
    from studies.replay import check_replay_references
    from studies.spec import load_spec

    controls = load_spec("controls")
    check_replay_references(controls)
    crops = controls.grid()["variant:crop"]
    assert set(crops) == {"random", "random-cvrl", "matched", "matched-sweet", "curriculum", "replay",
                          "paramcrop-l0", "paramcrop"}
    assert controls.seeds == [0, 1, 2, 3, 4] and controls.objectives[0].metric == "eval/val/knn_top1"
    quick = load_spec("quickstart").search_space[0].choices
    assert {k: (v["crop.method"], v.get("crop.strength")) for k, v in quick.items()} == {
        "random": ("random", None), "paramcrop-l1": ("paramcrop", 1.0), "paramcrop-l0": ("paramcrop", 0.0)}
    # one tuned random-crop baseline, the same in both specs; the curriculum ends at CVRL's ranges
    choices = controls.search_space[0].choices
    assert quick["random"] == choices["random"]
    assert choices["curriculum"]["crop.area"] == choices["random-cvrl"]["crop.area"]
    assert choices["curriculum"]["crop.duration"] == choices["random-cvrl"]["crop.duration"]
    # the random crop matched to the sweet spot sits at sweet-spot-long's best validation level
    assert choices["matched-sweet"] == {"crop.method": "matched",
                                        **load_spec("sweet-spot-long").search_space[0].choices["iou-0.80"]}
    # the learned crop held at the sweet spot, against the random crop matched there, at the controls' settings
    budget = load_spec("sweet-spot-budget")
    held = budget.search_space[0].choices
    assert held["matched-sweet"] == choices["matched-sweet"] and held["paramcrop-budget"]["crop.budget"] == 0.8
    assert budget.base_config() == controls.base_config() and budget.seeds == controls.seeds
    tune = load_spec("tune-baseline")
    assert tune.grid_size() == 24 and tune.base_config().crop["method"] == "random"
