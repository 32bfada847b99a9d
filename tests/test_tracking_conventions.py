"""MLflow conventions: run names, notes, source tags, dataset inputs, the parent's summary."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_DRAWS
from test_studies import TINY_CONFIG, TINY_SOURCE, run_cli, study_and_runs, tiny_spec, write_spec

from paramcrop import sinks
from paramcrop.artifacts import DATA_DIGEST
from paramcrop.config import TrainConfig
from paramcrop.keys import flatten
from paramcrop.data import VideoRecord, resolve_source
from paramcrop.data.sources import dataset_digest, dataset_root, evaluation_draws
from studies.conventions import trial_run_name
from studies.tracking import git_commit, source_name


# --- run names ---------------------------------------------------------------------------------
def test_trial_run_names_say_what_the_trial_is():
    assert trial_run_name(2, {"variant:crop": "random", "seed": 1}) == "t2 crop=random seed=1"
    assert trial_run_name(0, {"optim.lr": 0.00123456, "crop.strength": 0.5}) == "t0 optim.lr=0.001235 crop.strength=0.5"
    assert trial_run_name(7, {"framework.name": "byol", "x": 1e-5}) == "t7 framework.name=byol x=1e-05"
    assert trial_run_name(5, {"variant:crop": "random"}, retry_of=2) == "t5 crop=random (retry of t2)"
    assert trial_run_name(3, {}) == "t3"


def test_source_name_is_the_paramcrop_command_else_the_script():
    assert source_name(["/venv/bin/paramcrop", "study", "run", "quickstart"]) == "paramcrop study run"
    assert source_name(["/venv/bin/paramcrop", "train", "--steps", "3"]) == "paramcrop train"
    assert source_name(["/work/cli.py", "study", "list"]) == "cli.py"  # no run comes from `study list`
    assert source_name(["/usr/bin/my_script.py", "study", "run"]) == "my_script.py"


# --- dataset digests ---------------------------------------------------------------------------
def _videos(root, sizes):
    records = []
    for label, (name, size) in enumerate(sizes.items()):
        path = root / f"class{label % 2}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        records.append(VideoRecord(path, label % 2))
    return records


def test_dataset_digest_same_files_same_digest_one_file_more_another(tmp_path):
    sizes = {"a.mp4": 10, "b.mp4": 20, "c.mp4": 30}
    records = _videos(tmp_path / "one", sizes)
    digest = dataset_digest(records)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert dataset_root(records) == (tmp_path / "one").absolute()
    # the same files elsewhere, listed in another order: the same digest
    assert dataset_digest(_videos(tmp_path / "two", sizes)[::-1]) == digest
    # one file more, a resized file, a renamed file: another digest each
    more = _videos(tmp_path / "three", {**sizes, "d.mp4": 5})
    assert dataset_digest(more) != digest
    assert dataset_digest(_videos(tmp_path / "four", {**sizes, "c.mp4": 31})) != digest
    assert dataset_digest(_videos(tmp_path / "five", {"a.mp4": 10, "b.mp4": 20, "e.mp4": 30})) != digest
    # an absent file is part of the list (size -1), not an error
    shutil.rmtree(tmp_path / "one" / "class0")
    assert dataset_digest(records) not in (digest, dataset_digest(records[1:]))


def test_two_synthetic_designs_are_two_configurations_wherever_the_cache_is(tmp_path):
    """``data.source`` says ``synthetic`` for both designs; the ``data.digest`` param tells them apart."""
    import pandas as pd

    from analysis.groups import configurations

    options = "videos_per_class=2,frames=16,size=32,shapes=2,motions=1"
    def digest(source, cache):
        spec = resolve_source(source, cache_dir=tmp_path / cache)
        return dataset_digest(spec.train + spec.test)

    default, elsewhere = digest(f"synthetic:{options}", "a"), digest(f"synthetic:{options}", "b")
    first = digest(f"synthetic:{options},variant=smooth,objects=1", "a")
    assert default == elsewhere != first
    runs = pd.DataFrame({"run_id": ["r0", "r1", "r2"], "params.seed": ["0", "1", "0"],
                         "params.crop.method": ["random"] * 3, "params.data.source": ["synthetic"] * 3,
                         f"params.{DATA_DIGEST}": [default, default, first]})
    frame, _ = configurations(runs)
    ids = frame.set_index("run_id")["config"]
    assert ids["r0"] == ids["r1"] != ids["r2"]


# --- a tiny study end to end ------------------------------------------------------------------
def _inputs(run) -> dict[str, tuple[str, str, dict, str]]:
    """context -> (name, digest, profile, source uri) of a run's dataset inputs."""
    out = {}
    for item in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}[sinks.DATASET_CONTEXT_TAG]
        assert context not in out, "each dataset is logged once"
        out[context] = (item.dataset.name, item.dataset.digest, json.loads(item.dataset.profile),
                        json.loads(item.dataset.source)["uri"])
    return out


def test_tiny_study_names_notes_sources_datasets_and_summary(workdir):
    description = "Random against ParamCrop.\nA convention test."
    spec = write_spec(workdir / "tiny.yaml", tiny_spec(description=description, seeds=[1]))
    result = run_cli("study", "run", str(spec), "--no-progress", "--set", "optim.lr=0.002")
    assert result.exit_code == 0, result.output
    study, client, runs = study_and_runs("tiny", workdir)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags[sinks.NOTE_TAG] == description
    parent = next(r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "study")
    trials = {r.data.tags[sinks.TAG_TRIAL]: r for r in runs if r.data.tags.get(sinks.TAG_ROLE) == "trial"}
    commit = git_commit()
    assert commit
    for run in (parent, *trials.values()):
        assert run.data.tags[sinks.SOURCE_COMMIT_TAG] == commit == run.data.tags[sinks.TAG_GIT_COMMIT]
        assert run.data.tags[sinks.SOURCE_NAME_TAG] == source_name()
        assert run.data.tags[sinks.SOURCE_TYPE_TAG] == "LOCAL"
    assert parent.data.tags[sinks.NOTE_TAG] == description

    # run names: the trial number and the varied values, in the search space's order
    for trial in study.trials:
        name = f"t{trial.number} crop={trial.params['variant:crop']} seed=1"
        assert trials[str(trial.number)].info.run_name == name

    # the parent's params: the fixed config (spec base config plus --set), flattened
    fixed = TrainConfig().with_overrides({**flatten(TINY_CONFIG), "data.source": TINY_SOURCE, "optim.lr": 0.002})
    assert parent.data.params == {k: str(v) for k, v in fixed.flatten().items()}
    assert parent.data.params["optim.lr"] == "0.002"

    # the parent's summary: trials per state, best value and trial, one point per trial that ended
    values = {t.number: t.value for t in study.trials}
    best = max(values, key=values.get)
    metrics = parent.data.metrics
    assert metrics[sinks.STUDY_BEST_VALUE] == pytest.approx(values[best])
    assert metrics[sinks.STUDY_BEST_TRIAL] == best
    assert metrics["study/trials_complete"] == 2
    assert metrics["study/trials_pruned"] == metrics["study/trials_fail"] == metrics["study/trials_running"] == 0
    history = client.get_metric_history(parent.info.run_id, "study/trials_complete")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0)]
    first = values[0]
    assert [m.value for m in client.get_metric_history(parent.info.run_id, sinks.STUDY_BEST_VALUE) if m.step == 1] \
        == [pytest.approx(first)]

    # dataset inputs: the training split and the test and validation queries (the source's evaluation
    # draws), named by the source, digests of their files
    dataset = resolve_source(TINY_SOURCE).with_validation(TrainConfig().data.val_fraction)
    draws = evaluation_draws(TINY_SOURCE, TINY_DRAWS)
    expected = {sinks.DATASET_TRAINING: dataset.train, sinks.DATASET_EVALUATION: draws.test,
                sinks.DATASET_VALIDATION: draws.val}
    for run in trials.values():
        inputs = _inputs(client.get_run(run.info.run_id))
        assert set(inputs) == set(expected)
        for context, records in expected.items():
            name, digest, profile, uri = inputs[context]
            assert name == TINY_SOURCE
            assert digest == dataset_digest(records)
            assert profile == {"num_videos": len(records)}
            assert uri == str(dataset_root(records))
        assert inputs[sinks.DATASET_TRAINING][1] != inputs[sinks.DATASET_EVALUATION][1]
        # and one param naming every video the run read: the three (disjoint) sets together
        assert run.data.params[DATA_DIGEST] == dataset_digest(dataset.train + draws.val + draws.test)


def test_train_run_keeps_its_name_and_gets_sources_and_datasets(workdir):
    from studies.runs import run_name

    sets = [f"{k}={v}" for k, v in flatten(TINY_CONFIG).items()] + ["crop.method=random"]
    result = run_cli("train", "--data", TINY_SOURCE, "--no-progress", *(a for s in sets for a in ("--set", s)))
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient
    import os

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("paramcrop-train").experiment_id])[0]
    cfg = TrainConfig().with_overrides({**flatten(TINY_CONFIG), "crop.method": "random", "data.source": TINY_SOURCE})
    assert run.info.run_name == run_name(cfg) == "random-simclr-tiny3d-s0"
    assert run.data.tags[sinks.SOURCE_NAME_TAG] == source_name()
    assert run.data.tags[sinks.SOURCE_COMMIT_TAG] == git_commit()
    inputs = _inputs(run)
    dataset = resolve_source(TINY_SOURCE).with_validation(cfg.data.val_fraction)
    assert inputs[sinks.DATASET_TRAINING][1] == dataset_digest(dataset.train)
    draws = evaluation_draws(TINY_SOURCE, TINY_DRAWS)
    assert inputs[sinks.DATASET_EVALUATION][1] == dataset_digest(draws.test)
    assert inputs[sinks.DATASET_VALIDATION][1] == dataset_digest(draws.val)


class DownClient:
    """An MLflow client whose store does not answer (every call: a connection error)."""

    tracking_uri = "http://127.0.0.1:9"

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("connection refused")
        return fail


def test_dataset_inputs_wait_in_the_spool_and_are_sent_by_replay(workdir, monkeypatch):
    from studies.mlflow_sink import MlflowSink, replay_spool
    from studies.tracking import client_for

    monkeypatch.setenv("PARAMCROP_TRACKING_RETRY_S", "0")
    client = client_for()
    run_id = client.create_run(client.create_experiment("spool")).info.run_id
    sink = MlflowSink(DownClient(), run_id, spool_dir=workdir)
    sink.log_dataset("folder:/data/x", "/data/x", "0123456789abcdef", sinks.DATASET_TRAINING, 12)
    assert sink.queued == 1
    sink.finish("FINISHED")
    assert sink.unavailable is not None and sink.spool_path.exists()
    assert client.get_run(run_id).inputs.dataset_inputs == []
    replay_spool(client, sink.spool_path)
    run = client.get_run(run_id)
    assert _inputs(run) == {sinks.DATASET_TRAINING: ("folder:/data/x", "0123456789abcdef", {"num_videos": 12}, "/data/x")}
    assert run.info.status == "FINISHED"
