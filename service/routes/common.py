"""What every inference route shares, as one typed dependency (``Serving``): the model (or A/B
arm), the API key, the concurrency slot, the time limit, the answer's size, the metrics and the
A/B figures. Handlers take it as a parameter and never reach into ``request.app.state``."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from runtime.deadline import Deadline
from runtime.engine import Engine
from runtime.errors import TimedOut
from service.ab import AB_MODEL, client_hash, pick_arm
from service.ab_store import Assignment
from service.admission import Overloaded
from service.errors import APIError, internal_error
from service.settings import Settings

T = TypeVar("T")


async def require_api_key(request: Request) -> None:
    """With MACHADO_API_KEY set, the model endpoints want 'Authorization: Bearer <key>'."""
    key = request.app.state.settings.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # As bytes: compare_digest refuses str outside ASCII, and a header may carry any byte
    # (decoded as latin-1, one character per byte); the key is ASCII (Settings).
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("latin-1"), key.encode("ascii")
    ):
        raise APIError(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <key>' with the server's API key",
            None,
            {"WWW-Authenticate": "Bearer"},
        )


@dataclass
class StreamTally:
    """What a stream has sent: tokens, whether it sent its last event (done or error: a stream
    that did not was left by its client), and whether that was not an error."""

    tokens: int = 0
    ok: bool = True
    ended: bool = False


class Serving:
    """The service as one request sees it: its settings, engines, admission, metrics and A/B
    experiment (set up in service.app's lifespan), and the request itself."""

    def __init__(self, request: Request) -> None:
        state = request.app.state
        self.request = request
        self.settings: Settings = state.settings
        self.engines: dict[str, Engine] = state.engines
        self.models: dict[str, Any] = state.models
        self.admission = state.admission
        self.metrics = state.metrics
        self.drain = state.drain
        self.ab_weights: dict[str, float] = state.ab_weights
        self.ab_error: str | None = state.ab_error
        self.ab_store = state.ab_store
        self.ab_store_error: str | None = state.ab_store_error
        self.client_id: str | None = None  # of the A/B request: what keeps it on its arm
        self.started: float = state.started

    def note(self, model: str | None = None, prompt: str | list | None = None) -> None:
        """What the access log and the error handler name: the model reached, the prompt."""
        if model is not None:
            self.request.state.model = model
        if prompt is not None:
            self.request.state.prompt = prompt

    def engine_for(self, name: str) -> Engine:
        """The engine serving ``name``: 404 if no such model, 503 if it failed to load."""
        if name in self.engines:
            self.note(model=name)
            return self.engines[name]
        if name in self.models:
            raise APIError(
                503,
                "not_ready",
                f"model {name!r} failed to load: {self.models[name].error}",
                "model",
            )
        known = ", ".join(sorted(self.engines)) or "none"
        # A path segment has no length limit of its own: an error quotes at most its start.
        shown = repr(name) if len(name) <= 64 else f"{name[:64]!r}… ({len(name)} characters)"
        raise APIError(
            404,
            "model_not_found",
            f"no model named {shown}; served models: {known} (or 'ab' for the A/B "
            "experiment where the endpoint offers it)",
            "model",
        )

    def resolve(self, name: str, client_id: str | None = None) -> tuple[Engine, str | None]:
        """The engine for ``name``, or for the client's A/B arm when ``name`` is 'ab' (the
        client is ``client_id``, else the X-Client-Id header, else anonymous and random)."""
        if name != AB_MODEL:
            return self.engine_for(name), None
        if not self.ab_weights:
            raise APIError(
                503,
                "not_ready",
                f"the A/B experiment has no arm: {self.ab_error or 'no model loaded'}",
                "model",
            )
        self.client_id = client_id or self.request.headers.get("x-client-id")
        arm = pick_arm(self.ab_weights, self.client_id)
        return self.engine_for(arm), arm

    def check_answer_size(self, items: int, what: str, field: str | None) -> None:
        """422 before any work for a request whose answer would hold more than
        max_answer_items token entries (``what`` says how they add up): the answer's size, and
        the memory it takes to build, stay bounded whatever the request combines."""
        limit = self.settings.max_answer_items
        if items > limit:
            raise APIError(
                422,
                "answer_too_large",
                f"the answer would hold {items:,} token entries ({what}); one answer may hold "
                f"at most {limit:,} (MACHADO_MAX_ANSWER_ITEMS): ask for fewer tokens, choices, "
                "alternatives or prompts",
                field,
            )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Deadline]:
        """Holds one of the max_concurrency slots, waiting in line for one if every slot is
        taken (429 when the line is full or the wait too long: service.admission); yields the
        request's Deadline: its time limit, from now, and whether its client has hung up."""
        hung_up = getattr(self.request.state, "hung_up", None)
        try:
            waited = await self.admission.enter(hung_up)
        except Overloaded as error:
            self.metrics.rejected.labels(error.reason).inc()
            raise
        self.metrics.queue_wait.observe(waited)
        try:
            yield Deadline(self.settings.request_timeout_s, hung_up, self.drain)
        finally:
            self.admission.leave()

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn`` in a worker thread, off the event loop, under the request time limit."""
        timeout = self.settings.request_timeout_s
        with anyio.move_on_after(timeout) as scope:
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
        if scope.cancelled_caught:
            raise TimedOut(timeout)
        raise AssertionError("unreachable")

    def count_tokens(self, engine: Engine, tokens: int, seconds: float) -> None:
        """Tokens generated, and the time per token, for /metrics."""
        if tokens:
            self.metrics.tokens.labels(engine.name).inc(tokens)
            self.metrics.token_time.labels(engine.name).observe(seconds / tokens)

    def record_ab(
        self,
        arm: str | None,
        started: float,
        ok: bool,
        tokens: int = 0,
        bpc: float | None = None,
        abandoned: bool | None = None,
    ) -> None:
        """The request in the experiment's record (GET /ab) and in Prometheus, when it went
        through an arm. A request whose client hung up before its answer is abandoned (default:
        a failure after the hang-up), not an error of the arm; its time stays out of the
        latencies."""
        if arm is None:
            return
        if abandoned is None:
            hung_up = getattr(self.request.state, "hung_up", None)
            abandoned = not ok and hung_up is not None and hung_up.is_set()
        seconds = time.perf_counter() - started
        outcome = "abandoned" if abandoned else "ok" if ok else "error"
        if self.ab_store is not None:
            prompt = getattr(self.request.state, "prompt", None)
            self.ab_store.record(
                Assignment(
                    request_id=self.request.state.request_id,
                    arm=arm,
                    client=client_hash(self.client_id),
                    at=time.time(),
                    endpoint=self.request.url.path,
                    outcome=outcome,
                    tokens=tokens,
                    latency_ms=None if abandoned else seconds * 1000,
                    bpc=bpc,
                    prompt=str(prompt)
                    if prompt is not None and self.settings.ab_store_prompts
                    else None,
                )
            )
        self.metrics.ab_requests.labels(arm, outcome).inc()
        if tokens:
            self.metrics.ab_tokens.labels(arm).inc(tokens)
        if abandoned:
            return
        self.metrics.ab_latency.labels(arm).observe(seconds)
        if bpc is not None:
            self.metrics.ab_bpc.labels(arm).observe(bpc)

    def failure(self, error: Exception) -> dict:
        """The error body of an unexpected failure once a stream has started, logged as
        RequestContext logs one before the answer starts."""
        request = self.request
        where = f"{request.method} {request.url.path}"
        return internal_error(request.state.request_id, where, error)

    def event_stream(
        self,
        engine: Engine,
        arm: str | None,
        started: float,
        slot: AsyncExitStack,
        tally: StreamTally,
        events: Callable[[Callable[[], Awaitable[None]]], AsyncIterator[dict]],
    ) -> EventSourceResponse:
        """Server-sent ``events(release)``, holding the inference slot (``slot``: the exit
        stack that the caller's ``async with`` handed over with ``pop_all``) until the stream
        ends, or never starts; then the tokens in ``tally`` go to /metrics and the A/B
        figures."""

        @once
        async def release() -> None:
            self.count_tokens(engine, tally.tokens, time.perf_counter() - started)
            self.record_ab(arm, started, tally.ok, tally.tokens, abandoned=not tally.ended)
            await slot.aclose()

        return EventSourceResponse(
            events(release),
            headers={"X-Model": engine.name},
            ping=15,
            # sse-starlette would end every stream the moment the server is signalled to stop:
            # a stream goes on through the drain instead, and ends on its own (Drain).
            shutdown_grace_period=self.settings.drain_timeout_s,
            background=BackgroundTask(release),
        )


# The dependency every handler that serves a model takes.
ServingDep = Annotated[Serving, Depends(Serving)]


def once(release: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``release`` made safe to call twice: a stream's own ``finally`` and the response's
    background task both call it, so the slot comes back even if the stream never started."""
    done = False

    async def run() -> None:
        nonlocal done
        if not done:
            done = True
            await release()

    return run
