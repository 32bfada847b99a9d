"""What the user sees: experiment kind tags, runs-page URLs, a quiet torch.compile on CPU, the
80-column progress line, named Optuna objectives."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from cli import app
from conftest import TINY_DRAWS, TINY_SOURCE
from paramcrop import sinks
from paramcrop.runtime import CPP_EXTENSION_LOGGER
from paramcrop.train import progress_bar, progress_status
from studies.storage import DEFAULT_STORAGE, open_storage
from studies.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, get_or_create_experiment, run_url, runs_url

REPO = Path(__file__).resolve().parent.parent
SPEC = {"name": "ui", "data": TINY_SOURCE, "sampler": "grid",
        "config": {"steps": 2, "batch_size": 8, "log_every": 1, "visualize_at": 0,
                   "data": {"frames": 16, "stride": 1, "size": 32}, "view": {"frames": 8, "size": 32},
                   "eval": {"linear": False, "retrieval": False, "draw_per_class": TINY_DRAWS}, "augment": {"blur_p": 0.0},
                   "crop": {"method": "random"}},
        "objective": [{"metric": sinks.EVAL_KNN_TOP1, "direction": "maximize"},
                       {"metric": "train/seconds", "direction": "minimize"}]}


def test_experiments_are_tagged_custom_model_development_also_when_they_existed(workdir):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    fresh = get_or_create_experiment(client, "fresh")
    old = client.create_experiment("old")  # made without the tag
    assert get_or_create_experiment(client, "old") == old
    for experiment_id in (fresh, old):
        assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == \
               "custom_model_development"


def test_study_run_names_its_objectives_tags_its_experiment_and_prints_its_runs_page_and_report(workdir):
    (workdir / "ui.yaml").write_text(yaml.safe_dump(SPEC))
    result = CliRunner().invoke(app, ["study", "run", str(workdir / "ui.yaml"), "--no-progress", "--report"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="ui", storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    assert study.metric_names == [sinks.EVAL_KNN_TOP1, "train/seconds"]
    experiment = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name("ui")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    view = "?workflowType=machine_learning"  # past MLflow's GenAI landing (studies/tracking.py UI_VIEW)
    assert url + view == runs_url(experiment.experiment_id)
    assert result.output.count(url + view) == 1 and "paramcrop ui" in result.output
    parent = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_runs(
        [experiment.experiment_id], f"tags.`{sinks.TAG_ROLE}` = 'study'")[0].info.run_id
    report = f"{url}/{parent}/artifacts/report.html{view}"
    assert run_url(experiment.experiment_id, parent, "report.html") == report and report in result.output
    assert (workdir / "analysis-ui" / "ui.html").is_file() and (workdir / "analysis-ui" / "ui.md").is_file()
    artifacts = {a.path for a in MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).list_artifacts(parent)}
    assert {"report.html", "report.md"} <= artifacts


def test_ui_prints_the_experiments_runs_page(workdir, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, **kw: calls.append(command) or 0)
    experiment_id = get_or_create_experiment(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]), "shown")
    result = CliRunner().invoke(app, ["ui", "--experiment", "shown", "--port", "5123"])
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs" in result.output and len(calls) == 1
    missing = CliRunner().invoke(app, ["ui", "--experiment", "nope"])
    assert missing.exit_code == 2 and "no experiment 'nope'" in missing.output and len(calls) == 1


def test_the_no_cuda_runtime_notice_is_dropped_and_nothing_else(caplog):
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    with caplog.at_level(logging.WARNING, logger=CPP_EXTENSION_LOGGER):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("some other warning")
    assert [r.getMessage() for r in caplog.records] == ["some other warning"]


@pytest.mark.parametrize("first", ["", "import paramcrop.runtime; "])
def test_importing_cpp_extension_without_cuda_is_quiet_after_paramcrop(tmp_path, first):
    """``torch.utils.cpp_extension`` warns at import when a CUDA_HOME exists but CUDA does not (what
    inductor's first compile imports on a CPU machine); after paramcrop.runtime it does not."""
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", first + "import torch.utils.cpp_extension"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("No CUDA runtime is found" in out.stderr) == (not first)


@pytest.mark.parametrize("completed,total", [(7, 200), (9999, 10000)])
def test_the_progress_line_fits_80_columns(completed, total):
    console = Console(width=80, record=True, force_terminal=True)
    with progress_bar(console=console) as bar:
        task = bar.add_task("train", total=total, completed=completed,
                            status=progress_status(12.3456, 0.4321, 1234.0))
        bar.refresh()
        bar.update(task, completed=completed + 1)
    text = console.export_text()
    line = [row for row in text.splitlines() if "steps" in row][-1]
    assert "…" not in text
    for field in (f"{completed + 1}/{total} steps", "loss 12.346", "iou 0.43", "1234 clips/s", "ETA"):
        assert field in line, line
