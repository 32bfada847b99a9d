import pytest
import yaml

from paramcrop.config import TrainConfig
from paramcrop.keys import ConfigError, parse_override
from paramcrop.crops import CROPS


def test_defaults_validate_and_flatten_to_dotted_keys():
    flat = TrainConfig().flatten()
    assert flat["crop.method"] == "paramcrop"
    assert flat["framework.name"] == "simclr" and flat["backbone.name"] == "tiny3d"
    assert flat["data.source"] == "synthetic" and flat["optim.lr"] == pytest.approx(1e-3)


def test_unknown_top_level_and_nested_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) stepz; valid keys: data, view"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys: optim\.lr, optim\.weight_decay"):
        TrainConfig.from_dict({"optim": {"lrr": 0.1}})


def test_component_keys_checked_against_the_registry():
    with pytest.raises(ConfigError, match=r"crop\.strenght.*valid keys: crop\.strength"):
        TrainConfig.from_dict({"crop": {"method": "paramcrop", "strenght": 1.0}})
    with pytest.raises(ConfigError, match="backbone.name.*valid backbones"):
        TrainConfig.from_dict({"backbone": {"name": "resnet9000"}})
    with pytest.raises(ConfigError, match=r"augment\.flipp"):
        TrainConfig.from_dict({"augment": {"flipp": 0.5}})


@pytest.mark.parametrize("data,match", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": "many"}, "batch_size must be an integer"),
    ({"optim": {"lr": -1.0}}, "optim.lr must be > 0"),
    ({"view": {"size": 128}}, "cannot be larger than the raw clip"),
    ({"precision": "fp8"}, "precision"),
    ({"device": "tpu"}, "device"),
    ({"eval": {"linear": "yes"}}, "eval.linear must be true or false"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)


def test_overrides_and_component_switch():
    cfg = TrainConfig().with_overrides({"crop.strength": 0.5, "steps": 7})
    assert cfg.crop == {"method": "paramcrop", "strength": 0.5} and cfg.steps == 7
    # switching the method drops the old method's keys, in whatever order the overrides come
    cfg = cfg.with_overrides({"crop.area": [0.5, 1.0], "crop.method": "random"})
    assert cfg.crop == {"method": "random", "area": [0.5, 1.0]}
    with pytest.raises(ConfigError, match=r"crop\.strength"):
        TrainConfig().with_overrides({"crop.method": "random", "crop.strength": 1.0})


def test_yaml_round_trip_and_override_parsing():
    cfg = TrainConfig().with_overrides({"framework.name": "moco", "seed": 3})
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    # the resolved form (a run's config.yaml) spells out every default and reads back to itself
    resolved = TrainConfig().to_yaml(resolved=True)
    assert yaml.safe_load(resolved)["crop"] == {"method": "paramcrop", **CROPS.defaults("paramcrop", 1)}
    assert TrainConfig.from_yaml(resolved).to_yaml(resolved=True) == resolved
    assert parse_override("crop.strength=0.5") == ("crop.strength", 0.5)
    assert parse_override("data.source=folder:/x") == ("data.source", "folder:/x")
    assert parse_override("crop.area=[0.3, 1]") == ("crop.area", [0.3, 1])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("crop.strength")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml("steps: [1, 2")


def test_bookkeeping_keys_are_declared_on_the_config_fields():
    from analysis.groups import EXCLUDED
    from paramcrop.config import bookkeeping_keys

    keys = bookkeeping_keys()
    assert {"snapshot_every", "log_every", "device", "data.workers", "checkpoint_every"} <= keys
    assert not {"crop.strength", "eval.every", "steps", "seed", "data.source"} & keys
    assert keys <= set(TrainConfig().flatten())  # every one is a real, logged key
    assert EXCLUDED == keys | {"seed"}  # the analyses group runs by everything else
