"""Studies end to end on tiny configs: Optuna and MLflow agree, resume, two workers, bad specs, failures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli import app
from paramcrop import sinks
from studies.spec import SpecError, StudySpec, load_spec
from studies.storage import DEFAULT_STORAGE, open_storage
from conftest import TINY_DRAWS, TINY_SOURCE

TINY_CONFIG = {"steps": 4, "batch_size": 8, "log_every": 1, "visualize_at": 1,
               "data": {"frames": 16, "stride": 1, "size": 32},  # a clip (16 frames) fits the 24-frame videos
               "view": {"frames": 8, "size": 32}, "eval": {"linear": False, "retrieval": False, "draw_per_class": TINY_DRAWS},
               "augment": {"blur_p": 0.0}}


def tiny_spec(name="tiny", **extra):
    spec = {"name": name, "data": TINY_SOURCE, "config": dict(TINY_CONFIG),
            "search_space": {"crop": {"type": "variants", "choices": {
                "random": {"crop.method": "random"},
                "paramcrop": {"crop.method": "paramcrop", "crop.strength": 1.0}}}},
            "sampler": "grid"}
    spec.update(extra)
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def study_and_runs(name, workdir):
    study = optuna.load_study(study_name=name, storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return study, client, runs


def test_tiny_study_optuna_and_mlflow_agree(workdir):
    spec = write_spec(workdir / "tiny.yaml", tiny_spec())
    result = run_cli("study", "run", str(spec), "--no-progress")
    assert result.exit_code == 0, result.output
    study, client, runs = study_and_runs("tiny", workdir)
    parents = [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "study"]
    children = [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags[sinks.TAG_OBJECTIVE] == sinks.EVAL_VAL_KNN_TOP1
    by_id = {r.info.run_id: r for r in children}
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags[sinks.PARENT_RUN_TAG] == parent.info.run_id
        assert run.data.tags[sinks.TAG_TRIAL] == str(trial.number)
        assert run.data.tags[sinks.TAG_TRIAL_STATE] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.params["crop.method"] == trial.params["variant:crop"]
        assert run.data.metrics[sinks.EVAL_VAL_KNN_TOP1] == pytest.approx(trial.value)
        history = client.get_metric_history(run.info.run_id, sinks.VIEW_IOU)
        assert sorted(m.step for m in history) == [0, 1, 2, 3]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "trajectory.csv", "crops"} <= artifacts
    shown = run_cli("study", "show", "tiny", "--format", "json")
    rows = json.loads(shown.output)
    assert [(r["number"], r["mlflow_run_id"]) for r in rows] == [
        (t.number, t.user_attrs["mlflow_run_id"]) for t in study.trials]
    assert "tiny" in run_cli("study", "list").output


def test_resume_keeps_finished_trials_and_completes_the_grid(workdir):
    spec = tiny_spec(name="resume", seeds=[0, 1])  # 2 crops x 2 seeds = a 4-point grid
    path = write_spec(workdir / "resume.yaml", spec)
    assert run_cli("study", "run", str(path), "--n-trials", "2", "--no-progress").exit_code == 0
    study, _, _ = study_and_runs("resume", workdir)
    first = [(t.number, t.params, t.value, t.user_attrs["mlflow_run_id"]) for t in study.trials]
    assert len(first) == 2
    assert run_cli("study", "run", str(path), "--no-progress").exit_code == 0
    study, _, runs = study_and_runs("resume", workdir)
    trials = study.trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert [(t.number, t.params, t.value, t.user_attrs["mlflow_run_id"]) for t in trials[:2]] == first
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == 4  # the whole grid, no duplicate
    assert len([r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "study"]) == 1
    # a third run has nothing to do and changes nothing
    again = run_cli("study", "run", str(path), "--no-progress")
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_two_workers_share_one_grid(workdir):
    path = write_spec(workdir / "pair.yaml", tiny_spec(name="pair", seeds=[0, 1]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "cli", "study", "run", str(path), "--no-progress"]
    workers = [subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert not any("database is locked" in o for o in outputs)
    study, _, runs = study_and_runs("pair", workdir)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
    children = [r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "trial"]
    assert sorted(r.info.run_id for r in children if r.info.status == "FINISHED") == sorted(
        t.user_attrs["mlflow_run_id"] for t in complete)
    assert len([r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "study"]) == 1


@pytest.mark.parametrize("change,message", [
    ({"epochs": 3}, "unknown key(s) epochs"),
    ({"search_space": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "low (0.1) must be smaller"),
    ({"search_space": {"backbone.name": {"type": "categorical", "choices": ["tiny3d", "resnet9000"]}}},
     "resnet9000"),
    ({"config": {"batch_size": -4}}, "batch_size must be >= 1"),
    ({"search_space": {"crop.strenght": {"type": "categorical", "choices": [1.0]}}}, "crop.strenght"),
])
def test_bad_spec_exits_2_and_creates_nothing(workdir, change, message):
    path = write_spec(workdir / "bad.yaml", tiny_spec(name="bad", **change))
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 2
    assert message in result.output
    assert not (workdir / DEFAULT_STORAGE).exists() and not (workdir / "mlflow.db").exists()


def test_failing_trial_is_fail_in_optuna_failed_in_mlflow_and_the_study_goes_on(workdir):
    spec = tiny_spec(name="diverge")
    spec["search_space"] = {"optim.lr": {"type": "categorical", "choices": [1.0e30, 1.0e-3]}}
    path = write_spec(workdir / "diverge.yaml", spec)
    result = run_cli("study", "run", str(path), "--no-progress")
    assert result.exit_code == 0, result.output
    study, client, runs = study_and_runs("diverge", workdir)
    states = {t.params["optim.lr"]: t for t in study.trials}
    assert states[1.0e30].state.name == "FAIL" and states[1.0e-3].state.name == "COMPLETE"
    failed = client.get_run(states[1.0e30].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED"
    assert "non-finite loss" in failed.data.tags[sinks.TAG_FAILURE]
    assert failed.data.tags[sinks.TAG_TRIAL_STATE] == "FAIL"


def test_builtin_specs_load_and_quickstart_compares_random_with_two_strengths():
    for name in ("quickstart", "frameworks", "backbones", "adversarial-strength", "seeds", "cvrl"):
        assert load_spec(name).grid_size() >= 3
    variants = load_spec("quickstart").grid()["variant:crop"]
    assert "random" in variants and sum(v.startswith("paramcrop") for v in variants) >= 2
    with pytest.raises(SpecError, match="built-in specs: adversarial-strength"):
        load_spec("nope")


def test_spec_yaml_round_trip_and_when_conditions():
    spec = StudySpec.from_dict(tiny_spec())
    assert StudySpec.from_yaml(spec.to_yaml()).to_yaml() == spec.to_yaml()
    conditional = tiny_spec(sampler="random", search_space={
        "crop.method": {"type": "categorical", "choices": ["random", "paramcrop"]},
        "crop.strength": {"type": "float", "low": 0.1, "high": 2.0, "log": True, "when": {"crop.method": "paramcrop"}},
    })
    spec = StudySpec.from_dict(conditional)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        cfg, _ = spec.sample(trial)
        assert ("crop.strength" in trial.params) == (cfg.crop["method"] == "paramcrop")
        study.tell(trial, 0.0)
    with pytest.raises(SpecError, match="grid sampler"):
        StudySpec.from_dict({**conditional, "sampler": "grid"})


def test_a_block_of_seeds_and_values_is_its_own_study_of_part_of_the_grid(workdir):
    path = write_spec(workdir / "block.yaml", tiny_spec(name="block", seeds=[0, 1]))
    result = run_cli("study", "run", str(path), "--seeds", "6-7", "--only", "crop=paramcrop", "--no-progress")
    assert result.exit_code == 0, result.output
    study, client, runs = study_and_runs("block-seeds-6-7-only-crop=paramcrop", workdir)
    assert sorted((t.params["variant:crop"], t.params["seed"]) for t in study.trials) == [("paramcrop", 6), ("paramcrop", 7)]
    parent = next(r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "study")
    logged = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "study.yaml", str(workdir))).read_text())
    assert logged["name"] == "block-seeds-6-7-only-crop=paramcrop" and logged["seeds"] == [6, 7]
    assert list(logged["search_space"]["crop"]["choices"]) == ["paramcrop"]
    for option, value, message in (("--seeds", "9-5", "'9-5' is not a range of non-negative seeds"),
                                   ("--only", "nosuch", "--only: unknown label 'nosuch'; valid labels: crop=paramcrop"),
                                   ("--only", ",", "--only needs at least one label")):
        bad = run_cli("study", "run", str(path), option, value, "--no-progress")
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), bad.output


@pytest.mark.parametrize("text, seeds, label", [("5-9", [5, 6, 7, 8, 9], "5-9"), ("0-2,7", [0, 1, 2, 7], "0-2,7"),
                                                ("3", [3], "3"), (" 4 , 5", [4, 5], "4-5")])
def test_seed_blocks_parse_and_name(text, seeds, label):
    from studies.spec import parse_seeds, seeds_label

    assert parse_seeds(text) == seeds and seeds_label(seeds) == label


@pytest.mark.parametrize("text, message", [("a", "'a' is not a seed"), ("1-2,2", "names a seed twice"),
                                           ("-1", "is not a seed or a range"), ("", "'' is not a seed")])
def test_bad_seed_blocks_are_refused(text, message):
    from studies.spec import parse_seeds

    with pytest.raises(SpecError, match=message):
        parse_seeds(text)
