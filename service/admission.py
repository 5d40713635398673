"""Admission of inference requests: at most ``slots`` run at once; up to ``queue`` more wait in
line for a slot, first come first served, each for at most ``timeout`` seconds; beyond that a
request is turned away at once (429), so that a client learns of an overloaded server before it
waits, and the work that a server cannot finish in time never starts.

A waiting request costs no thread and no model work: only a place in line on the event loop. A
request whose client hangs up while it waits leaves the line (499) and never takes a slot.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from runtime.deadline import Drain
from runtime.errors import Cancelled
from service.errors import APIError

# How often a request waiting in line looks whether its client has hung up.
HANG_UP_POLL_S = 0.05


class Overloaded(APIError):
    """A 429: every slot taken and the line full, or a wait that reached its limit; ``reason``
    (queue_full, queue_timeout) labels it in /metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(429, "overloaded", message, None, {"Retry-After": "1"})
        self.reason = reason


class Admission:
    """The slots and the line of one service (one event loop)."""

    def __init__(self, slots: int, queue: int, timeout: float, drain: Drain | None = None) -> None:
        self.slots, self.queue, self.timeout = slots, queue, timeout
        self.drain = drain or Drain()
        self.running = 0
        self.line: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self.line)

    async def enter(self, hung_up: threading.Event | None = None) -> float:
        """Takes a slot, waiting in line for one if every slot is taken; returns the seconds
        waited. 429 when the line is full or the wait reaches ``timeout``; 499 when the client
        hangs up while waiting; 503 when the server's drain time ends while it waits."""
        if self.running < self.slots and not self.line:
            self.running += 1
            return 0.0
        if len(self.line) >= self.queue:
            waiting = (
                f", and {len(self.line)} are waiting for a slot, the most that may wait"
                if self.queue
                else ""
            )
            raise Overloaded(
                "queue_full",
                f"{self.running} requests are in flight, the limit is {self.slots}{waiting}; "
                "retry shortly",
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.line.append(turn)
        started = time.monotonic()
        try:
            while not turn.done():
                left = self.timeout - (time.monotonic() - started)
                if left <= 0:
                    raise Overloaded(
                        "queue_timeout",
                        f"no slot came free in {self.timeout:g} s of waiting ({self.running} "
                        f"requests running, the limit is {self.slots}); retry shortly",
                    )
                self.drain.check()  # shutting down, and no slot came free in time
                if hung_up is not None and hung_up.is_set():
                    raise Cancelled(
                        "the client closed the connection while the request waited for a slot"
                    )
                await asyncio.wait({turn}, timeout=min(left, HANG_UP_POLL_S))
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed a slot while leaving: the next in line gets it
            else:
                turn.cancel()
                self.line.remove(turn)
            raise
        return time.monotonic() - started

    def leave(self) -> None:
        """Gives a slot back: straight to the first request in line, if one waits."""
        while self.line:
            turn = self.line.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on: as many running as before
                return
        self.running -= 1
