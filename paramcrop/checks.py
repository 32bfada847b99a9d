"""Argument validation for constructors and pure functions: one style everywhere.

Each check raises ``ValueError`` whose message names the argument, the valid values and the value
given (``"temperature must be a number > 0, got 0"``), and returns the value converted (``float``
or ``int``) so a constructor can store it. Booleans are never numbers here (``True`` is not a
valid ``1``). Config-level checks (:mod:`paramcrop.config`) raise ``ConfigError`` with the dotted
key instead and wrap these messages.
"""
from __future__ import annotations

import numbers
from typing import Sequence


def _number(name: str, value: object, integer: bool, valid: str) -> float | int:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} {valid}, got {value!r}")
    return int(value) if integer else float(value)


def positive(name: str, value: object, integer: bool = False) -> float | int:
    """``value > 0`` (an ``int`` when ``integer``), returned as ``float`` (``int``)."""
    number = _number(name, value, integer, "> 0")
    if not number > 0:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} > 0, got {value!r}")
    return number


def at_least(name: str, value: object, low: float, integer: bool = False) -> float | int:
    """``value >= low`` (an ``int`` when ``integer``), returned as ``float`` (``int``)."""
    number = _number(name, value, integer, f">= {low}")
    if not number >= low:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} >= {low}, got {value!r}")
    return number


def in_range(name: str, value: object, low: float, high: float, low_open: bool = False,
             high_open: bool = False) -> float:
    """``low <= value <= high`` (``<`` on an open end), returned as ``float``."""
    interval = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    number = _number(name, value, False, interval)
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        raise ValueError(f"{name} must be a number {interval}, got {value!r}")
    return number


def one_of(name: str, value: object, valid: Sequence[str]) -> str:
    """``value`` is one of the strings ``valid``, returned as given."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
    return value


def range_pair(name: str, pair: Sequence[float], low: float, high: float,
               low_open: bool = False) -> tuple[float, float]:
    """A ``(min, max)`` pair with ``low <= min <= max <= high`` (``low < min`` when ``low_open``), as floats."""
    valid = f"a (min, max) pair with {low} {'<' if low_open else '<='} min <= max <= {high}"
    try:
        lo, hi = (float(v) for v in pair if not isinstance(v, bool))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {valid}, got {pair!r}") from None
    if not ((low < lo) if low_open else (low <= lo)) or not lo <= hi <= high:
        raise ValueError(f"{name} must be {valid}, got {tuple(pair)}")
    return lo, hi
