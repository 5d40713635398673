"""When a request's work must stop: at its time limit, or as soon as its client hangs up.

The model work runs in worker threads that cannot be cancelled from outside; they call
``Deadline.check`` between graph calls (each generation step, each batch of scoring windows), so
a request whose client is gone, or whose time is up, gives its threads and its place in a batch
back within one call instead of computing an answer nobody will read.
"""

from __future__ import annotations

import threading
import time

from runtime.errors import Cancelled, ShuttingDown, TimedOut


class Drain:
    """The server's shutdown, as requests see it: once ``begin`` is called (on SIGTERM) the
    requests under way have until ``stop_at`` to finish; past it each one stops at its next
    check (ShuttingDown), so that it still gets a proper ending (an answer, or a stream's error
    event) before the server cancels what is left at the end of its drain time."""

    # Part of the drain time kept for the requests stopped at ``stop_at`` to send their ending.
    MARGIN_S = 1.0

    def __init__(self) -> None:
        self.stop_at: float | None = None
        self.seconds = 0.0

    @property
    def draining(self) -> bool:
        return self.stop_at is not None

    def begin(self, seconds: float) -> None:
        if self.stop_at is None:
            self.seconds = seconds
            self.stop_at = time.monotonic() + max(0.0, seconds - min(self.MARGIN_S, seconds / 4))

    def check(self) -> None:
        """Raises ShuttingDown for work that could not finish within the drain time."""
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            raise ShuttingDown(
                f"the server is shutting down and this request could not finish within its "
                f"drain time of {self.seconds:g} s; retry (another replica, or this one once "
                "it is back)"
            )


class Deadline:
    """A request's time limit, its hang-up flag (set by whoever watches the caller: the
    service's BodyGuard) and the server's drain."""

    def __init__(
        self, seconds: float, hung_up: threading.Event | None = None, drain: Drain | None = None
    ) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.hung_up = hung_up or threading.Event()
        self.drain = drain or Drain()

    def check(self) -> None:
        """Raises Cancelled once the caller has hung up, TimedOut once the time limit is past,
        ShuttingDown once the server's drain time is nearly over."""
        if self.hung_up.is_set():
            raise Cancelled(
                "the client closed the connection before the answer; its work was stopped"
            )
        if time.monotonic() > self.at:
            raise TimedOut(self.seconds)
        self.drain.check()
