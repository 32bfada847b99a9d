"""Transfer evaluation (paramcrop/transfer.py, studies/evaluate.py, `paramcrop eval`) and the
backbone as an MLflow model: every number is checked against paramcrop.evaluation called
directly on the same backbone and data, or against a hand-computed value."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError
from conftest import TINY_DRAWS, TINY_SOURCE

VARIANT_SOURCE = "synthetic:variant=textures,videos_per_class=4,frames=24,size=32,shapes=2,motions=2"
TINY = {"data": {"source": TINY_SOURCE, "size": 32, "stride": 1}, "view": {"size": 32}, "steps": 3,
        "batch_size": 4, "log_every": 1, "visualize_at": 0, "device": "cpu",
        "eval": {"linear": False, "retrieval": False, "draw_per_class": TINY_DRAWS}}
SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
if not SHARED_VIDEOS.is_dir():
    SHARED_VIDEOS = Path("/work/shared/videos")


def tiny_cfg(**overrides) -> TrainConfig:
    return TrainConfig.from_dict(TINY).with_overrides(overrides)


def direct_knn(backbone, source: str, cfg: TrainConfig) -> float:
    """kNN top-1 from paramcrop.evaluation on the source's train/test split, built by hand."""
    from torch.utils.data import DataLoader

    from paramcrop.data import EvalClips, resolve_source
    from paramcrop.evaluation import extract_features, knn_top1
    from paramcrop.data.batches import normalize_clips

    spec = resolve_source(source)
    stride = max(1, cfg.data.stride * cfg.data.frames // cfg.view.frames)
    feats = [extract_features(backbone, DataLoader(EvalClips(records, cfg.view.frames, stride, cfg.view.size), 7),
                              device="cpu", normalize=normalize_clips) for records in (spec.train, spec.test)]
    return knn_top1(*feats[0], *feats[1], k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)


def tracked_train(cfg: TrainConfig, tmp: Path, experiment: str = "transfer"):
    """A finished tracked run of ``cfg``: (trainer, run id, client)."""
    from studies.mlflow_sink import tracked_run
    from studies.tracking import get_or_create_experiment, open_tracking_store
    from paramcrop.plan import resolve
    from paramcrop.train import Trainer

    client = open_tracking_store(os.environ["MLFLOW_TRACKING_URI"])
    plan = resolve(cfg)
    with tracked_run(client, get_or_create_experiment(client, experiment), "r", {sinks.TAG_ROLE: "train"}) as sink:
        trainer = Trainer(plan, tmp / "run", sink=sink, progress=False)
        trainer.fit()
    return trainer, sink.run_id, client


# --- the backbone as an MLflow model -----------------------------------------------------------


def test_logged_backbone_and_generator_round_trip(workdir, monkeypatch):
    from importlib.metadata import version

    import mlflow.pytorch
    import mlflow.utils.requirements_utils
    import yaml

    from paramcrop import create_crop, load_backbone

    def no_inference(*args, **kwargs):
        raise AssertionError("MLflow inferred the pip requirements (a subprocess, ~8 s a run)")

    monkeypatch.setattr(mlflow.utils.requirements_utils, "_capture_imported_modules", no_inference)
    trainer, run_id, client = tracked_train(tiny_cfg(**{"crop.method": "paramcrop", "crop.strength": 1.0}), workdir)
    requirements = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/backbone/requirements.txt",
                                                             dst_path=str(workdir / "req"))).read_text().split()
    assert f"torch=={version('torch')}" in requirements and f"torchvision=={version('torchvision')}" in requirements
    x = torch.randn(2, 3, 8, 32, 32)
    backbone = trainer.framework.backbone.eval()
    with torch.no_grad():
        expected = backbone(x)
        logged = mlflow.pytorch.load_model(f"runs:/{run_id}/backbone")(x)
        loaded = load_backbone(f"runs:/{run_id}/backbone")(x)
    assert torch.equal(logged, expected) and torch.equal(loaded, expected)
    assert not torch.equal(expected, torch.zeros_like(expected))
    # the signature: clips (B, 3, 8, 32, 32) in, features (B, D) out (MLflow writes B as -1)
    info = mlflow.models.get_model_info(f"runs:/{run_id}/backbone")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 8, 32, 32)
    assert tuple(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, backbone.feature_dim)
    # the generator: its state and crop config replay the crop
    folder = Path(client.download_artifacts(run_id, "generator", str(workdir / "dl")))
    crop_cfg = yaml.safe_load((folder / "crop.yaml").read_text())
    crop = create_crop(crop_cfg["method"], tuple(crop_cfg["shape"]), **crop_cfg["keys"])
    crop.load_state_dict(torch.load(folder / "generator.pt", weights_only=True))
    for (k, v), (k2, v2) in zip(crop.state_dict().items(), trainer.crop.state_dict().items()):
        assert k == k2 and torch.equal(v, v2.cpu()), k


def test_random_crop_logs_no_generator_and_memory_sink_keeps_the_model(workdir):
    from paramcrop.train import train

    sink = sinks.MemorySink()
    train(tiny_cfg(**{"crop.method": "random"}), sink, workdir / "run", progress=False)
    module, example = sink.models["backbone"]
    assert example.shape == (1, 3, 8, 32, 32)
    assert not any(part == sinks.ARTIFACT_GENERATOR for _, part in sink.artifacts)
    assert not module.training and all(p.device.type == "cpu" for p in module.parameters())


# --- names, config -----------------------------------------------------------------------------


@pytest.mark.parametrize("source, name", [
    ("synthetic", "synthetic"), ("synthetic:variant=textures", "synthetic-textures"),
    ("synthetic:seed=1,variant=textures", "synthetic-seed1-textures"),
    ("folder:/data/my clips/", "folder-my_clips"), ("ucf101:/d/UCF:2", "ucf101-2"), ("ucf101:/d/UCF", "ucf101"),
    ("hmdb51:/d/h:3", "hmdb51-3"), ("kinetics:/d/k400.csv:/d/vids", "kinetics-k400"),
])
def test_dataset_names(source, name):
    from paramcrop.transfer import dataset_name

    assert dataset_name(source) == name


@pytest.mark.parametrize("datasets, message", [
    (["nosuch:x"], "eval.datasets: bad data source 'nosuch:x'"),
    (["synthetic:variant=plaid"], "variant must be one of smooth, textures"),
    ("synthetic", "eval.datasets must be a list of strings"),
])
def test_bad_downstream_datasets_are_refused(datasets, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({"eval": {"datasets": datasets}})


# --- downstream evaluation in the trainer -------------------------------------------------------


@pytest.mark.parametrize("online", [False, True])
def test_trainer_logs_downstream_metrics_equal_to_direct_evaluation(workdir, online):
    from paramcrop.train import train
    from studies.runner import _metric_value

    cfg = tiny_cfg(**{"crop.method": "random", "eval.datasets": [VARIANT_SOURCE], "eval.every": 2,
                      "eval.online_datasets": online})
    sink = sinks.MemorySink()
    result = train(cfg, sink, workdir / "run", progress=False)
    name = "eval/synthetic-textures-videos_per_class4-frames24-size32-shapes2-motions2/knn_top1"
    module, _ = sink.models["backbone"]
    assert result.eval_metrics[name] == pytest.approx(direct_knn(module, VARIANT_SOURCE, cfg), abs=1e-9)
    # the step convention: an evaluation after s + 1 steps is logged at s
    assert [s for s, _ in sink.series(name)] == ([1, cfg.steps - 1] if online else [cfg.steps - 1])
    assert [s for s, _ in sink.series(sinks.EVAL_KNN_TOP1)] == [1, cfg.steps - 1]
    assert _metric_value(name, result) == result.eval_metrics[name]  # a study objective can be downstream
    assert sinks.EVAL_KNN_TOP1 in result.eval_metrics  # the pretraining dataset's metric stays


def test_textures_variant_keeps_classes_changes_backgrounds():
    import numpy as np

    from paramcrop.data.synthetic import SyntheticConfig, render, sample_scene

    base = SyntheticConfig(shapes=2, motions=2, size=32, frames=4, variant="smooth", objects=1)
    variant = SyntheticConfig.from_options("variant=textures,objects=1,shapes=2,motions=2,size=32,frames=4")
    assert variant.classes == base.classes and variant.dirname != base.dirname
    # the first design keeps its pre-variant cache folder: the hash of the fields without `variant` (nor `objects`)
    import dataclasses
    import hashlib
    import json

    fields = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("variant", "objects")}
    assert base.dirname.endswith(hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10])
    a, b = sample_scene(base, 1, 0), sample_scene(variant, 1, 0)
    # stripes: many more sharp transitions than the smooth background
    edges = [(np.abs(np.diff(s.background.mean(axis=2), axis=1)) > 20).mean() for s in (a, b)]
    assert edges[1] > 5 * edges[0] + 0.01, edges
    assert render(b).shape == (4, 32, 32, 3)


# --- split averaging ---------------------------------------------------------------------------


@pytest.fixture()
def ucf_root(workdir) -> Path:
    """A UCF101 layout of 2 classes x 4 synthetic videos and three different official splits."""
    from paramcrop.data import resolve_source

    spec = resolve_source("synthetic:videos_per_class=4,frames=24,size=32,shapes=2,motions=1")
    root = workdir / "ucf"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(spec.classes)))
    videos = {c: [] for c in spec.classes}
    for record in sorted(spec.train + spec.test, key=lambda r: str(r.path)):
        name = spec.classes[record.label]
        relative = f"{name}/v_{name}_g{len(videos[name]) + 1:02d}_c01.mp4"
        (root / "UCF-101" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(record.path, root / "UCF-101" / relative)
        videos[name].append(relative)
    for split in (1, 2, 3):  # test: video `split - 1` of each class; train: the other three
        test = [v[split - 1] for v in videos.values()]
        train = [x for v in videos.values() for x in v if x not in test]
        (lists / f"trainlist{split:02d}.txt").write_text("".join(f"{x} 1\n" for x in train))
        (lists / f"testlist{split:02d}.txt").write_text("".join(f"{x}\n" for x in test))
    return root


def test_split_mean_is_the_mean_of_the_splits(ucf_root, monkeypatch):
    from paramcrop import transfer

    known = {"ucf101-1": 0.25, "ucf101-2": 0.5, "ucf101-3": 1.0}
    monkeypatch.setattr(transfer.DownstreamDataset, "_evaluate_split",
                        lambda self, split, *a: {"eval/knn_top1": known[split.name], "eval/x": 1.0}
                        if split.name != "ucf101-3" else {"eval/knn_top1": known[split.name]})
    result = transfer.evaluate_downstream(torch.nn.Identity(), f"ucf101:{ucf_root}", tiny_cfg(), "cpu")
    assert result.metrics["eval/ucf101/knn_top1"] == pytest.approx(1.75 / 3)
    assert result.metrics["eval/ucf101-2/knn_top1"] == 0.5
    assert "eval/ucf101/x" not in result.metrics and "2 of 3 splits" in result.skipped["ucf101 mean eval/x"]


def test_real_split_run_matches_each_split_alone(ucf_root):
    from paramcrop.backbones import create_backbone
    from paramcrop.transfer import evaluate_downstream

    torch.manual_seed(0)
    backbone = create_backbone("tiny3d").eval()
    cfg = tiny_cfg(**{"eval.knn_k": 1})
    result = evaluate_downstream(backbone, f"ucf101:{ucf_root}", cfg, "cpu", ("knn", "retrieval"))
    per_split = [result.metrics[f"eval/ucf101-{n}/knn_top1"] for n in (1, 2, 3)]
    assert result.metrics["eval/ucf101/knn_top1"] == pytest.approx(sum(per_split) / 3)
    for n in (1, 2, 3):
        assert per_split[n - 1] == pytest.approx(direct_knn(backbone, f"ucf101:{ucf_root}:{n}", cfg))
    assert set(result.metrics) >= {"eval/ucf101/recall_at_1", "eval/ucf101-3/recall_at_10"}


# --- paramcrop eval ---------------------------------------------------------------------------


def invoke(*args: str):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "250"})  # the table unfolded


def test_paramcrop_eval_logs_downstream_metrics_into_the_run(workdir):
    from paramcrop import load_backbone

    cfg = tiny_cfg(**{"crop.method": "random"})
    _, run_id, client = tracked_train(cfg, workdir)
    out = invoke(run_id, "--data", VARIANT_SOURCE, "--protocol", "knn,retrieval", "--device", "cpu")
    assert out.exit_code == 0, out.output
    name = "synthetic-textures-videos_per_class4-frames24-size32-shapes2-motions2"
    metrics = client.get_run(run_id).data.metrics
    expected = direct_knn(load_backbone(f"runs:/{run_id}/backbone"), VARIANT_SOURCE, cfg)
    assert metrics[f"eval/{name}/knn_top1"] == pytest.approx(expected, abs=1e-9)
    assert f"eval/{name}/recall_at_5" in metrics and f"eval/{name}/linear_top1" not in metrics
    assert [m.step for m in client.get_metric_history(run_id, f"eval/{name}/knn_top1")] == [cfg.steps - 1]
    assert "knn_top1" in out.output and "synthetic-textures" in out.output and run_id[:8] in out.output


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"real test clips not found at {SHARED_VIDEOS}")
def test_paramcrop_eval_on_a_tiny_real_folder_says_what_it_could_not_compute(workdir):
    cfg = tiny_cfg(**{"crop.method": "random"})
    _, run_id, client = tracked_train(cfg, workdir)
    clips = sorted(p for p in SHARED_VIDEOS.iterdir() if p.suffix in (".avi", ".mp4"))[:2]
    for part in ("train", "test"):  # one video per class, the test videos copies of the train ones
        for cls, clip in zip(("a", "b"), clips):
            (workdir / "clips" / part / cls).mkdir(parents=True)
            shutil.copy(clip, workdir / "clips" / part / cls / clip.name)
    out = invoke(run_id, "--data", f"folder:{workdir / 'clips'}", "--protocol", "knn,linear,finetune",
                 "--device", "cpu")
    assert out.exit_code == 0, out.output
    run = client.get_run(run_id)
    assert run.data.metrics["eval/folder-clips/knn_top1"] == 1.0  # each test video is a copy of its train video
    assert "eval/folder-clips/linear_top1" not in run.data.metrics
    reasons = run.data.tags[f"{sinks.TAG_EVAL_SKIPPED}.folder-clips"]
    assert "linear" in reasons and "class(es) a, b have fewer" in reasons and "finetune_steps is 0" in reasons
    assert "linear" in out.output and "skipped" in out.output


def test_paramcrop_eval_refuses_bad_input(workdir):
    assert invoke("0123abcd", "--data", "nosuch:x").exit_code == 2
    out = invoke("--data", "synthetic")
    assert out.exit_code == 2 and "RUN_ID or --study" in out.output
    out = invoke("x", "--data", "synthetic", "--protocol", "knn,svm")
    assert out.exit_code == 2 and "svm" in out.output
    out = invoke("x", "--data", "synthetic", "--device", "tpu")
    assert out.exit_code == 2 and "device must be auto, cpu, cuda or cuda:N" in out.output


def test_a_model_queued_while_the_store_is_down_is_spooled_and_replayed(workdir):
    import mlflow.pytorch

    from studies.mlflow_sink import MlflowSink, replay_spool
    from studies.tracking import get_or_create_experiment, open_tracking_store

    client = open_tracking_store(os.environ["MLFLOW_TRACKING_URI"])
    run = client.create_run(get_or_create_experiment(client, "spool"))
    sink = MlflowSink(client, run.info.run_id, spool_dir=workdir / "spool")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 3)).eval()
    sink._down_until = float("inf")  # as after a failed write: non-blocking flushes wait
    sink.log_model("backbone", module, torch.zeros(1, 2, 3, 4))
    assert sink.queued == 1
    path = sink._spool("FINISHED", 0)
    replay_spool(client, path)
    x = torch.randn(5, 2, 3, 4)
    with torch.no_grad():
        assert torch.equal(mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/backbone")(x), module(x))
    assert not path.exists() and not any((workdir / "spool").iterdir())


def test_a_study_selects_the_latest_finished_run_of_each_trial(workdir):
    from studies.evaluate import select_runs
    from studies.tracking import get_or_create_experiment, open_tracking_store

    client = open_tracking_store(os.environ["MLFLOW_TRACKING_URI"])
    experiment = get_or_create_experiment(client, "st")
    made = {}
    for trial, status in ((0, "FINISHED"), (1, "FAILED"), (1, "FINISHED"), (2, "FINISHED"), (2, "FINISHED")):
        run = client.create_run(experiment, tags={sinks.TAG_ROLE: "trial", sinks.TAG_STUDY: "st",
                                                  sinks.TAG_TRIAL: str(trial)})
        client.set_terminated(run.info.run_id, status=status)
        made.setdefault(trial, []).append(run.info.run_id)
    assert [r.info.run_id for r in select_runs(client, study="st")] == [made[0][0], made[1][1], made[2][1]]
    assert [r.info.run_id for r in select_runs(client, study="st", trial=1)] == [made[1][1]]
    # --best: the Optuna study's best trial names its run
    import optuna

    from studies.runner import RUN_ATTR
    from studies.storage import open_storage

    study = optuna.create_study(study_name="st", storage=open_storage(None), direction="maximize")
    for value, run_id in ((0.5, made[0][0]), (0.9, made[2][1]), (0.1, made[1][1])):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={RUN_ATTR: run_id}))
    assert [r.info.run_id for r in select_runs(client, study="st", best=True)] == [made[2][1]]
    with pytest.raises(ValueError, match="no finished trial 7 run"):
        select_runs(client, study="st", trial=7)
    with pytest.raises(ValueError, match="no MLflow experiment named 'nosuch'"):
        select_runs(client, study="nosuch")
