"""A small name -> constructor registry (timm-style), shared by crops, frameworks and backbones.

``create`` validates keyword arguments against the constructor's signature, so an unknown
name or an unknown key fails early with the list of valid ones instead of deep in training.
:func:`constructor_keys` and :func:`constructor_defaults` are the one place that reads a
constructor's signature (the registries and :mod:`paramcrop.config` use them).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


def _parameters(fn: Callable[..., Any], n_positional: int) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())[n_positional:]


def constructor_keys(fn: Callable[..., Any], n_positional: int = 0) -> list[str]:
    """Keyword arguments ``fn`` (a class or factory) accepts once ``n_positional`` leading arguments
    are given positionally, in signature order (``*args`` and ``**kwargs`` excluded)."""
    return [p.name for p in _parameters(fn, n_positional) if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def constructor_defaults(fn: Callable[..., Any], n_positional: int = 0) -> dict[str, Any]:
    """Those of :func:`constructor_keys` that have defaults, with the defaults."""
    return {p.name: p.default for p in _parameters(fn, n_positional) if p.default is not inspect.Parameter.empty}


class Registry(Generic[T]):
    """Maps names to constructors of one kind of component (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@CROPS.register("random")`` above a class or factory function."""

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def valid_keys(self, name: str, n_positional: int = 0) -> list[str]:
        """Keyword arguments the constructor of ``name`` accepts once ``n_positional`` leading
        arguments are given positionally (e.g. the view size, the backbone)."""
        return constructor_keys(self.get(name), n_positional)

    def defaults(self, name: str, n_positional: int = 0) -> dict[str, Any]:
        """Keyword arguments of ``name`` that have defaults, with those defaults."""
        return constructor_defaults(self.get(name), n_positional)

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build ``name`` with ``kwargs``; unknown keys raise ``ValueError`` listing the valid ones."""
        fn = self.get(name)
        valid = self.valid_keys(name, len(args))
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))} for {self.kind} {name!r}; "
                f"valid keys: {', '.join(valid) or '(none)'}"
            )
        return fn(*args, **kwargs)
