"""SIGINT / SIGTERM for a training loop that stops at a step boundary, with a checkpoint."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that runs end KILLED and trials FAIL cleanly."""


class GracefulStop:
    """SIGINT / SIGTERM handling for a training loop that can stop at a step boundary.

    Within :meth:`installed`, the first signal only sets :attr:`requested` inside a
    :meth:`deferred` block (the trainer defers during ``fit``, checks it between steps and stops
    there, with a checkpoint); outside it, or on a second signal, it raises ``KeyboardInterrupt``
    (SIGINT) or :class:`RunInterrupted` (SIGTERM) at once. Main thread only; elsewhere it does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None  # "SIGINT" or "SIGTERM"
        self.reason: str | None = None  # a stop requested by :meth:`request`: why
        self._deferring = False

    def _raise(self, name: str):
        if name == "SIGTERM":
            raise RunInterrupted(self.reason or "terminated (SIGTERM)")
        raise KeyboardInterrupt("interrupted (SIGINT)")

    def request(self, reason: str) -> None:
        """Stop as on SIGTERM (at the next step boundary, with a checkpoint), for ``reason``: a fault
        that another thread saw (the study storage lost for good)."""
        if not self.requested:
            self.reason, self.requested = reason, "SIGTERM"

    def check(self) -> None:
        """Raise the requested interrupt, if any (called by the trainer at a step boundary)."""
        if self.requested:
            self._raise(self.requested)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a first signal only sets :attr:`requested` (blocks do not nest)."""
        if self._deferring:
            raise RuntimeError("GracefulStop.deferred() is already active")
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @contextlib.contextmanager
    def installed(self) -> Iterator["GracefulStop"]:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        main_pid = os.getpid()

        def handler(signum, frame):
            if os.getpid() != main_pid:  # a forked DataLoader worker (the terminal signals them all)
                return  # the main process stops them
            name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
            if self._deferring and not self.requested:
                self.requested = name
                print(f"\n{name}: stopping at the end of this training step, with a checkpoint "
                      f"({'send it again' if name == 'SIGTERM' else 'Ctrl-C again'} to stop now)",
                      file=sys.stderr, flush=True)
                return
            self.requested = self.requested or name
            self._raise(name)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
