"""Evaluation draws of the synthetic benchmark, their persisted windows, and per-query predictions."""
import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_SYNTHETIC_CACHE, TINY_DRAWS, TINY_SOURCE
from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.data import EvalClips, SyntheticConfig, resolve_source
from paramcrop.data.records import first_per_class
from paramcrop.data.sources import evaluation_draws
from paramcrop.data.synthetic import DRAW_STREAMS, ensure_draws, sample_scene
from paramcrop.data.video import probe_video, read_frames
from paramcrop.predictions import artifact_path, source_of
from paramcrop.train import Trainer

TINY_DESIGN = SyntheticConfig.from_options(TINY_SOURCE.partition(":")[2])

DEFAULT_TRAIN_SHA256 = "ef2991e96ec86739746563823f2de68a5881f118751eefb3a4c05787feedaaf5"
"""sha256 over the default benchmark's pretraining videos (training split less validation, sorted by
path: relative path then bytes), computed by the code before evaluation draws existed (commit 1748ae4)."""
DEFAULT_TRAIN_DIGEST = "1c1df6d221393bb5"  # dataset_digest of the same list, by that code


def test_default_pretraining_videos_are_bit_identical_to_before_the_draws(monkeypatch):
    from paramcrop.data.sources import dataset_digest

    monkeypatch.setenv("PARAMCROP_CACHE", str(TEST_SYNTHETIC_CACHE))
    train = resolve_source("synthetic").with_validation(TrainConfig().data.val_fraction).train
    root = train[0].path.parents[2]  # <cache>/<benchmark>/train/<class>/<video>
    digest = hashlib.sha256()
    for record in sorted(train, key=lambda r: r.path.as_posix()):
        digest.update(record.path.relative_to(root).as_posix().encode())
        digest.update(record.path.read_bytes())
    assert len(train) == 152 and digest.hexdigest() == DEFAULT_TRAIN_SHA256
    assert dataset_digest(train) == DEFAULT_TRAIN_DIGEST


def decoded(path: Path) -> np.ndarray:
    info = probe_video(path)
    return read_frames(path, info, range(info.frames), TINY_DESIGN.size)


def test_draws_are_deterministic_class_balanced_and_share_no_video(tmp_path):
    per_class = 4
    first = ensure_draws(TINY_DESIGN, per_class, tmp_path / "a", progress=False)
    again = ensure_draws(TINY_DESIGN, per_class, tmp_path / "b", progress=False)
    for split in DRAW_STREAMS:
        records, other = getattr(first, split), getattr(again, split)
        assert [r.path.read_bytes() for r in records] == [r.path.read_bytes() for r in other]  # seeded
        counts = np.bincount([r.label for r in records], minlength=len(TINY_DESIGN.classes))
        assert counts.tolist() == [per_class] * len(TINY_DESIGN.classes)
    benchmark = resolve_source(TINY_SOURCE, cache_dir=tmp_path / "a")
    videos = {"train": benchmark.train, "test": benchmark.test, "val draw": first.val, "test draw": first.test}
    seen: dict[bytes, str] = {}
    for name, records in videos.items():  # the decoded frames, not the names
        for record in records:
            key = hashlib.sha256(decoded(record.path).tobytes()).digest()
            assert key not in seen, f"{record.path} ({name}) decodes like a video of {seen[key]}"
            seen[key] = name
    assert len(seen) == sum(len(r) for r in videos.values())
    # the streams differ at the scene level too: not the same draw re-encoded
    assert not np.array_equal(sample_scene(TINY_DESIGN, 0, 0).centers, sample_scene(TINY_DESIGN, 0, 0, 2).centers)


def test_persisted_windows_equal_decoding_and_are_decoded_once(tmp_path, monkeypatch):
    import paramcrop.data.datasets as datasets

    draws = ensure_draws(TINY_DESIGN, 2, tmp_path, progress=False)
    geometry = (4, 3, 16, 2)  # frames, stride, size, clips per video
    plain = EvalClips(draws.test, *geometry)
    persisted = EvalClips(draws.test, *geometry, persist=draws.folder)
    for (a, label_a), (b, label_b) in zip(plain, persisted):
        assert torch.equal(a, b) and label_a == label_b and a.shape == (2, 3, 4, 16, 16)
    assert len(list(draws.folder.glob("windows-*.npy"))) == 1 and not list(draws.folder.glob("*.tmp"))
    expected, calls = plain[3][0], []
    read = datasets.read_frames
    monkeypatch.setattr(datasets, "read_frames", lambda *a, **k: calls.append(a) or read(*a, **k))
    again = EvalClips(draws.test, *geometry, persist=draws.folder)
    assert torch.equal(again[3][0], expected) and calls == []  # read from the array, not decoded again
    other = EvalClips(draws.test, 4, 3, 24, 1, persist=draws.folder)  # another geometry: its own array
    assert other[0][0].shape == (1, 3, 4, 24, 24) and len(list(draws.folder.glob("windows-*.npy"))) == 2


def test_first_per_class_against_counting():
    labels = [2, 0, 0, 1, 2, 0, 2, 2, 1]
    records = [type("R", (), {"label": y})() for y in labels]
    chosen = first_per_class(records, 2)
    naive = [i for i, y in enumerate(labels) if labels[:i].count(y) < 2]
    assert chosen == naive == [0, 1, 2, 3, 4, 8]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_final_evaluation_logs_per_query_predictions_that_give_its_metrics(workdir):
    cfg = TrainConfig().with_overrides({
        "data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1, "data.size": 32, "view.frames": 8,
        "view.size": 32, "batch_size": 8, "steps": 4, "log_every": 1, "visualize_at": 0, "eval.every": 2,
        "eval.retrieval": False, "eval.knn_k": 5, "eval.draw_per_class": TINY_DRAWS})
    sink = sinks.MemorySink()
    trainer = Trainer(cfg, workdir / "run", sink=sink, progress=False)
    result = trainer.fit()
    logged = {Path(p).name: p for p, folder in sink.artifacts if folder == "predictions"}
    assert sorted(logged) == ["test.csv", "val.csv"]  # the final evaluation only, not the online one
    draws = evaluation_draws(TINY_SOURCE, TINY_DRAWS)
    for split, records in (("test", draws.test), ("val", draws.val)):
        rows = read_rows(logged[f"{split}.csv"])
        assert [(r["video"], int(r["label"])) for r in rows] == [
            (p.path.relative_to(p.path.parents[1]).as_posix(), p.label) for p in records]
        for column, metric in (("knn", "knn_top1"), ("linear", "linear_top1")):
            name = f"eval/val/{metric}" if split == "val" else f"eval/{metric}"
            assert source_of(name) == (artifact_path(split), column)
            accuracy = sum(r[column] == r["label"] for r in rows) / len(rows)
            assert accuracy == pytest.approx(result.eval_metrics[name], abs=1e-7)  # the metric: a float32 mean
    assert trainer.plan.online_per_class == 40 and len(sink.series(sinks.EVAL_VAL_KNN_TOP1)) == 2


def test_the_benchmark_own_videos_stay_reachable_and_real_sources_keep_their_splits(workdir):
    cfg = TrainConfig().with_overrides({"data.source": TINY_SOURCE, "data.frames": 16, "data.stride": 1,
                                        "data.size": 32, "view.frames": 8, "view.size": 32,
                                        "eval.draw_per_class": 0})
    trainer = Trainer(cfg, workdir / "run", progress=False)
    dataset = resolve_source(TINY_SOURCE).with_validation(cfg.data.val_fraction)
    assert [r.path for r in trainer.eval_sets[1].records] == [r.path for r in dataset.test]
    assert [r.path for r in trainer.val_set.records] == [r.path for r in dataset.val]
    assert trainer.plan.online_per_class is None
    assert evaluation_draws("folder:/anywhere", 320) is None  # parsed no further: real datasets do not draw


def test_metric_names_and_their_prediction_files():
    from paramcrop.predictions import metric_name

    cases = {"eval/knn_top1": ("predictions/test.csv", "knn"), "eval/val/linear_top1": ("predictions/val.csv", "linear"),
             "eval/own-split/knn_top1": ("predictions/own-split/test.csv", "knn"),
             "eval/own-split/val/knn_top1": ("predictions/own-split/val.csv", "knn")}
    for name, source in cases.items():
        assert source_of(name) == source
    for name in ("eval/recall_at_5", "eval/finetune_top1", "train/loss", "view/iou", "eval/a/b/c/knn_top1"):
        assert source_of(name) is None
    assert metric_name("eval/knn_top1", "val") == "eval/val/knn_top1"
    assert metric_name("eval/knn_top1", "val", "own-split") == "eval/own-split/val/knn_top1"
    assert metric_name("eval/linear_top1", "test", "own-split") == "eval/own-split/linear_top1"


def test_paramcrop_eval_logs_a_runs_predictions_and_its_own_split_reading(workdir):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from cli import app
    from studies.evaluate import run_config

    args = ["train", "--data", TINY_SOURCE, "--device", "cpu", "--steps", "2", "--batch-size", "4", "--no-progress",
            "--set", "data.size=32", "--set", "data.stride=1", "--set", "view.size=32", "--set", "visualize_at=0",
            "--set", "eval.retrieval=false", "--set", f"eval.draw_per_class={TINY_DRAWS}", "--experiment", "e"]
    assert CliRunner().invoke(app, args, catch_exceptions=False).exit_code == 0
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    result = CliRunner().invoke(app, ["eval", run.info.run_id, "--own-split"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = client.get_run(run.info.run_id)
    dataset = resolve_source(TINY_SOURCE).with_validation(TrainConfig().data.val_fraction)
    for split, videos in (("test", dataset.test), ("val", dataset.val)):
        rows = read_rows(client.download_artifacts(run.info.run_id, artifact_path(split, "own-split"), str(workdir)))
        assert sorted(r["video"] for r in rows) == sorted(v.path.relative_to(v.path.parents[1]).as_posix()
                                                          for v in videos)
        name = "eval/own-split/val/knn_top1" if split == "val" else "eval/own-split/knn_top1"
        assert run.data.metrics[name] == pytest.approx(sum(r["knn"] == r["label"] for r in rows) / len(rows), abs=1e-7)
    assert {"eval/knn_top1", "eval/val/knn_top1"} <= set(run.data.metrics)  # the run's own reading stays beside it
    assert run_config(client, run).eval.draw_per_class == TINY_DRAWS
    del run.data.params["eval.draw_per_class"]  # a run logged before draws existed evaluated on its own split
    assert run_config(client, run).eval.draw_per_class == 0


def test_a_studys_predictions_feed_analyze_variance(workdir):
    """The trainer's predictions, read by ``analyze variance``, against a hand computation from them."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from cli import app
    from test_studies import tiny_spec, write_spec

    spec = tiny_spec("drawn", seeds=[0, 1], search_space={"crop": {"type": "variants", "choices": {
        "random": {"crop.method": "random"}}}})
    result = CliRunner().invoke(app, ["study", "run", str(write_spec(workdir / "s.yaml", spec)), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    runs = [r for r in client.search_runs([client.get_experiment_by_name("drawn").experiment_id])
            if r.data.tags.get(sinks.TAG_ROLE) == "trial"]
    values, eval_vars = [], []
    for run in runs:
        rows = read_rows(client.download_artifacts(run.info.run_id, artifact_path("test"), str(workdir)))
        p = sum(r["knn"] == r["label"] for r in rows) / len(rows)
        assert len(rows) == 4 * TINY_DRAWS and run.data.metrics[sinks.EVAL_KNN_TOP1] == pytest.approx(p, abs=1e-7)
        values.append(run.data.metrics[sinks.EVAL_KNN_TOP1])
        eval_vars.append(p * (1 - p) / len(rows))
    result = CliRunner().invoke(app, ["analyze", "variance", "--study", "drawn", "--objective", "eval/knn_top1",
                                      "--out", str(workdir / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import pandas as pd

    row = pd.read_csv(workdir / "out" / "variance.csv").iloc[0]
    assert row["runs"] == 2 and row["queries"] == 4 * TINY_DRAWS
    assert row["between_sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert row["eval_se"] == pytest.approx(np.sqrt(np.mean(eval_vars)), abs=1e-6)
