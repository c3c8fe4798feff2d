"""Graceful stops: SIGTERM or SIGINT becomes a stop request the pipeline polls, with a deadline it must meet.

The runner is often PID 1 in a container, where the kernel gives a signal without a handler no default action: a
process that installs none ignores `docker stop`'s SIGTERM and is SIGKILLed at the end of the grace period, losing
the run's status. So `run()` installs its own handlers. The worker runs in a session of its own (so a terminal's
Ctrl-C does not reach it half-way through a step); `execute` stops it through `execute.stop` when asked to here.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What stopping takes after the last case is given up: execute.stop's SIGTERM grace for the worker, then
# recording the run as interrupted. The current case may use the rest of the grace period to finish.
STOP_RESERVE = 8.0


class Stopped(Exception):
    """Raised where the pipeline notices a stop request; `run()` catches it and marks the run interrupted."""


class Stop:
    """A stop request: set by a signal handler, polled by the pipeline, bounded by a grace period."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.event = threading.Event()
        self.signum: int | None = None
        self.requested_at: float | None = None
        self.requested_wall = 0.0  # time.time() of the request, to compare with the worker's timestamps

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def request(self, signum: int) -> None:
        """Ask for a stop; a second signal leaves no time for the current case."""
        now = time.monotonic()
        if self.event.is_set():
            self.grace = min(self.grace, now - (self.requested_at or now) + STOP_RESERVE)
            return
        self.signum, self.requested_at, self.requested_wall = signum, now, time.time()
        self.event.set()

    def check(self) -> None:
        """Raise `Stopped` if a stop was asked for: called between environments and between cases."""
        if self.event.is_set():
            raise Stopped(self.name)

    def case_deadline(self) -> float:
        """Monotonic time until which the current case may still finish before its worker is stopped."""
        assert self.requested_at is not None
        return self.requested_at + max(0.0, self.grace - STOP_RESERVE)

    def deadline(self) -> float:
        assert self.requested_at is not None
        return self.requested_at + self.grace

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it."""
        return 128 + (self.signum or signal.SIGTERM)


@contextmanager
def handling_signals(stop: Stop, on_deadline: Callable[[], None]) -> Iterator[Stop]:
    """Install SIGTERM and SIGINT handlers for the duration of a run, and a watchdog that ends the process at the
    deadline if the pipeline has not returned by then (e.g. stuck in a uv install): `on_deadline` records what it
    can first. Outside the main thread (a test calling run() from a thread) signals cannot be handled: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    done = threading.Event()

    def watchdog() -> None:
        # Polled rather than slept: a second signal brings the deadline forward.
        while time.monotonic() < stop.deadline():
            if done.wait(0.1):
                return
        log.warning("grace period of %g s over: exiting now", stop.grace)
        try:
            on_deadline()
        finally:
            os._exit(stop.exit_code)  # the worker goes with us: it dies with its parent (PR_SET_PDEATHSIG)

    def handler(signum: int, _frame: FrameType | None) -> None:
        first = not stop.requested
        stop.request(signum)
        if first:
            log.warning("%s: finishing the current case, then stopping (grace %g s)", stop.name, stop.grace)
            threading.Thread(target=watchdog, name="stop-watchdog", daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield stop
    finally:
        done.set()
        for sig, old in previous.items():
            signal.signal(sig, old)
