"""One name per concept: the auxiliary losses are ``losses.*`` (the old section ``objectives`` is still
read, with a deprecation), the colour jitter's scale is ``augment.jitter_scale`` (the old
``augment.strength`` is still read, with a deprecation), the adversarial strength is logged as
``train/strength``; analyses read runs logged under the old names."""
from __future__ import annotations

import os
import warnings

import pytest

from paramcrop import sinks
from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError, RenamedKeyWarning


def test_old_section_in_a_config_reads_as_losses_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'objectives' is deprecated.*'losses'"):
        cfg = TrainConfig.from_yaml("objectives: {region: 1, order_bins: 6}\nsteps: 5\n")
    assert (cfg.losses.region, cfg.losses.order, cfg.losses.order_bins, cfg.steps) == (1.0, 0.0, 6, 5)
    with pytest.warns(RenamedKeyWarning, match="'objectives.order' is deprecated.*'losses.order'"):
        over = TrainConfig().with_overrides({"objectives.order": 0.5})
    assert over.losses.order == 0.5 and over.losses.region == 0.0
    flat = over.flatten()
    assert {k for k in flat if k.startswith("losses.")} == {"losses.region", "losses.order",
                                                             "losses.region_temperature", "losses.order_bins"}
    assert not [k for k in flat if "objective" in k] and "objectives" not in over.resolved()
    assert TrainConfig.from_yaml(over.to_yaml(resolved=True)).losses.order == 0.5  # round trip, new name
    with pytest.raises(ConfigError, match="both 'objectives' and 'losses'"), pytest.warns(RenamedKeyWarning):
        TrainConfig.from_dict({"objectives": {"region": 1}, "losses": {"order": 1}})
    with pytest.raises(ConfigError, match="'objectives.order' and 'losses.order' both set"):
        TrainConfig().with_overrides({"objectives.order": 1, "losses.order": 2})
    with pytest.raises(ConfigError, match="losses.region must be >= 0"), pytest.warns(RenamedKeyWarning):
        TrainConfig.from_dict({"objectives": {"region": -1}})  # errors name the new key


def test_old_jitter_key_reads_as_jitter_scale_with_a_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = TrainConfig.from_dict({"augment": {"jitter_scale": 0.5, "flip_p": 0.0}, "crop": {"strength": 2.0}})
    with pytest.warns(RenamedKeyWarning, match="'augment.strength' is deprecated.*'augment.jitter_scale'"):
        old = TrainConfig.from_yaml("augment: {strength: 0.5, flip_p: 0.0}\ncrop: {strength: 2.0}\n")
    assert old == new and old.flatten() == new.flatten() and old.crop["strength"] == 2.0
    with pytest.warns(RenamedKeyWarning, match="'augment.strength' is deprecated"):
        over = TrainConfig().with_overrides({"augment.strength": 0.5, "augment.flip_p": 0.0, "crop.strength": 2.0})
    assert over == new
    with pytest.raises(ConfigError, match="both 'augment.strength' and 'augment.jitter_scale'"), \
            pytest.warns(RenamedKeyWarning):
        TrainConfig.from_dict({"augment": {"strength": 0.5, "jitter_scale": 0.5}})


def test_new_names_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = TrainConfig.from_dict({"losses": {"region": 2}}).with_overrides({"losses.order": 1})
        cfg = cfg.with_losses(["region"])
    assert (cfg.losses.region, cfg.losses.order) == (2.0, 1.0)


def _train(*args):
    from typer.testing import CliRunner

    from cli import app
    from test_runs import TINY_TRAIN

    return CliRunner().invoke(app, ["train", *TINY_TRAIN, "--crop", "random", *args])


def _params(experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    return run.data.params


def test_train_loss_flag_and_its_deprecated_aliases(workdir):
    result = _train("--objective", "region", "--set", "objectives.order=0.5", "--experiment", "old")
    assert result.exit_code == 0, result.output
    assert "--objective is deprecated: read as --loss" in result.stderr
    assert "config key 'objectives.order' is deprecated" in result.stderr
    old = _params("old")
    assert (old["losses.region"], old["losses.order"]) == ("1.0", "0.5")
    assert not [k for k in old if k.startswith("objectives.")]
    result = _train("--loss", "region", "--experiment", "new")
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.stderr and "--objective" not in _train("--help").output
    new = _params("new")
    assert (new["losses.region"], new["losses.order"]) == ("1.0", "0.0")
    result = _train("--loss", "regoin", "--experiment", "bad")
    assert result.exit_code == 2 and "unknown loss(es) regoin; valid losses: region, order" in result.stderr


def test_strength_is_logged_as_train_strength_each_logged_step(tmp_path):
    from paramcrop.train import Trainer
    from test_train import tiny_config

    cfg = tiny_config(**{"crop.method": "paramcrop", "crop.strength": 0.5, "crop.warmup_steps": 4, "steps": 6,
                         "log_every": 2})
    sink = sinks.MemorySink()
    Trainer(cfg, tmp_path, sink=sink, progress=False).fit()
    logged = sink.series(sinks.TRAIN_STRENGTH)
    assert [s for s, _ in logged] == [s for s, _ in sink.series(sinks.TRAIN_LOSS)] and len(logged) >= 3
    for step, value in logged:  # linear warmup to 0.5 over 4 steps, by hand
        assert value == pytest.approx(0.5 * min(1.0, step / 4)), step
    assert "train/lambda" not in {name for _, name, _ in sink.history}


def test_analysis_reads_runs_logged_with_the_old_loss_params(tmp_path):
    """A run logged before the rename (``objectives.region``) and one after (``losses.region``) of
    the same config are one configuration; an old run with the loss off joins the new default."""
    import pandas as pd

    from test_analysis import Store, cli_run

    s = Store(tmp_path / "store")
    eid, parent = s.study("renamed")
    base = {"crop.method": "random", "framework.name": "simclr", "backbone.name": "tiny3d", "steps": 100}
    runs = [({"objectives.region": "1.0", "objectives.order": "0.0"}, 0.50),
            ({"losses.region": "1.0", "losses.order": "0.0"}, 0.54),
            ({"objectives.region": "0.0", "objectives.order": "0.0"}, 0.30),
            ({"losses.region": "0.0", "losses.order": "0.0"}, 0.34),
            ({"losses.region": "0.0", "losses.order": "1.0"}, 0.40)]
    for seed, (params, value) in enumerate(runs):
        s.run(eid, parent, {**base, **params, "seed": seed}, final={sinks.EVAL_KNN_TOP1: value})
    out = tmp_path / "table"
    result = cli_run(["analyze", "table", "--study", "renamed", "--tracking-uri", s.uri, "--out", str(out), "--no-log"])
    assert result.exit_code == 0, result.output
    data = pd.read_csv(out / "table.csv")
    assert list(zip(data["losses"], data["n"])) == [("none", 2), ("region", 2), ("order", 1)]
    assert list(data["mean"]) == pytest.approx([0.32, 0.52, 0.40], abs=1e-12)
    assert not [c for c in data.columns if "objectives" in c]
