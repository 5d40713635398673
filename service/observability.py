"""Request ids, one JSON log line per request, and Prometheus metrics.

Metrics live in a registry of their own per app (not the process-global one), so several apps
in one process (tests) never collide.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

import anyio
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import internal_error
from service.memory import TRIM_AFTER_BYTES, release_free_memory

log = logging.getLogger("service.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every Prometheus series the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's resident memory, CPU seconds, open files (process_*), and Python's
        # garbage collector and version: what an operator watches for growth under load.
        ProcessCollector(registry=r)
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR):
            r.register(collector)
        self.requests = Counter(
            "machado_requests_total",
            "HTTP requests answered",
            ["route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "machado_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "machado_in_flight_requests", "inference requests running", registry=r
        )
        self.queued = Gauge(
            "machado_queued_requests", "inference requests waiting for a slot", registry=r
        )
        self.queue_wait = Histogram(
            "machado_queue_wait_seconds",
            "time an inference request waited for a slot (0 when one was free)",
            buckets=(0, *LATENCY_BUCKETS),
            registry=r,
        )
        self.rejected = Counter(
            "machado_rejected_requests_total",
            "requests turned away before inference",
            ["reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            "machado_connections_closed_total",
            "connections the server closed on its own: no request head in time (head_timeout), "
            "an answer its client stopped reading (slow_reader), a request head it could not "
            "read (bad_request) or over the size limit (head_too_large)",
            ["reason"],
            registry=r,
        )
        self.tokens = Counter(
            "machado_generated_tokens_total", "tokens generated", ["model"], registry=r
        )
        self.token_time = Histogram(
            "machado_seconds_per_token",
            "generation time per token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.models = Gauge(
            "machado_model_loaded",
            "1 for a loaded model, 0 for a failed one",
            ["model", "provider", "precision"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "machado_batch_rows",
            "sequences per batched graph call: next-token windows and cached generation steps "
            "(MACHADO_MAX_BATCH_ROWS)",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.draft_tokens = Counter(
            "machado_draft_tokens_total",
            "tokens guessed ahead of lone greedy generations (MACHADO_DRAFT_TOKENS), by whether "
            "the model's own choice kept them",
            ["model", "outcome"],
            registry=r,
        )
        self.ab_requests = Counter(
            "machado_ab_requests_total", "A/B requests by arm", ["arm", "outcome"], registry=r
        )
        self.ab_latency = Histogram(
            "machado_ab_request_seconds",
            "A/B latency by arm",
            ["arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ab_tokens = Counter(
            "machado_ab_generated_tokens_total", "A/B tokens by arm", ["arm"], registry=r
        )
        self.ab_bpc = Histogram(
            "machado_ab_bits_per_character",
            "BPC of texts scored, by arm",
            ["arm"],
            buckets=(0.5, 1, 1.5, 2, 2.5, 3, 4, 6, 8),
            registry=r,
        )

    def drafts(self, model: str):
        """What an engine tells of each checked draft (Engine's ``on_draft``), counted."""
        accepted = self.draft_tokens.labels(model, "accepted")
        rejected = self.draft_tokens.labels(model, "rejected")

        def count(drafted: int, kept: int) -> None:
            accepted.inc(kept)
            rejected.inc(drafted - kept)

        return count


class RequestContext:
    """Pure ASGI middleware: X-Request-Id on every response, a log line and metrics per request.

    Routes add what they know (model, prompt) to ``scope["state"]``; the log line reads it back.
    An unexpected failure beneath it is logged with the request's id and answered here (500,
    with the id, and the model in X-Model): Starlette's own last resort, outside every
    middleware, would answer without either and log without the id.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, log_prompts: bool) -> None:
        self.app, self.metrics, self.log_prompts = app, metrics, log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status, answering, error, read, sent = 500, False, None, False, 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, answering, error, read, sent
            sent += len(message.get("body", b""))
            if message["type"] == "http.response.start":
                status, answering = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif status >= 400 and not read:  # what went wrong, for the log line
                error, read = _error_of(message.get("body", b"")), True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as failure:  # not `error`: that name is the log line's, read below
            body = internal_error(request_id, f"{scope['method']} {_path(scope)}", failure)
            if answering:  # too late for a 500: the server cuts the answer short
                raise
            model = state.get("model")
            await JSONResponse(body, 500, {"X-Model": model} if model else None)(
                scope, receive, send_with_id
            )
        finally:
            seconds = time.perf_counter() - started
            path = _path(scope)
            model = state.get("model", "")
            self.metrics.requests.labels(path, model, str(status)).inc()
            self.metrics.latency.labels(path).observe(seconds)
            extra = {
                "request_id": request_id,
                "method": scope["method"],
                "route": path,
                "model": model or None,
                "status": status,
                "ms": round(seconds * 1000, 2),
            }
            if error:
                extra["error"] = error
            if self.log_prompts and "prompt" in state:
                extra["prompt"] = state["prompt"]
            log.info(f"{scope['method']} {path} {status}", extra=extra)
            if sent > TRIM_AFTER_BYTES:
                await anyio.to_thread.run_sync(release_free_memory)


def _path(scope: Scope) -> str:
    """The route's template (/v1/models/{model}), or the path a guard rejected, for logs and
    metrics: a bounded set of labels, whatever paths clients send."""
    route = scope.get("route")
    return getattr(route, "path", None) or scope["state"].get("path") or "unmatched"


def _error_of(body: bytes) -> dict | None:
    """The type and field of an error answer (the one error shape), without its message, which
    may quote a prompt."""
    try:
        error = json.loads(body)["error"]
        return {"type": error["type"], "field": error.get("field")}
    except (ValueError, KeyError, TypeError):
        return None
