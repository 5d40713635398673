"""When a request's work must stop: at its time limit, or as soon as its client hangs up.

The model work runs in worker threads that cannot be cancelled from outside; they call
``Deadline.check`` between graph calls (each generation step, each batch of scoring windows), so
a request whose client is gone, or whose time is up, gives its threads and its place in a batch
back within one call instead of computing an answer nobody will read.
"""

from __future__ import annotations

import threading
import time

from service.errors import APIError

# nginx's status for a request its client closed before the answer: no client ever reads it, but
# the access log and the request metrics count these apart from the errors of the service.
CLIENT_CLOSED = 499


def timed_out(seconds: float) -> APIError:
    """The 504 of a request that ran past its time limit of ``seconds``."""
    return APIError(504, "timeout", f"the request ran past its time limit of {seconds:g} s")


class Deadline:
    """A request's time limit and its hang-up flag (set by service.app.BodyGuard)."""

    def __init__(self, seconds: float, hung_up: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.hung_up = hung_up or threading.Event()

    def check(self) -> None:
        """Raises APIError 499 once the client has hung up, 504 once the time limit is past."""
        if self.hung_up.is_set():
            raise APIError(
                CLIENT_CLOSED,
                "client_closed_request",
                "the client closed the connection before the answer; its work was stopped",
            )
        if time.monotonic() > self.at:
            raise timed_out(self.seconds)
