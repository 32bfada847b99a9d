"""Registering a study's best backbone in the MLflow model registry."""
from __future__ import annotations

import mlflow
import mlflow.pytorch
import pytest
import torch
from test_studies import run_cli, study_and_runs, tiny_spec, write_spec
from torch import nn

from paramcrop import sinks
from studies.registration import TAG_OBJECTIVE_VALUE


def log_backbones(client, study) -> dict[int, nn.Module]:
    """A tiny module per trial, logged as its run's `backbone` model (as finished runs do); trial -> module.
    Through the project's own logging (no global MLflow tracking URI left behind for later tests)."""
    from studies.mlflow_sink import log_torch_model

    modules = {}
    for trial in study.trials:
        torch.manual_seed(100 + trial.number)
        modules[trial.number] = module = nn.Linear(4, 3)
        log_torch_model(client, trial.user_attrs["mlflow_run_id"], "backbone", module, torch.zeros(1, 4))
    return modules


def test_register_the_best_trials_backbone(workdir, monkeypatch):
    from paramcrop.train import Trainer

    # the final loss as the objective: two trials never tie on it (the kNN of 8 test clips can)
    spec = write_spec(workdir / "tiny.yaml", tiny_spec(objective={"metric": "train/loss", "direction": "minimize"}))
    with monkeypatch.context() as patch:  # trials that log no model (the trainer logs one at the end of every run)
        patch.setattr(Trainer, "_log_models", lambda self: None)
        assert run_cli("study", "run", str(spec), "--no-progress").exit_code == 0
    study, client, _ = study_and_runs("tiny", workdir)
    # before any backbone is logged: a clear error, exit 1, nothing registered
    result = run_cli("study", "register", "tiny", "tiny-backbone")
    assert result.exit_code == 1 and "has no 'backbone' model" in " ".join(result.output.split())
    assert client.search_registered_models() == []
    modules = log_backbones(client, study)
    values = {t.number: t.value for t in study.trials}
    best = min(values, key=values.get)
    other = 1 - best
    assert values[best] < values[other]

    result = run_cli("study", "register", "tiny", "tiny-backbone")
    assert result.exit_code == 0, result.output
    version = client.get_model_version("tiny-backbone", "1")
    assert version.run_id == study.trials[best].user_attrs["mlflow_run_id"]
    assert version.tags[sinks.TAG_STUDY] == "tiny" and version.tags[sinks.TAG_TRIAL] == str(best)
    assert version.tags[sinks.TAG_OBJECTIVE] == "train/loss"
    assert float(version.tags[TAG_OBJECTIVE_VALUE]) == values[best]
    loaded = mlflow.pytorch.load_model("models:/tiny-backbone/1")
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), modules[best](x)) and not torch.equal(loaded(x), modules[other](x))

    # --trial picks another one; study run --register on the finished study adds a version of the best
    assert run_cli("study", "register", "tiny", "tiny-backbone", "--trial", str(other)).exit_code == 0
    assert client.get_model_version("tiny-backbone", "2").tags[sinks.TAG_TRIAL] == str(other)
    result = run_cli("study", "run", str(spec), "--no-progress", "--register", "tiny-backbone")
    assert result.exit_code == 0, result.output
    assert client.get_model_version("tiny-backbone", "3").tags[sinks.TAG_TRIAL] == str(best)
    assert torch.equal(mlflow.pytorch.load_model("models:/tiny-backbone/3")(x), modules[best](x))


@pytest.mark.parametrize("args, code, message", [
    (["nope", "m"], 2, "no study 'nope'"),
    (["tiny", "m", "--trial", "7"], 1, "trial 7 of study 'tiny' is not COMPLETE"),
])
def test_register_bad_input(workdir, args, code, message):
    if args[0] == "tiny":
        import optuna

        from studies.storage import DEFAULT_STORAGE, open_storage

        optuna.create_study(study_name="tiny", storage=open_storage(str(workdir / DEFAULT_STORAGE)))
    else:
        (workdir / "paramcrop-studies.journal").touch()
    result = run_cli("study", "register", *args)
    assert result.exit_code == code and message in " ".join(result.output.split()), result.output
