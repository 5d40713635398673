"""HTTP connections: uvicorn's HTTP/1.1 protocol with a deadline for each request's head.

uvicorn waits for a request's line and headers as long as its client takes: its keep-alive
timeout starts only once a first answer is sent, and restarts with every byte that arrives. So a
client that opens a connection and sends nothing, or trickles its headers a byte at a time, holds
that connection (a socket, a file descriptor, a place in uvicorn's connection set) for ever, and
enough of them deny the service to everyone (slowloris). No ASGI middleware can see this: the
application is called once the head has arrived. The body is BodyGuard's (service.app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("service.connections")


class HeadDeadlineProtocol(H11Protocol):
    """From the moment a connection opens, and again from the end of each answer, its client has
    ``head_timeout`` seconds to send a whole request head; past that the connection is closed.
    The clock stops once a head has arrived, so a long answer (a stream) is never cut."""

    def __init__(self, *args, head_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's head arrived: its answer has no deadline here
            self._stop_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already received
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_clock()
        self.head_deadline = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _stop_clock(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_overdue(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing() or (self.cycle and not self.cycle.response_complete):
            return
        log.info(
            f"connection from {self.client[0] if self.client else 'unknown'} closed: no whole "
            f"request head within {self.head_timeout:g} s"
        )
        with contextlib.suppress(h11.LocalProtocolError):  # as uvicorn's keep-alive timeout does
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()
