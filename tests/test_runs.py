"""studies/runs.py: run names (and so run folders) tell apart every crop, framework, backbone,
head and auxiliary-loss setting, and keep the plain name for the defaults."""
from __future__ import annotations

import pytest

from paramcrop.config import TrainConfig
from studies.runs import run_name
from conftest import TINY_DRAWS

BASE = {"crop": {"method": "paramcrop", "strength": 1.0}, "framework": {"name": "simclr"},
        "backbone": {"name": "tiny3d"}, "seed": 3}


def name(**overrides) -> str:
    return run_name(TrainConfig.from_dict(BASE).with_overrides(overrides))


def test_defaults_keep_the_plain_name():
    assert name() == "paramcrop-l1-simclr-tiny3d-s3"
    assert name(**{"head.name": "mlp", "losses.region": 0.0, "losses.order": 0}) == name()
    assert run_name(TrainConfig.from_dict({"crop": {"method": "random"}})) == "random-simclr-tiny3d-s0"


@pytest.mark.parametrize("overrides, expected", [
    ({"head.name": "cate"}, "paramcrop-l1-simclr-tiny3d-cate-s3"),
    ({"head.name": "cate", "head.depth": 1}, "paramcrop-l1-simclr-tiny3d-cate-s3"),
    ({"losses.region": 1.0}, "paramcrop-l1-simclr-tiny3d-region-s3"),
    ({"losses.order": 1}, "paramcrop-l1-simclr-tiny3d-order-s3"),
    ({"losses.region": 1.0, "losses.order": 0.5}, "paramcrop-l1-simclr-tiny3d-region-order0.5-s3"),
    ({"head.name": "cate", "losses.region": 2.0, "losses.order": 1.0, "crop.strength": 0.5},
     "paramcrop-l0.5-simclr-tiny3d-cate-region2-order-s3"),
])
def test_head_and_losses_are_in_the_name(overrides, expected):
    assert name(**overrides) == expected


def test_names_differ_whenever_head_or_losses_differ():
    variants = [{}, {"head.name": "cate"}, {"losses.region": 1.0}, {"losses.order": 1.0},
                {"losses.region": 1.0, "losses.order": 1.0}, {"losses.region": 0.5},
                {"head.name": "cate", "losses.region": 1.0}]
    names = [name(**v) for v in variants]
    assert len(set(names)) == len(names), names


def test_with_losses_matches_cli_flag():
    cfg = TrainConfig.from_dict(BASE).with_losses(["region,order"])
    assert run_name(cfg) == "paramcrop-l1-simclr-tiny3d-region-order-s3"


# --- paramcrop train end to end -------------------------------------------------------------------
TINY_TRAIN = ["--data", "synthetic:videos_per_class=6,frames=24,size=32,shapes=2,motions=2", "--device", "cpu",
              "--steps", "3", "--batch-size", "4", "--no-progress", "--set", "data.size=32", "--set", "data.stride=1",
              "--set", "view.size=32", "--set", "log_every=1", "--set", "visualize_at=0",
              "--set", "eval.linear=false", "--set", "eval.retrieval=false", "--set", f"eval.draw_per_class={TINY_DRAWS}"]


def train(*args: str):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, ["train", *TINY_TRAIN, *args])


def test_train_records_a_finished_run_with_params_histories_and_resolved_config(workdir):
    import os

    import yaml
    from mlflow.tracking import MlflowClient

    from paramcrop import sinks

    result = train("--crop", "cvrl", "--experiment", "e2e")
    assert result.exit_code == 0, result.output
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags[sinks.TAG_ROLE] == "train"
    assert run.data.params["crop.method"] == "cvrl" and run.data.params["crop.power"] == "1.0"  # a default, recorded
    for metric in (sinks.TRAIN_LOSS, *sinks.VIEW_METRICS):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [0, 1, 2], metric
    assert 0.0 <= run.data.metrics[sinks.EVAL_KNN_TOP1] <= 1.0
    config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir))))
    assert config["crop"] == {"method": "cvrl", "area": [0.3, 1.0], "aspect": [0.5, 2.0], "duration": 0.5,
                              "power": 1.0}
    assert config["steps"] == 3 and config["view"]["size"] == 32


@pytest.mark.parametrize("uri,message", [
    ("sqlite:///{tmp}/missing/mlflow.db", "cannot create the MLflow store"),
    ("http://127.0.0.1:1", "cannot reach the MLflow tracking store http://127.0.0.1:1"),
])
def test_train_refuses_a_tracking_store_that_cannot_work_before_building(workdir, monkeypatch, uri, message):
    monkeypatch.setenv("PARAMCROP_TRACKING_RETRY_S", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = train("--tracking-uri", uri.format(tmp=workdir))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (workdir / "paramcrop-runs").exists() and not (workdir / "mlflow.db").exists()
    assert not (workdir / "missing").exists()
