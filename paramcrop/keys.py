"""Dotted config keys: the error every config check raises, old key names and their current
ones, ``--set key=value`` parsing, and flattening a nested config into dotted keys."""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the fix."""


RENAMED_KEYS = {"objectives": "losses", "augment.strength": "augment.jitter_scale"}
"""Old config key (a section or a dotted key) -> its name now: the old name is still read (with a
:class:`RenamedKeyWarning`) in configs, specs and ``--set``, and :func:`current_key` maps the params of
runs logged before. A renamed dotted key stays in its section."""


class RenamedKeyWarning(DeprecationWarning):
    """A config key given under its old name (:data:`RENAMED_KEYS`); it is read as the new one."""


def current_key(key: str, warn: bool = False) -> str:
    """A dotted key (or a section name) under its current name: ``objectives.region`` -> ``losses.region``,
    ``augment.strength`` -> ``augment.jitter_scale``; ``warn``: a :class:`RenamedKeyWarning` when it was
    an old name."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        old = ".".join(parts[:n])
        if old in RENAMED_KEYS:
            new = ".".join([RENAMED_KEYS[old], *parts[n:]])
            if warn:
                warnings.warn(f"config key {key!r} is deprecated: read as {new!r}, write that instead",
                              RenamedKeyWarning, stacklevel=3)
            return new
    return key


def current_names(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``data`` (the config dict, or its section ``prefix``) with old key names mapped to the new ones
    (a warning each), sections included; both names of one key is a :class:`ConfigError`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        new = current_key(prefix + key, warn=True)
        name = new[len(prefix):]
        if name != key and name in data:
            old = prefix + key
            raise ConfigError(f"the config has both {old!r} and {new!r}: keep only {new!r} ({old!r} is its old name)")
        out[name] = current_names(value, new + ".") if isinstance(value, Mapping) else value
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "crop.strength", 0.5)`` sets ``d["crop"]["strength"]``."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a config section")
        node = node[part]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"crop.strength=0.5"`` -> ``("crop.strength", 0.5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. crop.strength=0.5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
