"""paramcrop.checks: the one argument-validation style (name, valid values, value given)."""
import math

import pytest

from paramcrop import checks
from paramcrop.crops.base import check_range


@pytest.mark.parametrize("call, message", [
    (lambda: checks.positive("lr", 0), "lr must be a number > 0, got 0"),
    (lambda: checks.positive("lr", "1"), "lr must be a number > 0, got '1'"),
    (lambda: checks.positive("steps", 2.0, integer=True), "steps must be an integer > 0, got 2.0"),
    (lambda: checks.positive("steps", True, integer=True), "steps must be an integer > 0, got True"),
    (lambda: checks.at_least("bins", 1, 2, integer=True), "bins must be an integer >= 2, got 1"),
    (lambda: checks.in_range("momentum", 1.5, 0, 1), "momentum must be a number in [0, 1], got 1.5"),
    (lambda: checks.in_range("p", 0, 0, 1, low_open=True), "p must be a number in (0, 1], got 0"),
    (lambda: checks.in_range("p", 1, 0, 1, high_open=True), "p must be a number in [0, 1), got 1"),
    (lambda: checks.one_of("optimizer", "rmsprop", ("adam", "sgd")),
     "optimizer must be one of adam, sgd, got 'rmsprop'"),
    (lambda: checks.one_of("optimizer", None, ("adam", "sgd")), "optimizer must be one of adam, sgd, got None"),
    (lambda: checks.range_pair("area", (0.5, 0.2), 0.001, 1.0),
     "area must be a (min, max) pair with 0.001 <= min <= max <= 1.0, got (0.5, 0.2)"),
    (lambda: checks.range_pair("area", (0.5,), 0.001, 1.0),
     "area must be a (min, max) pair with 0.001 <= min <= max <= 1.0, got (0.5,)"),
    (lambda: checks.range_pair("blur_sigma", (0, 1), 0, math.inf, low_open=True),
     "blur_sigma must be a (min, max) pair with 0 < min <= max <= inf, got (0, 1)"),
])
def test_messages_name_the_argument_the_valid_values_and_the_value(call, message):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


def test_valid_values_come_back_converted():
    assert checks.positive("lr", 1) == 1.0 and isinstance(checks.positive("lr", 1), float)
    assert checks.positive("steps", 3, integer=True) == 3 and checks.at_least("w", 0, 0) == 0.0
    assert checks.in_range("p", 0, 0, 1) == 0.0 and checks.in_range("p", 1, 0, 1) == 1.0
    assert checks.range_pair("area", [0.2, 0.2], 0.001, 1) == (0.2, 0.2)
    assert checks.one_of("optimizer", "sgd", ("adam", "sgd")) == "sgd"
    assert check_range is checks.range_pair  # the crops' historical name


def test_constructor_keys_and_defaults_are_the_registry_and_config_source():
    from paramcrop.augment import ClipAugment
    from paramcrop.config import TrainConfig
    from paramcrop.frameworks import FRAMEWORKS, MoCo
    from paramcrop.registry import constructor_defaults, constructor_keys

    def factory(size, a, b=2, *rest, c=3, **extra):
        return None

    assert constructor_keys(factory, 1) == ["a", "b", "c"] and constructor_defaults(factory, 1) == {"b": 2, "c": 3}
    assert FRAMEWORKS.valid_keys("moco", 2) == constructor_keys(MoCo, 2)
    assert FRAMEWORKS.defaults("moco", 2)["shuffle_bn_groups"] == 2
    resolved = TrainConfig().with_overrides({"framework.name": "moco"}).resolved()
    assert resolved["framework"]["shuffle_bn_groups"] == 2
    assert constructor_defaults(ClipAugment).keys() <= resolved["augment"].keys()
    assert "flip_p" in constructor_keys(ClipAugment)
