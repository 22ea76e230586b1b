"""Ctrl-C that stops a job between two steps, never inside one.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside a pointer's
finalizer or between taking a command off the session's queue and publishing it:
the delete of an object is then lost and the object outlives the job on a shared
fleet. Inside :func:`stop_between_steps`, the first Ctrl-C only records the request
(and says so); the job calls :meth:`StopRequest.check` at its safe points (after each
batch is queued, after each round), which raises KeyboardInterrupt there. The
job's clean-up then runs with every command intact. A second Ctrl-C interrupts at
once, for a job stuck waiting on a worker.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


class StopRequest:
    """Whether Ctrl-C was pressed; :meth:`check` turns it into KeyboardInterrupt."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self.requested = False
        self._announce = announce

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was requested: call this at a safe point."""
        if self.requested:
            raise KeyboardInterrupt

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.requested = True
        self._announce(
            "stopping after the current step, then deleting this run's objects "
            "(Ctrl-C again to stop at once)"
        )


@contextlib.contextmanager
def stop_between_steps(announce: Callable[[str], None]) -> Iterator[StopRequest]:
    """Defer Ctrl-C to :meth:`StopRequest.check` calls while inside (main thread only).

    Elsewhere (a thread cannot set signal handlers) Ctrl-C keeps its default effect.
    """
    request = StopRequest(announce)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGINT, request._on_sigint)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
