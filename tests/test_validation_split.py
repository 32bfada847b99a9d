"""The validation split: carved from the training videos (stable, per class, disjoint from test),
held out of pretraining and of the memory bank, evaluated as ``eval/val/*``, and what studies select on."""
import hashlib
import os
import random
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from cli import app
from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from paramcrop.data import resolve_source
from paramcrop.data.records import DatasetSpec, VideoRecord
from paramcrop.data.sources import evaluation_draws, parse_folder
from paramcrop.evaluation import extract_features, knn_top1
from paramcrop.data.batches import normalize_clips
from paramcrop.train import Trainer
from studies.spec import DEFAULT_STUDY_OBJECTIVE, SpecError, StudySpec, builtin_names, load_spec
from studies.storage import DEFAULT_STORAGE, open_storage

from conftest import TINY_DRAWS

TINY_SOURCE = "synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2"  # 4 classes x (4 train + 2 test)
TINY = {"data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1, "data.size": 32, "view.frames": 8,
        "view.size": 32, "batch_size": 8, "steps": 2, "log_every": 1, "visualize_at": 0, "optim.warmup_steps": 1,
        "eval.linear": False, "eval.retrieval": False, "augment.blur_p": 0.0,
        "eval.draw_per_class": TINY_DRAWS}


def tiny_config(**overrides) -> TrainConfig:
    return TrainConfig().with_overrides({**TINY, **overrides})


def paths(records) -> set:
    return {r.path for r in records}


def make_folder(root, sizes: dict[str, int]):
    """``root/<class>/<i>.mp4`` (empty files: parsers do not open videos)."""
    for name, n in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i:03d}.mp4").touch()
    return parse_folder(root)


def naive_validation(spec: DatasetSpec, fraction: float) -> set:
    """The documented rule, written out: per class the round-half-up(fraction * n) (clamped to 1..n-1)
    training videos with the lowest sha1 of ``val/<class>/<file name>``."""
    chosen = set()
    for label, name in enumerate(spec.classes):
        files = [r.path for r in spec.train if r.label == label]
        if not files:
            continue
        count = min(max(int(fraction * len(files) + 0.5), 1), len(files) - 1)
        files.sort(key=lambda p: hashlib.sha1(f"val/{name}/{p.name}".encode()).hexdigest())
        chosen.update(files[:count])
    return chosen


# --- the split itself --------------------------------------------------------------------------------

def test_validation_is_carved_from_train_disjoint_from_test_and_stable(tmp_path):
    spec = make_folder(tmp_path / "data", {"a": 40, "b": 25, "c": 12})
    split = spec.with_validation(0.2)
    assert paths(split.val) == naive_validation(spec, 0.2)
    assert paths(split.val) | paths(split.train) == paths(spec.train)  # nothing lost, nothing added
    assert not paths(split.val) & paths(split.train)
    assert not paths(split.val) & paths(split.test) and split.test == spec.test
    assert split.classes == spec.classes and spec.val == []  # the original is not changed
    again = parse_folder(tmp_path / "data").with_validation(0.2)
    assert again.val == split.val and again.train == split.train  # the same on every call
    shuffled = DatasetSpec(spec.classes, random.Random(3).sample(spec.train, len(spec.train)), spec.test)
    assert paths(shuffled.with_validation(0.2).val) == paths(split.val)  # whatever the list's order
    # a video added to another class does not move this class's videos
    (tmp_path / "data" / "b" / "new.mp4").touch()
    grown = parse_folder(tmp_path / "data").with_validation(0.2)
    def in_a(records):
        return {p for p in paths(records) if p.parent.name == "a"}

    assert in_a(grown.val) == in_a(split.val)


@pytest.mark.parametrize("fraction,expected", [
    (0.2, {"a": 2, "b": 1, "c": 1, "d": 1}),  # 10 -> 2; 5 -> 1; 2 -> 0.4, at least 1; 3 -> 0.6 -> 1
    (0.5, {"a": 5, "b": 3, "c": 1, "d": 2}),  # 5 -> 2.5 rounds up to 3; 3 -> 1.5 -> 2; 2 -> 1
    (0.9, {"a": 9, "b": 4, "c": 1, "d": 2}),  # at most n - 1: every class keeps a training video
])
def test_the_fraction_is_respected_per_class(fraction, expected):
    sizes = {"a": 10, "b": 5, "c": 2, "d": 3}
    spec = DatasetSpec(list(sizes), [VideoRecord(Path(f"/v/{c}/{i}.avi"), label)
                                     for label, (c, n) in enumerate(sizes.items()) for i in range(n)])
    split = spec.with_validation(fraction)
    counts = {c: sum(r.label == label for r in split.val) for label, c in enumerate(sizes)}
    assert counts == expected
    assert {c: sum(r.label == label for r in split.train) for label, c in enumerate(sizes)} == {
        c: sizes[c] - expected[c] for c in sizes}
    assert paths(split.val) == naive_validation(spec, fraction)


def test_no_split_and_bad_fractions():
    spec = DatasetSpec(["a", "b"], [VideoRecord(Path(f"/v/{c}/{i}.avi"), label)
                                    for label, c in enumerate("ab") for i in range(3)])
    assert spec.with_validation(0).val == [] and spec.with_validation(0).train == spec.train
    with pytest.raises(ValueError, match=r"data.val_fraction must be in \[0, 1\)"):
        spec.with_validation(1.0)
    with pytest.raises(ValueError, match="already has a validation split"):
        spec.with_validation(0.3).with_validation(0.3)
    lonely = DatasetSpec(["a", "b"], spec.train[:3] + spec.train[3:4])  # class b has one training video
    with pytest.raises(ValueError, match="class 'b' has 1 training video.*data.val_fraction=0"):
        lonely.with_validation(0.2)
    assert lonely.with_validation(0).train == lonely.train
    assert TrainConfig().data.val_fraction == 0.2
    with pytest.raises(ConfigError, match="data.val_fraction must be in"):
        tiny_config(**{"data.val_fraction": 1.0})


# --- the trainer --------------------------------------------------------------------------------------

@pytest.fixture()
def tiny_dataset(workdir):
    return resolve_source(TINY_SOURCE)


def test_validation_videos_are_held_out_of_pretraining_and_the_memory_bank(workdir, tiny_dataset, monkeypatch):
    import paramcrop.data.datasets as datasets

    expected = tiny_dataset.with_validation(0.2)
    val = paths(expected.val)
    assert len(val) == 4  # 1 of each class's 4 training videos
    trainer = Trainer(tiny_config(), workdir / "run", progress=False)
    assert paths(trainer.train_set.records) == paths(expected.train)
    assert paths(trainer.eval_sets[0].records) == paths(expected.train)  # the kNN memory bank
    draws = evaluation_draws(TINY_SOURCE, TINY_DRAWS)  # the queries: fresh draws
    assert paths(trainer.val_set.records) == paths(draws.val) and paths(trainer.eval_sets[1].records) == paths(draws.test)
    own = Trainer(tiny_config(**{"eval.draw_per_class": 0}), workdir / "own", progress=False)  # the split's own videos
    assert paths(own.val_set.records) == val and not val & paths(own.eval_sets[1].records)
    decoded = []
    read = datasets.read_frames
    monkeypatch.setattr(datasets, "read_frames", lambda path, *a, **k: decoded.append(path) or read(path, *a, **k))
    batches = trainer._loader()
    for _ in range(3):  # more than an epoch of the 12 training videos in batches of 8
        next(batches)
    # what the sampler draws from, each video decoded once (the decoded-video cache, data.cache_mb)
    assert len(decoded) == 12 and set(decoded) == paths(expected.train)
    assert not set(decoded) & val


def test_validation_knn_equals_knn_top1_on_the_same_features(workdir, tiny_dataset):
    trainer = Trainer(tiny_config(**{"eval.knn_k": 5}), workdir / "run", progress=False)
    metrics = trainer.evaluate()
    backbone = trainer.framework.backbone

    def features(dataset):
        return extract_features(backbone, DataLoader(dataset, batch_size=4), device="cpu", normalize=normalize_clips)

    bank, val, test = features(trainer.eval_sets[0]), features(trainer.val_set), features(trainer.eval_sets[1])
    assert metrics[sinks.EVAL_VAL_KNN_TOP1] == pytest.approx(knn_top1(*bank, *val, k=5, temperature=0.07))
    assert metrics[sinks.EVAL_KNN_TOP1] == pytest.approx(knn_top1(*bank, *test, k=5, temperature=0.07))
    assert sorted(metrics) == [sinks.EVAL_KNN_TOP1, sinks.EVAL_VAL_KNN_TOP1]


def test_online_evaluations_report_both_splits_and_no_split_reports_test_only(workdir, tiny_dataset):
    sink = sinks.MemorySink()
    Trainer(tiny_config(**{"steps": 4, "eval.every": 2}), workdir / "a", sink=sink, progress=False).fit()
    assert [s for s, _ in sink.series(sinks.EVAL_VAL_KNN_TOP1)] == [s for s, _ in sink.series(sinks.EVAL_KNN_TOP1)]
    assert len(sink.series(sinks.EVAL_VAL_KNN_TOP1)) == 2
    trainer = Trainer(tiny_config(**{"data.val_fraction": 0.0}), workdir / "b", progress=False)
    assert trainer.val_set is None and paths(trainer.train_set.records) == paths(tiny_dataset.train)
    assert sorted(trainer.evaluate()) == [sinks.EVAL_KNN_TOP1]


# --- studies -------------------------------------------------------------------------------------------

def test_study_objective_and_pruner_read_the_validation_metric(workdir, monkeypatch):
    from paramcrop.train import Trainer as RealTrainer

    evaluate = RealTrainer.evaluate

    def shifted(self, final=True):  # the test split scores 1 higher: the two can never be confused
        metrics = evaluate(self, final)
        return {**metrics, sinks.EVAL_KNN_TOP1: metrics[sinks.EVAL_KNN_TOP1] + 1.0}

    monkeypatch.setattr(RealTrainer, "evaluate", shifted)
    spec = {"name": "val", "data": TINY_SOURCE, "sampler": "grid", "pruner": "median",
            "config": {"steps": 4, "batch_size": 8, "log_every": 1, "visualize_at": 0, "seed": 1,
                       "data": {"frames": 16, "stride": 1, "size": 32}, "view": {"frames": 8, "size": 32},
                       "eval": {"linear": False, "retrieval": False, "every": 2, "draw_per_class": TINY_DRAWS},
                       "augment": {"blur_p": 0.0},
                       "crop": {"method": "random"}}}
    (workdir / "val.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["study", "run", str(workdir / "val.yaml"), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="val", storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [trial] = study.trials
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    val, test = run.data.metrics[sinks.EVAL_VAL_KNN_TOP1], run.data.metrics[sinks.EVAL_KNN_TOP1]
    assert val != test  # the test split scores 1 higher (shifted above)
    assert trial.value == pytest.approx(val)
    online = client.get_metric_history(run.info.run_id, sinks.EVAL_VAL_KNN_TOP1)
    assert len(online) == 2  # at step 2 and at the end
    assert trial.intermediate_values == {m.step: pytest.approx(m.value) for m in online}
    parent = client.get_run(run.data.tags[sinks.PARENT_RUN_TAG])
    assert parent.data.tags[sinks.TAG_OBJECTIVE] == sinks.EVAL_VAL_KNN_TOP1


def test_specs_default_to_the_validation_objective_and_refuse_it_without_a_split():
    assert DEFAULT_STUDY_OBJECTIVE == "eval/val/knn_top1"
    assert StudySpec.from_dict({"name": "x"}).objectives[0].metric == DEFAULT_STUDY_OBJECTIVE
    for name in builtin_names():
        assert [o.metric for o in load_spec(name).objectives] == [DEFAULT_STUDY_OBJECTIVE], name
    with pytest.raises(SpecError, match="eval/val/knn_top1 is measured on the validation split.*val_fraction=0"):
        StudySpec.from_dict({"name": "x", "config": {"data": {"val_fraction": 0.0}}})
    with pytest.raises(SpecError, match=r"the point \(variant:split=none\)"):
        StudySpec.from_dict({"name": "x", "search_space": {"split": {"type": "variants", "choices": {
            "some": {"data.val_fraction": 0.2}, "none": {"data.val_fraction": 0.0}}}}})
    test_objective = {"name": "x", "config": {"data": {"val_fraction": 0.0}}, "objective": "eval/knn_top1"}
    assert StudySpec.from_dict(test_objective).objectives[0].metric == sinks.EVAL_KNN_TOP1


def test_study_run_refuses_a_set_that_removes_the_validation_split(workdir):
    (workdir / "s.yaml").write_text(yaml.safe_dump({"name": "s", "data": TINY_SOURCE, "config": {
        "data": {"frames": 16, "stride": 1, "size": 32}, "view": {"frames": 8, "size": 32}, "batch_size": 8}}))
    result = CliRunner().invoke(app, ["study", "run", str(workdir / "s.yaml"), "--set", "data.val_fraction=0",
                                      "--no-progress"])
    assert result.exit_code == 2
    assert "but a --set override leaves none (data.val_fraction=0)" in " ".join(result.output.split())
    assert not (workdir / DEFAULT_STORAGE).exists()
