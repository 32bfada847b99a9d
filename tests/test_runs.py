"""studies/runs.py: run names (and so run folders) tell apart every crop, framework, backbone,
head and objective setting, and keep the plain name for the defaults."""
from __future__ import annotations

import pytest

from paramcrop.config import TrainConfig
from studies.runs import run_name

BASE = {"crop": {"method": "paramcrop", "strength": 1.0}, "framework": {"name": "simclr"},
        "backbone": {"name": "tiny3d"}, "seed": 3}


def name(**overrides) -> str:
    return run_name(TrainConfig.from_dict(BASE).with_overrides(overrides))


def test_defaults_keep_the_plain_name():
    assert name() == "paramcrop-l1-simclr-tiny3d-s3"
    assert name(**{"head.name": "mlp", "objectives.region": 0.0, "objectives.order": 0}) == name()
    assert run_name(TrainConfig.from_dict({"crop": {"method": "random"}})) == "random-simclr-tiny3d-s0"


@pytest.mark.parametrize("overrides, expected", [
    ({"head.name": "cate"}, "paramcrop-l1-simclr-tiny3d-cate-s3"),
    ({"head.name": "cate", "head.depth": 1}, "paramcrop-l1-simclr-tiny3d-cate-s3"),
    ({"objectives.region": 1.0}, "paramcrop-l1-simclr-tiny3d-region-s3"),
    ({"objectives.order": 1}, "paramcrop-l1-simclr-tiny3d-order-s3"),
    ({"objectives.region": 1.0, "objectives.order": 0.5}, "paramcrop-l1-simclr-tiny3d-region-order0.5-s3"),
    ({"head.name": "cate", "objectives.region": 2.0, "objectives.order": 1.0, "crop.strength": 0.5},
     "paramcrop-l0.5-simclr-tiny3d-cate-region2-order-s3"),
])
def test_head_and_objectives_are_in_the_name(overrides, expected):
    assert name(**overrides) == expected


def test_names_differ_whenever_head_or_objectives_differ():
    variants = [{}, {"head.name": "cate"}, {"objectives.region": 1.0}, {"objectives.order": 1.0},
                {"objectives.region": 1.0, "objectives.order": 1.0}, {"objectives.region": 0.5},
                {"head.name": "cate", "objectives.region": 1.0}]
    names = [name(**v) for v in variants]
    assert len(set(names)) == len(names), names


def test_with_objectives_matches_cli_flag():
    cfg = TrainConfig.from_dict(BASE).with_objectives(["region,order"])
    assert run_name(cfg) == "paramcrop-l1-simclr-tiny3d-region-order-s3"
