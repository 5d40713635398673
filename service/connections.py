"""HTTP connections: uvicorn's HTTP/1.1 protocol with deadlines on both directions of a
connection and the service's JSON error shape for requests that never reach the application.

uvicorn waits for a request's line and headers as long as its client takes: its keep-alive
timeout starts only once a first answer is sent, and restarts with every byte that arrives. So a
client that opens a connection and sends nothing, or trickles its headers a byte at a time, holds
that connection (a socket, a file descriptor, a place in uvicorn's connection set) for ever, and
enough of them deny the service to everyone (slowloris).

The other direction is the same: once the socket's buffers are full, uvicorn's ``send`` waits
until the client reads, with no limit. A client that asks for a long stream and never reads
holds its inference slot (the stream's generator waits on that send) and the answer's bytes for
as long as it keeps the socket open. The transport tells the protocol when its buffer is over
the high-water mark (``pause_writing``) and when it drained (``resume_writing``); a connection
that stays paused for ``send_timeout`` seconds is aborted, which frees everything its answer
held (the stream sees the hang-up at its next step).

No ASGI middleware can see any of this: the application is called once a head has arrived, and
its ``send`` hides the transport. The body is BodyGuard's (service.app).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Callable
from http import HTTPStatus

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body

log = logging.getLogger("service.connections")

# Reasons a connection is closed here, the label values of machado_connections_closed_total.
CLOSE_REASONS = ("head_timeout", "slow_reader", "bad_request", "head_too_large")
# How long a refused request's connection stays open, reading and dropping what its client still
# sends, so that the client reads the refusal instead of a reset.
LINGER_S = 1.0


class GuardedProtocol(H11Protocol):
    """uvicorn's H11Protocol with three guards:

    - from the moment a connection opens, and again from the end of each answer, its client has
      ``head_timeout`` seconds to send a whole request head (the clock stops once a head has
      arrived, so a long answer is never cut by it);
    - while an answer is being written, the client must keep reading: a connection whose
      output stays over the transport's high-water mark for ``send_timeout`` seconds is aborted;
    - a request head that h11 refuses (malformed, or larger than the configured limit, which
      h11 enforces as ``h11_max_incomplete_event_size``) is answered in the service's JSON
      error shape (400, or 431 for a head too large) instead of uvicorn's plain text.

    ``on_close(reason)`` counts each connection closed by a guard (for /metrics).
    """

    def __init__(
        self,
        *args,
        head_timeout: float,
        send_timeout: float,
        on_close: Callable[[str], None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout, self.send_timeout = head_timeout, send_timeout
        self.on_close = on_close or (lambda reason: None)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None
        self.refusal: h11.RemoteProtocolError | None = None
        self.refused = False
        parse = self.conn.next_event

        def next_event():  # uvicorn drops h11's error (and its status hint): keep it
            try:
                return parse()
            except h11.RemoteProtocolError as error:
                self.refusal = error
                raise

        self.conn.next_event = next_event

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self.refused:  # the rest of a refused request: dropped until the connection closes
            return
        cycle = self.cycle
        try:
            super().data_received(data)
        except Exception as error:  # a head h11 accepts but uvicorn cannot read (non-ASCII)
            log.info(f"request from {self._peer()} refused: {type(error).__name__}: {error}")
            self._refuse(400, "bad_request", "the request line or a header could not be read")
            return
        if self.cycle is not cycle:  # a request's head arrived: its answer has no deadline here
            self._stop_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already received
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self._stop_send_clock()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_deadline is None:
            self.send_deadline = self.loop.call_later(self.send_timeout, self._reader_stalled)

    def resume_writing(self) -> None:
        self._stop_send_clock()
        super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        hint = getattr(self.refusal, "error_status_hint", 400)
        if hint == 431:
            limit = self.conn._max_incomplete_event_size
            self._refuse(
                431,
                "request_head_too_large",
                f"the request line and headers are over the limit of {limit} bytes "
                "(MACHADO_MAX_HEAD_BYTES)",
            )
        else:
            self._refuse(400, "bad_request", f"the request is not valid HTTP/1.1: {self.refusal}")

    def _refuse(self, status: int, type_: str, message: str) -> None:
        """The error in the service's shape, then the connection closed: what follows a head
        that could not be read cannot be read either."""
        reason = "head_too_large" if status == 431 else "bad_request"
        self.on_close(reason)
        log.info(f"request from {self._peer()} refused with {status}: {message}")
        body = json.dumps(error_body(type_, message), separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "x-content-type-options: nosniff\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self._stop_clock()
        # A client may still be sending (a head of a megabyte): closing now would reset the
        # connection and lose the answer. Stop writing, read and drop what still comes for a
        # moment, then close.
        self.refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _peer(self) -> str:
        return self.client[0] if self.client else "unknown"

    def _await_head(self) -> None:
        self._stop_clock()
        self.head_deadline = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _stop_clock(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _stop_send_clock(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def _head_overdue(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing() or (self.cycle and not self.cycle.response_complete):
            return
        log.info(
            f"connection from {self._peer()} closed: no whole request head within "
            f"{self.head_timeout:g} s"
        )
        self.on_close("head_timeout")
        with contextlib.suppress(h11.LocalProtocolError):  # as uvicorn's keep-alive timeout does
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _reader_stalled(self) -> None:
        """The client read nothing for ``send_timeout`` seconds while an answer waited: abort
        (a plain close would wait for the buffered bytes to be read, for ever)."""
        self.send_deadline = None
        if self.transport.is_closing() and not self.flow.write_paused:
            return
        buffered = self.transport.get_write_buffer_size()
        path = self.scope["path"] if self.scope else "?"
        log.warning(
            f"connection from {self._peer()} cut: its client read none of the answer to "
            f"{path} for {self.send_timeout:g} s ({buffered:,} bytes waiting); its request is "
            "stopped and its slot freed",
        )
        self.on_close("slow_reader")
        # A reset, not a close: closed with unsent bytes, the socket would linger in the kernel
        # (FIN-WAIT-1), holding its megabytes of buffer while the kernel retries.
        connection = self.transport.get_extra_info("socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also tells the application (``on_signal``) the moment a signal
    starts its shutdown: uvicorn then stops accepting connections and waits for the requests
    under way, which need to know how long they have left (runtime.deadline.Drain)."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame) -> None:
        self.on_signal()
        super().handle_exit(sig, frame)
