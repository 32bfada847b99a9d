"""Retrying calls to a store that may go away for a while (the MLflow tracking store, the study storage).

:class:`Outage` is one store's reachability: :meth:`Outage.call` retries a call with exponential
backoff (0.5 s doubling to 15 s) while the store's errors are transient, says once when the store
stops answering and once when it answers again, and raises the store's own "unavailable" error
after the window. Errors that a retry cannot fix propagate at once.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

from paramcrop.sinks import redact_url as redact


def window_from_env(env: str, default: float) -> float:
    """Seconds from ``$env`` (default ``default``; a bad value counts as the default)."""
    try:
        return max(0.0, float(os.environ.get(env, default)))
    except ValueError:
        return default


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type when it has none), redacted."""
    return redact((str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:limit])


class Outage:
    """Retries calls to one store named ``name`` (e.g. ``the MLflow tracking store http://...``);
    ``transient(exc)`` says whether a retry may help, ``unavailable(message)`` is the error raised
    after the window, ``cause(exc)`` the error its messages quote (the driver's, under a wrapper). Thread-safe: a store's calls may come from several threads."""

    def __init__(self, name: str, transient: Callable[[BaseException], bool],
                 unavailable: Callable[[str], Exception],
                 cause: Callable[[BaseException], BaseException] = lambda exc: exc) -> None:
        self.name, self.transient, self.unavailable, self.cause = name, transient, unavailable, cause
        self.down_since: float | None = None  # monotonic time of the first failure of this outage
        self.back_at: float | None = None  # monotonic time the store answered again after the last one
        self._warned = False
        self._lock = threading.Lock()

    def call(self, fn, *args, window: float, quiet: bool = False, **kwargs):
        """``fn(*args, **kwargs)``, retried on transient errors for up to ``window`` seconds (0: one
        attempt); ``quiet``: no line about the outage (a probe)."""
        start, delay, attempt = time.monotonic(), 0.5, 0
        while True:
            attempt += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not self.transient(exc):
                    raise
                elapsed = time.monotonic() - start
                if elapsed + delay > window:
                    raise self.unavailable(
                        f"{self.name} did not answer for {elapsed:.0f} s ({attempt} attempt{'s' if attempt > 1 else ''}; "
                        f"last error: {first_line(self.cause(exc))})") from None
                self.failed(exc, window, quiet)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)
            else:
                self.answered(quiet)
                return result

    def failed(self, exc: BaseException, window: float, quiet: bool = False) -> None:
        """Record a transient failure; the first of an outage says so (unless ``quiet``)."""
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
            if not quiet and not self._warned:
                self._warned = True
                print(f"warning: {self.name} is unreachable ({first_line(self.cause(exc), 160)}); retrying for up to "
                      f"{window:.0f} s", file=sys.stderr, flush=True)

    def answered(self, quiet: bool = False) -> None:
        """Record a successful call; the first after an outage says the store is back."""
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            down_for, self.down_since, self.back_at = time.monotonic() - self.down_since, None, time.monotonic()
            if self._warned and not quiet:
                print(f"{self.name} is back (unreachable for {down_for:.0f} s)", file=sys.stderr, flush=True)
            self._warned = False

    def settled(self, seconds: float) -> bool:
        """Whether the store has answered for the last ``seconds`` (no outage in that time)."""
        return self.down_since is None and (self.back_at is None or time.monotonic() - self.back_at >= seconds)
